"""The front book of a running study: every point trials reported, each completed trial's final point, and the two
Pareto fronts over them, kept incrementally. Plain data: no MLflow, Ray or torch (``study.tracking`` tells it what
happened and records what it says in MLflow; ``study.front_files`` writes the files of its snapshots).

Two fronts are kept: over the completed trials' final values (``pareto_front.csv/.html/.png``; membership is the
``pareto`` tag of a trial's run) and over every measured (trial, pruning step) point (``pareto_front_steps.csv``).
A point or a final that breaks the space's constraints (``study.constraints``) is kept in the book but enters
neither.

``ParetoFront`` is the incremental front under both: points arrive one at a time and the front is kept current, so a
trial's end costs O(log n + k) rather than a recomputation over every point (``study.pareto.pareto_mask``). For two
objectives the front is kept sorted by the first loss (so the second loss falls along it), a binary search finds the
one member that could dominate the new point, and the members it dominates are one contiguous run after it. Other
numbers of objectives scan the front: O(front * m). Same rules as ``pareto_mask``: a point with a NaN objective is
never on the front and dominates nothing; equal points are both kept. A key added again with other values, or
discarded, rebuilds the front from the points it holds (a point leaving can bring back points it dominated).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from study.constraints import Constraints
from study.names import MODES

__all__ = ["FrontBook", "FrontChange", "FrontSnapshot", "ParetoFront"]


@dataclass(frozen=True)
class FrontChange:
    """What one ``add`` or ``discard`` did to the front: whether the point is on it, and the keys it pushed off."""

    joined: bool
    left: tuple[Hashable, ...] = ()


class ParetoFront:
    """The current Pareto front of the points added so far; see the module docstring."""

    def __init__(self, modes: Sequence[str]) -> None:
        bad = [mode for mode in modes if mode not in MODES]
        if not modes or bad:
            raise ValueError(f"modes={list(modes)!r} must be one or more of {', '.join(MODES)}")
        self.modes = tuple(modes)
        self._signs = tuple(-1.0 if mode == "max" else 1.0 for mode in modes)
        self._points: dict[Hashable, tuple[float, ...]] = {}  # key -> losses (every point ever added)
        # Two objectives: the front sorted by (loss 0, loss 1); _firsts mirrors loss 0 for bisect.
        # Other widths: the front in insertion order.
        self._front: list[tuple[tuple[float, ...], Hashable]] = []
        self._firsts: list[float] = []
        self._members: set[Hashable] = set()

    def __len__(self) -> int:
        return len(self._front)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._members

    def keys(self) -> list[Hashable]:
        """The keys on the front (two objectives: best first objective first)."""
        return [key for _, key in self._front]

    def add(self, key: Hashable, values: Sequence[float]) -> FrontChange:
        """Record ``values`` (objectives, in the front's modes) for ``key``; return how the front changed."""
        if len(values) != len(self.modes):
            raise ValueError(f"one value per objective is needed: {len(values)=} and {len(self.modes)=}")
        losses = tuple(float(value) * sign for value, sign in zip(values, self._signs, strict=True))
        if key in self._points:
            if _same(self._points[key], losses):
                return FrontChange(joined=key in self)
            before = set(self._members)
            self._points[key] = losses
            self._rebuild()
            return FrontChange(joined=key in self, left=tuple(k for k in before - self._members if k != key))
        self._points[key] = losses
        if any(math.isnan(loss) for loss in losses):
            return FrontChange(joined=False)
        change = self._add_two(key, losses) if len(losses) == 2 else self._add_any(key, losses)
        self._members.difference_update(change.left)
        if change.joined:
            self._members.add(key)
        return change

    def discard(self, key: Hashable) -> FrontChange:
        """Forget ``key``; the members it dominated may come back (``joined`` is False, ``left`` holds ``key`` if it
        was on the front)."""
        if key not in self._points:
            return FrontChange(joined=False)
        was_member = key in self
        del self._points[key]
        if was_member:
            self._rebuild()
        return FrontChange(joined=False, left=(key,) if was_member else ())

    def extend(self, points: Iterable[tuple[Hashable, Sequence[float]]]) -> None:
        for key, values in points:
            self.add(key, values)

    # --- internals ----------------------------------------------------------------------------------------------

    def _add_two(self, key: Hashable, losses: tuple[float, ...]) -> FrontChange:
        first, second = losses
        # Members with loss 0 <= first: the last of them has the lowest loss 1 (loss 1 falls along the front).
        after_equal = bisect.bisect_right(self._firsts, first)
        if after_equal > 0:
            (q_first, q_second), _ = self._front[after_equal - 1]
            if q_second < second or (q_second == second and q_first < first):
                return FrontChange(joined=False)  # dominated
        # The members the new point dominates: loss 0 >= first and loss 1 >= second, not equal to it; they follow
        # the members with loss 0 < first, as one run (loss 1 falls along the front).
        start = bisect.bisect_left(self._firsts, first)
        stop = start
        while stop < len(self._front):
            (q_first, q_second), _ = self._front[stop]
            if q_second < second or (q_first == first and q_second == second):
                break
            stop += 1
        left = tuple(k for _, k in self._front[start:stop])
        # Equal points stay beside each other, just after the removed run.
        self._front[start:stop] = [(losses, key)]
        self._firsts[start:stop] = [first]
        return FrontChange(joined=True, left=left)

    def _add_any(self, key: Hashable, losses: tuple[float, ...]) -> FrontChange:
        for member, _ in self._front:
            if _dominates(member, losses):
                return FrontChange(joined=False)
        left = tuple(member_key for member, member_key in self._front if _dominates(losses, member))
        self._front = [(member, k) for member, k in self._front if not _dominates(losses, member)]
        self._front.append((losses, key))
        return FrontChange(joined=True, left=left)

    def _rebuild(self) -> None:
        points = list(self._points.items())
        self._points, self._front, self._firsts, self._members = {}, [], [], set()
        for key, losses in points:
            self.add(key, tuple(loss * sign for loss, sign in zip(losses, self._signs, strict=True)))


def _dominates(a: Sequence[float], b: Sequence[float]) -> bool:
    return all(x <= y for x, y in zip(a, b, strict=True)) and any(x < y for x, y in zip(a, b, strict=True))


def _same(a: Sequence[float], b: Sequence[float]) -> bool:
    return all(x == y or (math.isnan(x) and math.isnan(y)) for x, y in zip(a, b, strict=True))


@dataclass(frozen=True)
class FrontSnapshot:
    """What the front files show at one moment: rows (dicts, never changed once in the book) and the fronts' keys.
    Taken on the driver's event loop in O(n) pointer copies; turned into tables and files elsewhere."""

    metrics: tuple[str, ...]
    modes: tuple[str, ...]
    finals: tuple[dict[str, Any], ...]
    front: tuple[str, ...]  # run ids on the front of final values
    points: tuple[dict[str, Any], ...]
    steps_front: tuple[tuple[str, int], ...]  # (run id, step) on the front of every point


class FrontBook:
    """Points by (run id, step), final points by run id, the two fronts, and front membership by run id."""

    def __init__(self, metrics: Sequence[str], modes: Sequence[str], constraints: Constraints | None = None) -> None:
        self.metrics = list(metrics)
        self.modes = list(modes)
        self.constraints = constraints or Constraints()
        self.points: dict[tuple[str, int], dict[str, Any]] = {}
        self.finals: dict[str, dict[str, Any]] = {}  # completed trials only
        self.membership: dict[str, bool] = {}  # run id -> on the front of final values (its pareto tag)
        self._steps_of: dict[str, set[int]] = {}  # run id -> its steps in ``points``
        self._front = ParetoFront(modes)  # over the feasible finals, by run id
        self._steps_front = ParetoFront(modes)  # over the feasible points, by (run id, step)
        self._changed: dict[str, bool] = {}  # membership changes not yet taken (take_changes)
        self.version = 0  # counts changes, so a writer knows whether its files are current

    @property
    def front_size(self) -> int:
        return len(self._front)

    def front_points(self) -> set[tuple[str, int]]:
        """(run id, step) of the members of the front over the completed trials' final values."""
        return {(run_id, int(self.finals[run_id]["step"])) for run_id in self._front.keys()}

    def step_front_points(self) -> set[tuple[str, int]]:
        """(run id, step) of the members of the front over every measured (trial, pruning step) point."""
        return set(self._steps_front.keys())

    def front_rows(self) -> list[dict[str, Any]]:
        """The final front's point rows."""
        return [self.finals[run_id] for run_id in self._front.keys()]

    def restore(self, points: Any, statuses: Mapping[str, str], membership: Mapping[str, bool]) -> None:
        """Take back what a stopped driver recorded (``study.records.load_points`` of the study's runs, a
        DataFrame)."""
        self.membership.update(membership)
        points = points[points["run_id"].isin(statuses)].sort_values(["run_id", "step"], kind="mergesort")
        for row in points.to_dict("records"):
            self.add(row["run_id"], int(row["step"]), row)
        for run_id, rows in points.groupby("run_id"):
            if statuses[run_id] == "FINISHED":
                self._final(run_id, rows.loc[rows["step"].idxmax()].to_dict())
        for run_id in statuses:  # what the fronts say now wins over the tags a stopped driver left
            if run_id in self.finals and self.membership.get(run_id) != (run_id in self._front):
                self._set_member(run_id, run_id in self._front)
            elif run_id not in self.finals and self.membership.get(run_id):
                self._set_member(run_id, False)

    def add(self, run_id: str, step: int, row: dict[str, Any]) -> None:
        """A trial reported ``row`` at ``step`` (a point that breaks the constraints stays off the step front)."""
        key = (run_id, step)
        self.points[key] = row
        self._steps_of.setdefault(run_id, set()).add(step)
        if self.violation(run_id, row) is None:
            self._steps_front.add(key, self._values(row))
        else:
            self._steps_front.discard(key)
        self.version += 1

    def end(self, run_id: str, status: str, final: dict[str, Any] | None) -> None:
        """A trial ended with run status ``status``; ``final``: its final point when it completed, else None (it
        leaves the front). A final that breaks the constraints never enters the front."""
        for step in self._steps_of.get(run_id, ()):
            # A new row, not an edit: a snapshot taken before holds the old one unchanged.
            self.points[(run_id, step)] = {**self.points[(run_id, step)], "status": status}
        if final is not None:
            self._final(run_id, {**final, "status": status})
        else:
            self.finals.pop(run_id, None)
            self._record(self._front.discard(run_id), run_id, rebuilt=False)
            self._set_member(run_id, False)
        self.version += 1

    def violation(self, run_id: str, row: Mapping[str, Any]) -> str | None:
        """Why the point ``row`` of run ``run_id`` breaks the constraints (one line), or None."""
        if not self.constraints.declared():
            return None
        unpruned = self.points.get((run_id, 0), {}).get("val_accuracy")
        return self.constraints.violation(row, unpruned)

    def take_changes(self) -> dict[str, bool]:
        """The runs whose membership changed since the last call, with their new one (for their ``pareto`` tags)."""
        changed, self._changed = self._changed, {}
        return changed

    def snapshot(self) -> FrontSnapshot:
        return FrontSnapshot(
            metrics=tuple(self.metrics),
            modes=tuple(self.modes),
            finals=tuple(self.finals.values()),
            front=tuple(self._front.keys()),
            points=tuple(self.points.values()),
            steps_front=tuple(self._steps_front.keys()),
        )

    # --- internals ----------------------------------------------------------------------------------------------

    def _values(self, row: Mapping[str, Any]) -> tuple[float, ...]:
        return tuple(_number(row.get(metric)) for metric in self.metrics)

    def _final(self, run_id: str, final: dict[str, Any]) -> None:
        again = run_id in self.finals
        self.finals[run_id] = final
        feasible = self.violation(run_id, final) is None
        change = self._front.add(run_id, self._values(final)) if feasible else self._front.discard(run_id)
        self._record(change, run_id, rebuilt=again)
        self._set_member(run_id, change.joined)

    def _record(self, change: FrontChange, run_id: str, *, rebuilt: bool) -> None:
        if rebuilt or (change.left and not change.joined):
            # The front was rebuilt (a run measured again, or one leaving it): members it dominated may come back.
            # Rare, so look at every completed run.
            for other in self.finals:
                if other != run_id:
                    self._set_member(other, other in self._front)
            return
        for other in change.left:
            self._set_member(other, False)

    def _set_member(self, run_id: str, member: bool) -> None:
        if self.membership.get(run_id) != member:
            self.membership[run_id] = member
            self._changed[run_id] = member


def _number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan
