"""study.spaces: the shipped search spaces load and sample valid experiments; malformed files fail in one line."""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import optuna
import pytest

from spa.config import CRITERIA_NAMES, ExperimentConfig
from spa.schedules import density_schedule
from study import spaces
from study.spaces import (
    DEFAULT_OBJECTIVES,
    SPACES_DIR,
    Objective,
    SearchSpace,
    SpaceError,
    list_spaces,
    load_space,
    optuna_distributions,
    suggest,
)

optuna.logging.set_verbosity(optuna.logging.WARNING)

SHIPPED = [f"{learner}_{criterion}" for learner in ("finetune", "splora") for criterion in CRITERIA_NAMES]
SHIPPED = sorted([*SHIPPED, "splora_any"])  # the embedded digits task's spaces
PAPER_SPACES = ["paper_cifar10_splora_lrp"]
SAMPLES = 20


def test_spaces_dir_is_the_repository_directory() -> None:
    assert SPACES_DIR == Path(__file__).resolve().parents[2] / "search_spaces"
    assert list_spaces() == sorted([*SHIPPED, *PAPER_SPACES])


def test_spaces_dir_falls_back_to_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SPA_SPACES_DIR", str(tmp_path))
    assert spaces._default_spaces_dir() == tmp_path
    monkeypatch.delenv("SPA_SPACES_DIR")
    assert spaces._default_spaces_dir() == SPACES_DIR


def test_paper_space_keeps_the_reference_protocol() -> None:
    space = load_space("paper_cifar10_splora_lrp")
    assert {k: space.fixed[k] for k in ("dataset", "arch", "weights", "lr", "lr_schedule", "epochs")} == {
        "dataset": "cifar10",
        "arch": "resnet50",
        "weights": "imagenet",
        "lr": 0.0025,
        "lr_schedule": "step",
        "epochs": 30,
    }
    assert (space.fixed["recovery_epochs"], space.fixed["batch_size"]) == (20, 64)
    assert space.directions == ["maximize", "minimize"]


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_space_samples_valid_experiments(name: str) -> None:
    space = load_space(name)
    learner, criterion = name.split("_")
    assert space.name == name and space.path == SPACES_DIR / f"{name}.toml" and space.description
    assert space.objectives == DEFAULT_OBJECTIVES
    assert (space.metrics, space.modes, space.directions) == (
        ["val_accuracy", "learned_params"],
        ["max", "min"],
        ["maximize", "minimize"],
    )
    # The CPU budget of a default study on the digits task.
    assert {k: space.fixed[k] for k in ("epochs", "batch_size", "max_score_batches", "threads", "shape")} == {
        "epochs": 6,
        "batch_size": 32,
        "max_score_batches": 4,
        "threads": 1,
        "shape": "geometric",
    }
    assert space.fixed["learner"] == learner
    searched = {param.name for param in space.params}
    schedule = {"lr", "final_density", "steps", "recovery_epochs"}
    if learner == "splora":
        schedule |= {"rank", "init_range"}
    if criterion == "any":
        schedule |= {"criterion"}
        assert "criterion" not in space.fixed
    else:
        assert space.fixed["criterion"] == criterion
    assert searched == schedule

    distributions = optuna_distributions(space)
    study = optuna.create_study(directions=space.directions, sampler=optuna.samplers.RandomSampler(seed=0))
    seen_criteria = set()
    for _ in range(SAMPLES):
        trial = study.ask()
        flat = suggest(space, trial)
        assert trial.distributions == distributions
        assert {k: flat[k] for k in space.fixed} == dict(space.fixed)
        assert {k: flat[k] for k in searched} == trial.params
        config = ExperimentConfig.from_flat(flat)
        prune = config.prune
        assert len(density_schedule(prune.final_density, prune.steps, prune.shape)) == prune.steps
        for param in space.params:
            value = flat[param.name]
            if param.kind == "categorical":
                assert value in param.choices
            else:
                assert param.low <= value <= param.high
                assert isinstance(value, int) == (param.kind == "int")
        seen_criteria.add(config.prune.criterion)
        study.tell(trial, [0.5, 1000.0])
    if criterion == "any":
        assert seen_criteria == set(CRITERIA_NAMES)


