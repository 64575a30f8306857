"""The shared refusal (ConfigError with field and allowed), the two value checks, and the atomic write."""

from __future__ import annotations

import math
import pickle
import stat
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import pytest

from spa.config import DataConfig, ExperimentConfig, LearnerConfig, ModelConfig, OptimConfig, PruneConfig, RuntimeConfig
from spa.files import write_atomically
from spa.schedules import density_schedule, explicit_schedule
from spa.validation import ConfigError, is_finite_number, is_int


@pytest.mark.parametrize(
    ("value", "expected"),
    [(0, True), (-3, True), (2**70, True), (True, False), (False, False), (1.0, False), ("1", False), (None, False)],
)
def test_is_int(value: object, expected: bool) -> None:
    assert is_int(value) is expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0, True),
        (1e-3, True),
        (-2.5, True),
        (Fraction(1, 3), True),
        (math.nan, False),
        (math.inf, False),
        (-math.inf, False),
        (True, False),
        ("0.1", False),
        (None, False),
    ],
)
def test_is_finite_number(value: object, expected: bool) -> None:
    assert is_finite_number(value) is expected


# (build, field, allowed, message): every refusal names its field and what is allowed, and keeps its message.
REFUSALS = {
    "rank": (
        lambda: LearnerConfig(rank=0),
        "rank",
        "an integer >= 1",
        "rank=0 is not allowed; allowed: an integer >= 1",
    ),
    "learner": (
        lambda: LearnerConfig(learner="lora"),
        "learner",
        "finetune, splora",
        "learner='lora' is not allowed; allowed: finetune, splora",
    ),
    "init_range": (
        lambda: LearnerConfig(init_range=math.nan),
        "init_range",
        "a finite number > 0",
        "init_range=nan is not allowed; allowed: a finite number > 0",
    ),
    "criterion": (
        lambda: PruneConfig(criterion="magnitude"),
        "criterion",
        "weight, grad, taylor, lrp",
        "criterion='magnitude' is not allowed; allowed: weight, grad, taylor, lrp",
    ),
    "shape": (
        lambda: PruneConfig(shape="cubic"),
        "shape",
        "linear, geometric",
        "shape='cubic' is not allowed; allowed: linear, geometric",
    ),
    "densities order": (
        lambda: PruneConfig(densities=(0.5, 0.8)),
        "densities",
        "a strictly decreasing list",
        "densities=(0.5, 0.8) is not allowed; allowed: a strictly decreasing list",
    ),
    "batch_size bool": (
        lambda: DataConfig(batch_size=True),
        "batch_size",
        "an integer >= 1",
        "batch_size=True is not allowed; allowed: an integer >= 1",
    ),
    "weights": (
        lambda: ModelConfig(weights=""),
        "weights",
        "a non-empty string",
        "weights='' must be a string",
    ),
    "optimizer": (
        lambda: OptimConfig(optimizer="adam"),
        "optimizer",
        "sgd, adamw",
        "optimizer='adam' is not allowed; allowed: sgd, adamw",
    ),
    "threads": (
        lambda: RuntimeConfig(threads=0),
        "threads",
        "an integer >= 1",
        "threads=0 is not allowed; allowed: an integer >= 1",
    ),
    "min_channels": (
        lambda: PruneConfig(min_channels=0),
        "min_channels",
        "an integer >= 1",
        "min_channels=0 is not allowed; allowed: an integer >= 1",
    ),
    "val_fraction": (
        lambda: DataConfig(val_fraction=1.0),
        "val_fraction",
        "a number in (0, 1) or None",
        "val_fraction=1.0 is not allowed; allowed: a number in (0, 1) or None",
    ),
    "unknown key": (
        lambda: ExperimentConfig.from_flat({"rnak": 4}),
        "rnak",
        ", ".join(sorted(ExperimentConfig.field_names())),
        f"unknown setting(s) ['rnak']; allowed: {', '.join(sorted(ExperimentConfig.field_names()))}",
    ),
    "schedule prunes nothing": (
        lambda: density_schedule(1.0, 3),
        "final_density",
        "final_density < 1, or steps=0",
        "final_density=1 with steps=3 prunes nothing; allowed: final_density < 1, or steps=0",
    ),
    "schedule steps": (
        lambda: density_schedule(0.5, -1),
        "steps",
        "an integer >= 0",
        "steps=-1 is not allowed; allowed: an integer >= 0",
    ),
    "explicit schedule": (
        lambda: explicit_schedule([0.5, 1.5]),
        "densities",
        "numbers in (0, 1]",
        "densities=[0.5, 1.5] hold [1.5]; allowed: numbers in (0, 1]",
    ),
}


@pytest.mark.parametrize("case", REFUSALS, ids=list(REFUSALS))
def test_refusals_carry_field_and_allowed(case: str) -> None:
    build, field, allowed, message = REFUSALS[case]
    with pytest.raises(ConfigError) as caught:
        build()
    assert (caught.value.field, caught.value.allowed, str(caught.value)) == (field, allowed, message)


def test_config_error_is_a_value_error_and_survives_pickling() -> None:
    # Ray ships a trial's exception to the driver by pickling it: the attributes must come along.
    error = ConfigError.not_allowed("rank", 0, "an integer >= 1")
    copy = pickle.loads(pickle.dumps(error))
    assert isinstance(copy, ValueError)
    assert (str(copy), copy.field, copy.allowed) == (str(error), "rank", "an integer >= 1")


def test_config_error_is_the_same_class_from_spa_config() -> None:
    import spa.config

    assert spa.config.ConfigError is ConfigError


def test_write_atomically_replaces_the_file_and_leaves_nothing_else(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "table.csv"
    assert write_atomically(target, lambda path: path.write_text("a,b\n")) == target
    write_atomically(target, lambda path: path.write_text("c,d\n"))
    assert target.read_text() == "c,d\n"
    assert sorted(p.name for p in target.parent.iterdir()) == ["table.csv"]


def test_write_atomically_gives_the_permissions_of_a_plainly_created_file(tmp_path: Path) -> None:
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    atomic = write_atomically(tmp_path / "atomic.txt", lambda path: path.write_text("x"))
    assert stat.S_IMODE(atomic.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode)


@pytest.mark.parametrize("error", [RuntimeError, OSError])
def test_write_atomically_keeps_the_old_file_when_writing_fails(tmp_path: Path, error: type[Exception]) -> None:
    target = tmp_path / "table.csv"
    target.write_text("old\n")

    def failing(path: Path) -> None:
        path.write_text("half")
        raise error("disk full")

    with pytest.raises(error, match="disk full"):
        write_atomically(target, failing)
    assert target.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["table.csv"]


def test_the_shared_helpers_do_not_import_torch() -> None:
    # The study driver imports these to validate and write files; it must not pay for torch.
    code = "import sys, spa, spa.validation, spa.files, spa.config, spa.schedules; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
