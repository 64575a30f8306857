"""An incremental Pareto front: points (e.g. ``(run_id, step)``) arrive one at a time; the front is kept current.

``pareto_mask`` recomputes a front from every point; a driver that adds one point per reported step would pay that
at every report. ``FrontBook.add`` updates the front with one point instead: for two objectives the front is kept
sorted by the first loss (so the second loss falls along it), a binary search finds the one member that could
dominate the new point, and the members it dominates are one contiguous run after it: O(log n + k) for k removed
(plus a list insertion, a memory move over the front). Other numbers of objectives scan the front: O(front * m).

Same rules as ``pareto_mask``: a point with a NaN objective is never on the front and dominates nothing; equal
points are both kept. A key added again with other values (a step measured again) rebuilds the book from all the
points it holds, since a point leaving the front can bring back points it dominated.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass

from study.pareto import MODES

__all__ = ["FrontBook", "FrontChange"]


@dataclass(frozen=True)
class FrontChange:
    """What one ``add`` did to the front: whether the point joined it, and the keys it pushed off."""

    joined: bool
    left: tuple[Hashable, ...] = ()


class FrontBook:
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

    def __len__(self) -> int:
        return len(self._front)

    def __contains__(self, key: Hashable) -> bool:
        return any(member_key == key for _, member_key in self._front)

    def keys(self) -> list[Hashable]:
        """The keys on the front (two objectives: best first objective first)."""
        return [key for _, key in self._front]

    def add(self, key: Hashable, values: Sequence[float]) -> FrontChange:
        """Record ``values`` (objectives, in the book's modes) for ``key``; return how the front changed."""
        if len(values) != len(self.modes):
            raise ValueError(f"one value per objective is needed: {len(values)=} and {len(self.modes)=}")
        losses = tuple(float(value) * sign for value, sign in zip(values, self._signs, strict=True))
        if key in self._points:
            if _same(self._points[key], losses):
                return FrontChange(joined=key in self)
            before = set(self.keys())
            self._points[key] = losses
            self._rebuild()
            after = set(self.keys())
            return FrontChange(joined=key in after, left=tuple(k for k in before - after if k != key))
        self._points[key] = losses
        if any(math.isnan(loss) for loss in losses):
            return FrontChange(joined=False)
        if len(losses) == 2:
            return self._add_two(key, losses)
        return self._add_any(key, losses)

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
        self._points, self._front, self._firsts = {}, [], []
        for key, losses in points:
            self.add(key, tuple(loss * sign for loss, sign in zip(losses, self._signs, strict=True)))


def _dominates(a: Sequence[float], b: Sequence[float]) -> bool:
    return all(x <= y for x, y in zip(a, b, strict=True)) and any(x < y for x, y in zip(a, b, strict=True))


def _same(a: Sequence[float], b: Sequence[float]) -> bool:
    return all(x == y or (math.isnan(x) and math.isnan(y)) for x, y in zip(a, b, strict=True))