def test_optuna_distributions_follow_the_file() -> None:
    distributions = optuna_distributions(load_space("splora_any"))
    assert distributions["rank"] == optuna.distributions.IntDistribution(1, 64, log=True)
    assert distributions["init_range"] == optuna.distributions.FloatDistribution(1e-5, 1e-1, log=True)
    assert distributions["steps"] == optuna.distributions.IntDistribution(3, 4)
    assert distributions["final_density"] == optuna.distributions.FloatDistribution(0.05, 0.6, log=True)
    assert distributions["criterion"] == optuna.distributions.CategoricalDistribution(list(CRITERIA_NAMES))
    finetune = optuna_distributions(load_space("finetune_lrp"))
    assert "rank" not in finetune and "init_range" not in finetune
    # SPLoRA's lr is its head's and BatchNorm's (the adapters learn at 100x): measured to train in this range.
    assert distributions["lr"] == optuna.distributions.FloatDistribution(4e-3, 2e-2, log=True)
    assert finetune["lr"] == optuna.distributions.FloatDistribution(3e-4, 2e-2, log=True)


def test_load_by_path_equals_load_by_name() -> None:
    assert load_space(str(SPACES_DIR / "splora_lrp.toml")) == load_space("splora_lrp")


def test_space_pickles_and_is_read_only() -> None:
    space = load_space("splora_weight")
    assert pickle.loads(pickle.dumps(space)) == space  # Ray pickles what it hands to trials
    with pytest.raises(TypeError):
        space.fixed["epochs"] = 1  # type: ignore[index]


