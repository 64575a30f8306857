"""study.constraints: each declared constraint one value (<= 0 holds), the reason of a violation, Optuna's hook,
and a space's [constraints] merged over its bases and written back."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from study.constraints import Constraints
from study.spaces import load_space

RESULT = {"val_accuracy": 0.7, "flops": 2e8, "params": 5e5}


@pytest.mark.parametrize(
    ("constraints", "unpruned", "values", "violation"),
    [
        (Constraints(), 0.9, (), None),
        (Constraints(min_val_accuracy=0.6), None, (0.6 - 0.7,), None),
        (Constraints(min_val_accuracy=0.75), None, (0.75 - 0.7,), "val_accuracy 0.7 < min_val_accuracy 0.75"),
        (Constraints(min_val_accuracy_relative=0.9), 0.75, (0.9 * 0.75 - 0.7,), None),
        (
            Constraints(min_val_accuracy_relative=0.9),
            0.8,
            (0.9 * 0.8 - 0.7,),
            "val_accuracy 0.7 < min_val_accuracy_relative 0.9 x 0.8 = 0.72",
        ),
        (Constraints(min_val_accuracy_relative=0.9), None, (0.0,), None),  # step 0 unknown: no verdict
        (
            Constraints(min_val_accuracy=0.5, max_flops=1e8, max_params=1e6),
            None,
            (0.5 - 0.7, 2e8 - 1e8, 5e5 - 1e6),
            "flops 200000000.0 > max_flops 1e+08",
        ),
    ],
)
def test_values_and_violation(constraints, unpruned, values, violation) -> None:
    assert constraints.values(RESULT, unpruned) == pytest.approx(values)
    assert constraints.violation(RESULT, unpruned) == violation


def test_a_missing_or_nan_measurement_breaks_its_constraint() -> None:
    constraints = Constraints(min_val_accuracy=0.5, max_params=1e6)
    assert constraints.values({"val_accuracy": math.nan}, None) == (math.inf, math.inf)
    assert constraints.violation({}, None) == "val_accuracy None < min_val_accuracy 0.5; params None > max_params 1e+06"


def test_named_values_are_the_values_by_constraint() -> None:
    constraints = Constraints(min_val_accuracy=0.5, max_params=1e6)
    assert constraints.named_values(RESULT, None) == pytest.approx({"min_val_accuracy": -0.2, "max_params": -5e5})


def test_shipped_spaces_set_a_floor_well_above_chance() -> None:
    space = load_space("splora_lrp")
    assert space.constraints.min_val_accuracy is not None and space.constraints.min_val_accuracy >= 0.5  # chance is 0.2


def test_a_space_overrides_its_bases_constraints_key_by_key_and_writes_them_back(tmp_path: Path) -> None:
    path = tmp_path / "strict.toml"
    path.write_text('extends = "splora_lrp"\n[constraints]\nmin_val_accuracy_relative = 0.95\nmax_params = 2e5\n')
    space = load_space(path)
    floor = load_space("splora_lrp").constraints.min_val_accuracy
    assert space.constraints == Constraints(min_val_accuracy=floor, min_val_accuracy_relative=0.95, max_params=2e5)
    copy = tmp_path / "copy.toml"
    copy.write_text(space.to_toml())
    assert load_space(copy).constraints == space.constraints
