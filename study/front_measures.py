"""How good a (val_accuracy, learned_params) front is, as one comparable number, and which members to show first.

Plain data in, plain data out: no MLflow, no Ray.

**Normalised objectives.** Both objectives become "more is better" scores in [0, 1], against a fixed reference
point that depends only on the task and the architecture, so hypervolumes of different studies compare:

- accuracy: ``(accuracy - chance) / (1 - chance)`` with ``chance = 1 / num_classes``: 0 at chance, 1 at perfect;
- learned parameters: ``ln(reference / learned) / ln(reference)`` where ``reference`` is the learned parameters of
  the unpruned, fully fine-tuned network (all its parameters: ResNet-18 with 5 classes learns 11,179,077): 0 for
  the unpruned fine-tuned network, 1 for a single learned parameter. A log scale because the learners differ by
  orders of magnitude (SPLoRA learns ~2% of what fine-tuning does); on a linear scale every SPLoRA model would
  sit at 0.98-1.0 and the front's shape among them would not count.

Points worse than the reference in an objective are clipped to 0 there (they dominate nothing).

**Hypervolume** is the area of the normalised square dominated by the front, with the reference point at the
origin: exact for two objectives (sort by accuracy, sum the rectangles' new strips), in [0, 1].

**Knee**: the front member farthest above the straight line joining the front's two extremes (most accurate,
fewest learned parameters) in the normalised square, i.e. where giving up parameters stops being cheap in
accuracy. With one or two members (no bend) it is the member with the largest normalised sum.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

__all__ = [
    "Reference",
    "Member",
    "ALIASES",
    "normalised",
    "hypervolume",
    "front_hypervolume",
    "knee_index",
    "alias_targets",
]

# Registry aliases kept pointing at front members (study.registry).
ALIASES = ("best-accuracy", "fewest-learned-params", "knee")


@dataclass(frozen=True)
class Reference:
    """The fixed reference point: chance accuracy and the unpruned fine-tuned network's learned parameters."""

    chance_accuracy: float
    learned_params: float

    def __post_init__(self) -> None:
        if not (0 <= self.chance_accuracy < 1):
            raise ValueError(f"chance_accuracy must be in [0, 1); got {self.chance_accuracy=}")
        if not (math.isfinite(self.learned_params) and self.learned_params > 1):
            raise ValueError(f"learned_params must be a finite number > 1; got {self.learned_params=}")

    @classmethod
    def for_task(cls, num_classes: int, unpruned_params: int) -> Reference:
        return cls(1.0 / num_classes, float(unpruned_params))


@dataclass(frozen=True)
class Member:
    """A front member: any hashable key (a model id, a (run, step) pair) and its two objectives."""

    key: Hashable
    val_accuracy: float
    learned_params: float


def _clip(value: float) -> float:
    return min(1.0, max(0.0, value))


def normalised(accuracy: float, learned_params: float, reference: Reference) -> tuple[float, float]:
    """(accuracy score, parameter score), both in [0, 1] and to be maximised; see the module docstring."""
    if not (math.isfinite(accuracy) and math.isfinite(learned_params)):
        return (0.0, 0.0)
    chance = reference.chance_accuracy
    accuracy_score = _clip((accuracy - chance) / (1 - chance))
    params_score = _clip(
        math.log(reference.learned_params / max(learned_params, 1.0)) / math.log(reference.learned_params)
    )
    return (accuracy_score, params_score)


def hypervolume(points: Sequence[tuple[float, float]]) -> float:
    """Area of [0, 1]^2 dominated by ``points`` (both coordinates maximised, reference at the origin). Exact.

    Dominated and repeated points add nothing, so any set of points may be given, not only a front.
    """
    area, best_y = 0.0, 0.0
    # Descending x: each point adds the strip between the highest y so far and its own y, x wide.
    for x, y in sorted(points, key=lambda point: (-point[0], -point[1])):
        if y > best_y:
            area += x * (y - best_y)
            best_y = y
    return area


def front_hypervolume(members: Sequence[Member], reference: Reference) -> float:
    """The normalised hypervolume of the members' (val_accuracy, learned_params), in [0, 1]."""
    return hypervolume([normalised(m.val_accuracy, m.learned_params, reference) for m in members])


def knee_index(points: Sequence[tuple[float, float]]) -> int:
    """Index of the knee of normalised front ``points`` (maximised); see the module docstring. Raises on no point."""
    if not points:
        raise ValueError("a knee needs at least one point; got none")
    by_x = max(range(len(points)), key=lambda i: (points[i][0], points[i][1]))  # most accurate
    by_y = max(range(len(points)), key=lambda i: (points[i][1], points[i][0]))  # fewest learned parameters
    (x1, y1), (x2, y2) = points[by_x], points[by_y]
    length = math.hypot(x2 - x1, y2 - y1)

    def height(i: int) -> float:
        # Signed distance from the line through the extremes, positive towards (1, 1) (cross product sign).
        x, y = points[i]
        return ((x2 - x1) * (y - y1) - (y2 - y1) * (x - x1)) / length if length > 0 else 0.0

    orientation = 1.0 if (x2 - x1) * (1 - y1) - (y2 - y1) * (1 - x1) >= 0 else -1.0
    return max(range(len(points)), key=lambda i: (orientation * height(i), sum(points[i]), points[i][0]))


def alias_targets(members: Sequence[Member], reference: Reference) -> dict[str, Hashable]:
    """Alias -> key of the member it names, over the front ``members`` (empty: no aliases).

    ``best-accuracy``: highest val_accuracy (ties: fewer learned parameters). ``fewest-learned-params``: fewest
    learned parameters among the members better than chance (all members if none is; ties: higher accuracy), so
    it never names a model that learned nothing. ``knee``: see ``knee_index``.
    """
    finite = [m for m in members if math.isfinite(m.val_accuracy) and math.isfinite(m.learned_params)]
    if not finite:
        return {}
    best = max(finite, key=lambda m: (m.val_accuracy, -m.learned_params))
    useful = [m for m in finite if m.val_accuracy > reference.chance_accuracy] or finite
    fewest = min(useful, key=lambda m: (m.learned_params, -m.val_accuracy))
    points = [normalised(m.val_accuracy, m.learned_params, reference) for m in finite]
    knee = finite[knee_index(points)]
    return {"best-accuracy": best.key, "fewest-learned-params": fewest.key, "knee": knee.key}