def test_with_overrides_pins_searched_settings() -> None:
    space = load_space("splora_weight")
    pinned = space.with_overrides({"rank": 8, "epochs": 1, "dataset": "digits", "max_score_batches": None})
    assert "rank" not in {param.name for param in pinned.params}
    assert len(pinned.params) == len(space.params) - 1
    assert (pinned.fixed["rank"], pinned.fixed["epochs"], pinned.fixed["max_score_batches"]) == (8, 1, None)
    assert space.fixed["epochs"] == 6 and "rank" in {param.name for param in space.params}  # the original stays
    flat = suggest(pinned, optuna.create_study(directions=pinned.directions).ask())
    assert flat["rank"] == 8 and ExperimentConfig.from_flat(flat).optim.epochs == 1


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"epoch": 1},
            "search_spaces/splora_weight.toml: override epoch is not a setting; allowed: adapter_lr_ratio, arch, "
            "batch_size",
        ),
        (
            {"epochs": -1},
            "search_spaces/splora_weight.toml: override epochs=-1 is not allowed; allowed: an integer >= 0",
        ),
        (
            {"steps": 2, "final_density": 1.0},
            "the fixed settings do not make a valid experiment: final_density=1 with steps=2 prunes nothing",
        ),
    ],
)
def test_with_overrides_validates(overrides: dict, message: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(SPACES_DIR.parent)
    with pytest.raises(SpaceError) as caught:
        load_space("splora_weight").with_overrides(overrides)
    assert message in str(caught.value)


def test_unknown_space_name_lists_the_allowed_ones() -> None:
    with pytest.raises(SpaceError, match=r"^unknown search space 'splora_wieght'; allowed: finetune_grad, "):
        load_space("splora_wieght")
    with pytest.raises(SpaceError, match=r"nope\.toml: no such search-space file"):
        load_space("nope.toml")


def test_objectives_default_when_absent(tmp_path: Path) -> None:
    path = tmp_path / "small.toml"
    path.write_text('[fixed]\nlearner = "finetune"\n[params.lr]\ntype = "float"\nlow = 1e-3\nhigh = 1\nlog = true\n')
    space = load_space(path)
    assert isinstance(space, SearchSpace) and space.objectives == DEFAULT_OBJECTIVES and space.description == ""
    path.write_text('[[objectives]]\nmetric = "test_accuracy"\nmode = "max"\n')
    assert load_space(path).objectives == (Objective("test_accuracy", "max"),)


RANK = '[params.rank]\ntype = "int"\nlow = 2\nhigh = 8\n'
VAL_MAX = '[[objectives]]\nmetric = "val_accuracy"\nmode = "max"\n'
ALL_SETTINGS = ", ".join(sorted(ExperimentConfig.field_names()))

MALFORMED = {
    "malformed TOML": ("[fixed\nepochs = 3\n", "not valid TOML: "),
    "unknown top-level key": (
        'descripton = "x"\n',
        "unknown top-level key 'descripton'; allowed: description, fixed, params, objectives, constraints",
    ),
    "description type": ("description = 3\n", "description=3 is not allowed; allowed: a string"),
    "unknown fixed setting": ("[fixed]\nepoch = 3\n", f"fixed.epoch is not a setting; allowed: {ALL_SETTINGS}"),
    "unknown searched setting": (
        '[params.rnk]\ntype = "int"\nlow = 2\nhigh = 8\n',
        "params.rnk is not a setting; allowed: adapter_lr_ratio, arch,",
    ),
    "fixed and searched": (
        "[fixed]\nrank = 8\n" + RANK,
        "params.rank is both fixed and searched; allowed: one of fixed.rank, params.rank",
    ),
    "unknown type": (
        '[params.rank]\ntype = "integer"\nlow = 2\nhigh = 8\n',
        "params.rank.type='integer' is not allowed; allowed: int, float, categorical",
    ),
    "unknown parameter key": (
        RANK + "log_scale = true\n",
        "params.rank.log_scale is not a parameter key; allowed: type, low, high, log, step, choices",
    ),
    "missing bound": ('[params.rank]\ntype = "int"\nlow = 2\n', "params.rank.high is missing; allowed: an integer"),
    "int with float bound": (
        '[params.rank]\ntype = "int"\nlow = 2\nhigh = 8.0\n',
        "params.rank.high=8.0 is not allowed with type = 'int'; allowed: an integer",
    ),
    "float with string bound": (
        '[params.lr]\ntype = "float"\nlow = "0.1"\nhigh = 1\n',
        "params.lr.low='0.1' is not allowed with type = 'float'; allowed: a finite number",
    ),
    "low equals high": (
        '[params.rank]\ntype = "int"\nlow = 8\nhigh = 8\n',
        "params.rank.low=8 >= params.rank.high=8; allowed: low < high",
    ),
    "low above high": (
        '[params.lr]\ntype = "float"\nlow = 0.1\nhigh = 0.01\n',
        "params.lr.low=0.1 >= params.lr.high=0.01; allowed: low < high",
    ),
    "log from zero": (
        '[params.lr]\ntype = "float"\nlow = 0\nhigh = 0.1\nlog = true\n',
        "params.lr.low=0.0 is not allowed with log = true; allowed: a number > 0",
    ),
    "log not a bool": (RANK + 'log = "yes"\n', "params.rank.log='yes' is not allowed; allowed: true, false"),
    "log and step": (
        RANK + "log = true\nstep = 2\n",
        "params.rank.step is not allowed with log = true; allowed: step or log, not both",
    ),
    "step off the grid": (RANK + "step = 4\n", "params.rank.high=8 is not low + a whole number of steps of 4"),
    "empty choices": (
        '[params.shape]\ntype = "categorical"\nchoices = []\n',
        "params.shape.choices=[] is not allowed; allowed: a non-empty list",
    ),
    "repeated choice": (
        '[params.shape]\ntype = "categorical"\nchoices = ["linear", "linear"]\n',
        "params.shape.choices=['linear', 'linear'] repeats a choice",
    ),
    "bounds on categorical": (
        '[params.shape]\ntype = "categorical"\nchoices = ["linear"]\nlow = 1\n',
        "params.shape.low is not allowed with type = 'categorical'; allowed: type, choices",
    ),
    "impossible low": (
        '[params.rank]\ntype = "int"\nlow = 0\nhigh = 8\n',
        "params.rank.low=0 is not allowed; allowed: an integer >= 1",
    ),
    "impossible high": (
        '[params.final_density]\ntype = "float"\nlow = 0.1\nhigh = 1.5\n',
        "params.final_density.high=1.5 is not allowed; allowed: a number in (0, 1]",
    ),
    "impossible choice": (
        '[params.criterion]\ntype = "categorical"\nchoices = ["weight", "magnitude"]\n',
        "params.criterion.choices[1]='magnitude' is not allowed; allowed: weight, grad, taylor, lrp",
    ),
    "schedule that prunes nothing": (
        '[fixed]\nsteps = 3\n[params.final_density]\ntype = "float"\nlow = 0.1\nhigh = 1.0\n',
        "params.final_density.high=1.0 is not allowed; allowed: final_density < 1, or steps=0",
    ),
    "impossible fixed value": ("[fixed]\nepochs = -1\n", "fixed.epochs=-1 is not allowed; allowed: an integer >= 0"),
    "fixed value of the wrong type": (
        '[fixed]\nbatch_size = "32"\n',
        "fixed.batch_size='32' is not allowed; allowed: an integer >= 1",
    ),
    "unknown dataset": ('[fixed]\ndataset = "digitz"\n', "fixed.dataset='digitz' is not allowed; allowed: digits,"),
    "fixed settings that clash": (
        "[fixed]\nfinal_density = 1.0\nsteps = 2\n",
        "the fixed settings do not make a valid experiment: final_density=1 with steps=2 prunes nothing",
    ),
    "no objectives": ("objectives = []\n", "objectives=[] is not allowed; allowed: at least one [[objectives]] table"),
    "unknown metric": (
        '[[objectives]]\nmetric = "accuracy"\nmode = "max"\n',
        "objectives[0].metric='accuracy' is not allowed; allowed: step, density, target_density, val_accuracy,",
    ),
    "unknown mode": (
        '[[objectives]]\nmetric = "flops"\nmode = "maximize"\n',
        "objectives[0].mode='maximize' is not allowed; allowed: max, min",
    ),
    "unknown objective key": (
        '[[objectives]]\nmetric = "flops"\nmode = "min"\ngoal = 1\n',
        "objectives[0].goal is not an objective key; allowed: metric, mode",
    ),
    "repeated metric": (
        VAL_MAX + VAL_MAX,
        "objectives[1].metric='val_accuracy' repeats an earlier objective; allowed: each metric once",
    ),
    "constraints not a table": (
        "constraints = 0.6\n",
        "constraints=0.6 is not allowed; allowed: a table [constraints] of min_val_accuracy,",
    ),
    "unknown constraint": (
        "[constraints]\nmin_accuracy = 0.6\n",
        "constraints.min_accuracy is not a constraint; allowed: min_val_accuracy, min_val_accuracy_relative, "
        "max_flops, max_params",
    ),
    "floor above one": (
        "[constraints]\nmin_val_accuracy = 60\n",
        "constraints.min_val_accuracy=60 is not allowed; allowed: a number in [0, 1]",
    ),
    "relative floor of zero": (
        "[constraints]\nmin_val_accuracy_relative = 0\n",
        "constraints.min_val_accuracy_relative=0 is not allowed; allowed: a number in (0, 1]",
    ),
    "ceiling as a string": (
        '[constraints]\nmax_flops = "1e8"\n',
        "constraints.max_flops='1e8' is not allowed; allowed: a number > 0",
    ),
    "negative ceiling": (
        "[constraints]\nmax_params = -1\n",
        "constraints.max_params=-1 is not allowed; allowed: a number > 0",
    ),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_file_fails_in_one_line(case: str, tmp_path: Path) -> None:
    text, expected = MALFORMED[case]
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(SpaceError) as caught:
        load_space(path)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: ")
    assert expected in message, message


def test_fixed_settings_that_only_work_together_load(tmp_path: Path) -> None:
    # final_density = 1 is impossible with the default 3 steps, fine with none: judged together, not one by one.
    path = tmp_path / "no_pruning.toml"
    path.write_text("[fixed]\nfinal_density = 1.0\nsteps = 0\n")
    assert load_space(path).fixed == {"final_density": 1.0, "steps": 0}


def test_messages_name_the_file_relative_to_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "spaces").mkdir()
    (tmp_path / "spaces" / "x.toml").write_text(RANK.replace("low = 2", "low = 0"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(
        SpaceError, match=re.escape("spaces/x.toml: params.rank.low=0 is not allowed; allowed: an integer >= 1")
    ):
        load_space("spaces/x.toml")
