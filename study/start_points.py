"""Start points: trials a space asks for first, so the settings they name are measured by design, not by luck.

In a space file, each ``[[start_points]]`` table is one trial's searched parameters::

    [[start_points]]           # the cheap end of the front
    rank = 1
    final_density = 0.05

The study enqueues them into its Optuna study before the sampler proposes anything (Ray's
``OptunaSearch(points_to_evaluate=...)``, i.e. ``Study.enqueue_trial``), in the order written; a resumed study
does not enqueue them again (``study.searcher``). Optuna tells the sampler of them like of any trial, so they count
towards its startup trials (``study.sampler_plan``).

A point names searched parameters only (a fixed setting is every trial's already). It may leave some out: the
sampler draws those, as Optuna does for a partially enqueued trial. Partial points are allowed because spaces share
them through their bases: ``_splora``'s points serve ``splora_any`` too, whose criterion is then drawn. Each value
must be one its parameter can take (its type, within low and high, on its step, or one of the choices); the point
over the fixed settings must make a valid experiment (``study.spaces``). A key that a space (or the driver, e.g.
``--smoke``) fixes drops out of the points it inherits, as it stops being searched; so does a value that a parameter
the space searches anew (its own ``[params.NAME]``) cannot take, since the base chose it for the base's range (copy
``splora_lrp.toml`` and narrow rank to [2, 8]: the points keep their schedules and lr, and rank is drawn); a point
left empty, or equal to an earlier one, is dropped. A file's own points are checked, never trimmed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from study.space_params import Param

__all__ = ["KEY", "check_structure", "parse_start_points", "without", "inherited"]

KEY = "start_points"  # the space file's key
_VALUE_TYPES = (str, bool, int, float)

Error = Callable[[str], Exception]


def check_structure(raw: Any, error: Error) -> None:
    """One file's ``start_points``: a list of non-empty tables of plain values (judged against the merged space's
    parameters by ``parse_start_points``)."""
    if raw is None:
        return
    if not isinstance(raw, list) or not all(isinstance(point, dict) for point in raw):
        raise error(f"{KEY}={raw!r} is not allowed; allowed: [[{KEY}]] tables of parameter values")
    for index, point in enumerate(raw):
        if not point:
            raise error(f"{KEY}[{index}] is empty; allowed: a table setting at least one searched parameter")
        for name, value in point.items():
            if not isinstance(value, _VALUE_TYPES):
                raise error(f"{KEY}[{index}].{name}={value!r} is not allowed; allowed: a string, number or boolean")


def parse_start_points(
    raw: Any, params: Iterable[Param], fixed: Mapping[str, Any], error: Error
) -> tuple[dict[str, Any], ...]:
    """The merged space's points, each value checked against its parameter (``Param.refusal``), floats as floats."""
    check_structure(raw, error)
    by_name = {param.name: param for param in params}
    searched = ", ".join(by_name) or "none (this space searches nothing)"
    points = []
    for index, point in enumerate(raw or ()):
        parsed = {}
        for name, value in point.items():
            key = f"{KEY}[{index}].{name}"
            if name in fixed:
                raise error(f"{key} is a fixed setting, not a searched one; allowed: {searched}")
            if name not in by_name:
                raise error(f"{key} is not a searched parameter; allowed: {searched}")
            allowed = by_name[name].refusal(value)
            if allowed:
                raise error(f"{key}={value!r} is not allowed; allowed: {allowed}")
            parsed[name] = float(value) if by_name[name].kind == "float" else value
        points.append(parsed)
    return without(points, ())


def without(points: Iterable[Mapping[str, Any]], names: Iterable[str]) -> tuple[dict[str, Any], ...]:
    """``points`` with the keys ``names`` removed (now fixed), leaving out points that became empty or repeat an
    earlier one."""
    names = set(names)
    kept: list[dict[str, Any]] = []
    for point in points:
        trimmed = {name: value for name, value in point.items() if name not in names}
        if trimmed and trimmed not in kept:
            kept.append(trimmed)
    return tuple(kept)


def inherited(
    points: Iterable[Mapping[str, Any]],
    fixed: Iterable[str],
    params: Mapping[str, Any],
    takes: Callable[[str, Any, Any], bool],
) -> tuple[dict[str, Any], ...]:
    """The ``points`` of a base as the space extending it inherits them: without the keys it fixes, nor the values
    that a parameter it searches anew cannot take (``takes(name, spec, value)``, ``spec`` its table in ``params``)."""
    fixed = set(fixed)
    kept = [
        {
            name: value
            for name, value in point.items()
            if name not in fixed and (name not in params or takes(name, params[name], value))
        }
        for point in points
    ]
    return without(kept, ())
