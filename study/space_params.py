"""One searched parameter of a search space: its kinds, its table in a space file, the values it can take and its
Optuna distribution (``study.spaces`` holds the space around it).

A table ``[params.NAME]`` is ``type = "int"`` or ``"float"`` with ``low`` and ``high`` (``log``, or ``step``), or
``type = "categorical"`` with ``choices``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from spa.validation import is_finite_number, is_int

if TYPE_CHECKING:
    import optuna

__all__ = ["PARAM_KINDS", "PARAM_KEYS", "Param", "parse_param"]

PARAM_KINDS = ("int", "float", "categorical")
PARAM_KEYS = ("type", "low", "high", "log", "step", "choices")


@dataclass(frozen=True)
class Param:
    """One searched setting: ``kind`` "int" or "float" with ``low``/``high`` (``log``, ``step``), or
    "categorical" with ``choices``."""

    name: str
    kind: str
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple[Any, ...] | None = None

    def extremes(self) -> list[tuple[str, Any]]:
        """The values that must all make a valid experiment: (label, value) for low and high, or each choice."""
        if self.kind == "categorical":
            return [(f"choices[{i}]", choice) for i, choice in enumerate(self.choices or ())]
        return [("low", self.low), ("high", self.high)]

    def distribution(self) -> optuna.distributions.BaseDistribution:
        from optuna import distributions  # local: loading a space needs no optuna

        if self.kind == "int":
            return distributions.IntDistribution(self.low, self.high, log=self.log, step=self.step or 1)
        if self.kind == "float":
            return distributions.FloatDistribution(self.low, self.high, log=self.log, step=self.step)
        return distributions.CategoricalDistribution(self.choices)

    def refusal(self, value: Any) -> str | None:
        """What the parameter allows, when ``value`` is not a value it can take (a start point's); else None."""
        if self.kind == "categorical":
            choices = self.choices or ()
            # type and value: a choice of 1 is not true, nor 8.0 the choice 8
            if any(type(value) is type(choice) and value == choice for choice in choices):
                return None
            return f"one of {', '.join(map(repr, choices))}"
        if self.kind == "int":
            what, fits = "an integer", is_int(value)
        else:
            what, fits = "a number", is_finite_number(value)
        on_step = f" on steps of {self.step} from {self.low}" if self.step is not None else ""
        allowed = f"{what} in [{self.low}, {self.high}]{on_step}"
        if not fits or not self.low <= value <= self.high:
            return allowed
        if self.step is not None and not _on_steps(value, self.low, self.step):
            return allowed
        return None

    def spec(self) -> dict[str, Any]:
        """The parameter's table in a space file."""
        if self.kind == "categorical":
            return {"type": self.kind, "choices": list(self.choices or ())}
        spec = {"type": self.kind, "low": self.low, "high": self.high}
        if self.log:
            spec["log"] = True
        if self.step is not None:
            spec["step"] = self.step
        return spec


def parse_param(name: str, spec: Any, error: Callable[[str], Exception]) -> Param:
    """The parameter ``params.NAME`` of a space file, its table ``spec`` checked; ``error(message)`` is raised."""
    key = f"params.{name}"
    if not isinstance(spec, dict):
        raise error(f"{key}={spec!r} is not allowed; allowed: a table with type = int, float or categorical")
    for field in spec:
        if field not in PARAM_KEYS:
            raise error(f"{key}.{field} is not a parameter key; allowed: {', '.join(PARAM_KEYS)}")
    kind = spec.get("type")
    if kind not in PARAM_KINDS:
        raise error(f"{key}.type={kind!r} is not allowed; allowed: {', '.join(PARAM_KINDS)}")

    if kind == "categorical":
        for field in ("low", "high", "log", "step"):
            if field in spec:
                raise error(f"{key}.{field} is not allowed with type = 'categorical'; allowed: type, choices")
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise error(f"{key}.choices={choices!r} is not allowed; allowed: a non-empty list")
        for choice in choices:
            if not isinstance(choice, (str, bool, int, float)):
                raise error(f"{key}.choices holds {choice!r}; allowed: strings, numbers, booleans")
        if len(set(map(repr, choices))) != len(choices):
            raise error(f"{key}.choices={choices!r} repeats a choice; allowed: distinct choices")
        return Param(name=name, kind=kind, choices=tuple(choices))

    if "choices" in spec:
        raise error(f"{key}.choices is not allowed with type = {kind!r}; allowed: low, high, log, step")
    is_bound = is_int if kind == "int" else is_finite_number
    what = "an integer" if kind == "int" else "a finite number"
    bounds = {}
    for field in ("low", "high"):
        if field not in spec:
            raise error(f"{key}.{field} is missing; allowed: {what}")
        if not is_bound(spec[field]):
            raise error(f"{key}.{field}={spec[field]!r} is not allowed with type = {kind!r}; allowed: {what}")
        bounds[field] = spec[field] if kind == "int" else float(spec[field])
    low, high = bounds["low"], bounds["high"]
    if low >= high:
        raise error(f"{key}.low={low!r} >= {key}.high={high!r}; allowed: low < high")
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise error(f"{key}.log={log!r} is not allowed; allowed: true, false")
    if log and low <= 0:
        raise error(f"{key}.low={low!r} is not allowed with log = true; allowed: a number > 0")
    step = spec.get("step")
    if step is not None:
        if log:
            raise error(f"{key}.step is not allowed with log = true; allowed: step or log, not both")
        if kind == "int" and not (is_int(step) and step >= 1):
            raise error(f"{key}.step={step!r} is not allowed with type = 'int'; allowed: an integer >= 1")
        if kind == "float" and not (is_finite_number(step) and step > 0):
            raise error(f"{key}.step={step!r} is not allowed; allowed: a finite number > 0")
        if not _on_steps(high, low, step):
            raise error(f"{key}.high={high!r} is not low + a whole number of steps of {step!r}; allowed: such")
        step = step if kind == "int" else float(step)
    return Param(name=name, kind=kind, low=low, high=high, log=log, step=step)


def _on_steps(value: float, low: float, step: float) -> bool:
    """``value`` is ``low`` plus a whole number of ``step`` (up to float rounding)."""
    count = (value - low) / step
    return abs(count - round(count)) <= 1e-9 * max(1.0, abs(count))
