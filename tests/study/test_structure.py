"""The shape of ``study/``: imports go one way (no cycle, function-level imports included), the commands are
imported by nothing, and recording results in the driver needs no torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

STUDY = Path(__file__).resolve().parents[2] / "study"
COMMANDS = ("study.tune", "study.report")


def imports() -> dict[str, set[str]]:
    """study module -> the study modules it imports anywhere in its body (functions included)."""
    graph = {}
    for path in STUDY.glob("*.py"):
        module = f"study.{path.stem}" if path.stem != "__init__" else "study"
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("study"):
                found.add(node.module)
                found |= {f"{node.module}.{alias.name}" for alias in node.names}
            elif isinstance(node, ast.Import):
                found |= {alias.name for alias in node.names if alias.name.startswith("study")}
        graph[module] = found
    return {module: {name for name in found if name in graph and name != module} for module, found in graph.items()}


def test_no_import_cycle_in_study() -> None:
    graph = imports()
    state: dict[str, str] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for imported in sorted(graph[module]):
            if state.get(imported) == "open":
                cycle = [*path[path.index(imported) :], imported]
                pytest.fail(f"import cycle: {' -> '.join(cycle)}")
            if imported not in state:
                visit(imported, [*path, imported])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


def test_no_module_imports_a_command() -> None:
    importers = {module: sorted(set(COMMANDS) & found) for module, found in imports().items()}
    assert {module: found for module, found in importers.items() if found} == {}


def fresh(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip().splitlines()[-1]


HEAVY = "sorted(m for m in ('torch', 'torchvision', 'spa.models', 'spa.experiment', 'zennit') if m in sys.modules)"


@pytest.mark.parametrize("module", ["study.tracking", "study.report", "study.tune"])
def test_the_driver_side_imports_no_torch(module: str) -> None:
    assert fresh(f"import sys\nimport {module}\nprint({HEAVY})") == "[]"


RECORD = """
import sys
from pathlib import Path
from study.names import FINAL_STEP, TRIAL_NUMBER
from study.tracking import StudyTracker

class Trial:
    def __init__(self, trial_id, number):
        self.trial_id, self.status, self.last_result = trial_id, "RUNNING", {}
        self.config = {"learner": "splora", "criterion": "lrp", "rank": 4, TRIAL_NUMBER: number}
        self.pickled_error_file = self.error_file = None

root = Path(sys.argv[1])
tracker = StudyTracker(
    tracking_uri=f"sqlite:///{root / 'mlflow.db'}", experiment_name="e", study_name="s", study_id="1",
    study_dir=root / "study", metrics=["val_accuracy", "learned_params"], modes=["max", "min"], scheduler="fifo",
    params={}, tags={}, defaults={"rank": 8, "epochs": 3},
)
trials = [Trial("a", 0), Trial("b", 1)]
tracker.setup(total_num_samples=2)
for accuracy, trial in zip((0.9, 0.8), trials):
    tracker.on_trial_start(0, trials, trial)
    for step in (0, 1):
        result = {"step": step, FINAL_STEP: 1, "val_accuracy": accuracy, "learned_params": 100.0 - step}
        tracker.on_trial_result(0, trials, trial, result)
        trial.last_result = result
    trial.status = "TERMINATED"
    tracker.on_trial_complete(0, trials, trial)
tracker.on_experiment_end(trials)
assert (root / "study" / "pareto_front.png").is_file()
print(HEAVY_EXPRESSION)
"""


def test_recording_a_study_imports_no_torch(tmp_path: Path) -> None:
    code = RECORD.replace("HEAVY_EXPRESSION", HEAVY).replace("sys.argv[1]", repr(str(tmp_path)))
    assert fresh(code) == "[]"
