"""Constraints of a search space: what a trial's result must reach to count, so a front holds only usable points.

A space may declare them (a base's are merged key by key, like ``[fixed]``)::

    [constraints]
    min_val_accuracy = 0.6              # absolute floor on the validation accuracy
    min_val_accuracy_relative = 0.9     # fraction of the trial's own val_accuracy at step 0 (trained, unpruned)
    max_flops = 5e8                     # optional ceilings on the pruned network
    max_params = 1e6

Each declared constraint is one value, ``<= 0`` when it holds (Optuna's convention): the searcher tells them to
Optuna (``Trial.set_constraint``, Optuna 5's mechanism, which TPE, NSGA-II and GP learn from), and a trial that
breaks one is recorded (Optuna user attribute and MLflow tag ``constraint_violated`` with the reason) and never
enters a front. Plain data: no Optuna, Ray or MLflow.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any

from spa.validation import is_finite_number

__all__ = [
    "CONSTRAINT_KEYS",
    "CONSTRAINTS_ATTR",
    "VIOLATION",
    "UNPRUNED_VAL_ACCURACY",
    "Constraints",
    "parse_constraints",
]

# Optuna user attribute: the constraint values of a trial by name, <= 0 when it holds (also told as its constraints).
CONSTRAINTS_ATTR = "constraints"
# Optuna user attribute and MLflow tag of a trial that broke a constraint: the reason, one line.
VIOLATION = "constraint_violated"
# Optuna user attribute: the trial's val_accuracy at step 0, what min_val_accuracy_relative is a fraction of.
UNPRUNED_VAL_ACCURACY = "unpruned_val_accuracy"


@dataclass(frozen=True)
class Constraints:
    """The declared constraints of a space; None: not declared."""

    min_val_accuracy: float | None = None
    min_val_accuracy_relative: float | None = None
    max_flops: float | None = None
    max_params: float | None = None

    def declared(self) -> tuple[str, ...]:
        return tuple(field.name for field in fields(self) if getattr(self, field.name) is not None)

    def spec(self) -> dict[str, float]:
        """The ``[constraints]`` table of a space file."""
        return {key: getattr(self, key) for key in self.declared()}

    def values(self, result: Mapping[str, Any], unpruned_val_accuracy: float | None) -> tuple[float, ...]:
        """One value per declared constraint, ``<= 0`` when it holds, for a trial that reported ``result`` and had
        ``unpruned_val_accuracy`` at step 0 (None: unknown; the relative floor then holds). A measurement that is
        missing or not finite breaks its constraint (``inf``)."""
        values = []
        for key in self.declared():
            bound = getattr(self, key)
            if key == "min_val_accuracy_relative" and not is_finite_number(unpruned_val_accuracy):
                values.append(0.0)
                continue
            measured = result.get(_METRIC[key])
            if not is_finite_number(measured):
                values.append(math.inf)
            elif key == "min_val_accuracy":
                values.append(bound - float(measured))
            elif key == "min_val_accuracy_relative":
                values.append(bound * float(unpruned_val_accuracy) - float(measured))
            else:
                values.append(float(measured) - bound)
        return tuple(values)

    def named_values(self, result: Mapping[str, Any], unpruned_val_accuracy: float | None) -> dict[str, float]:
        """``values`` by constraint name (what Optuna's ``Trial.set_constraint`` takes)."""
        return dict(zip(self.declared(), self.values(result, unpruned_val_accuracy), strict=True))

    def violation(self, result: Mapping[str, Any], unpruned_val_accuracy: float | None) -> str | None:
        """Why ``result`` breaks the constraints, in one line; None when it keeps them."""
        reasons = []
        for key, value in zip(self.declared(), self.values(result, unpruned_val_accuracy), strict=True):
            if value <= 0:
                continue
            metric, bound = _METRIC[key], getattr(self, key)
            measured = result.get(metric)
            if key == "min_val_accuracy_relative":
                floor = bound * float(unpruned_val_accuracy)
                reasons.append(f"{metric} {measured!r} < {key} {bound:g} x {unpruned_val_accuracy:.4g} = {floor:.4g}")
            else:
                relation = "<" if key.startswith("min_") else ">"
                reasons.append(f"{metric} {measured!r} {relation} {key} {bound:g}")
        return "; ".join(reasons) or None


_METRIC = {
    "min_val_accuracy": "val_accuracy",
    "min_val_accuracy_relative": "val_accuracy",
    "max_flops": "flops",
    "max_params": "params",
}
CONSTRAINT_KEYS = tuple(_METRIC)
_ALLOWED = {
    "min_val_accuracy": "a number in [0, 1]",
    "min_val_accuracy_relative": "a number in (0, 1]",
    "max_flops": "a number > 0",
    "max_params": "a number > 0",
}


def parse_constraints(raw: Any, error: Callable[[str], Exception]) -> Constraints:
    """The ``[constraints]`` table of a space file (None: none declared); ``error(message)`` makes the exception
    raised for a bad one, a one-line message naming the key."""
    if raw is None:
        return Constraints()
    if not isinstance(raw, dict):
        raise error(f"constraints={raw!r} is not allowed; allowed: a table [constraints] of {', '.join(_METRIC)}")
    values = {}
    for key, value in raw.items():
        if key not in _METRIC:
            raise error(f"constraints.{key} is not a constraint; allowed: {', '.join(_METRIC)}")
        if not is_finite_number(value) or not _in_range(key, float(value)):
            raise error(f"constraints.{key}={value!r} is not allowed; allowed: {_ALLOWED[key]}")
        values[key] = float(value)
    return Constraints(**values)


def _in_range(key: str, value: float) -> bool:
    if key == "min_val_accuracy":
        return 0.0 <= value <= 1.0
    if key == "min_val_accuracy_relative":
        return 0.0 < value <= 1.0
    return value > 0
