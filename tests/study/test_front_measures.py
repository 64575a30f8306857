"""study.front_measures: normalisation, exact 2-D hypervolume and the knee, against hand computations."""

from __future__ import annotations

import math
import random

import pytest

from study.front_measures import (
    Member,
    Reference,
    alias_targets,
    front_hypervolume,
    hypervolume,
    knee_index,
    normalised,
)

REFERENCE = Reference(chance_accuracy=0.2, learned_params=1e6)  # 5 classes; ln(1e6) = 6 ln(10)


@pytest.mark.parametrize(
    ("accuracy", "learned", "expected"),
    [
        (0.2, 1e6, (0.0, 0.0)),  # the reference point itself
        (1.0, 1.0, (1.0, 1.0)),  # perfect with a single learned parameter
        (0.6, 1e3, (0.5, 0.5)),  # (0.6-0.2)/0.8; ln(1e3)/ln(1e6)
        (0.84, 1e4, (0.8, 1 / 3)),  # ln(1e2)/ln(1e6)
        (0.1, 2e6, (0.0, 0.0)),  # worse than chance, more than the reference: clipped
        (math.nan, 10.0, (0.0, 0.0)),
    ],
)
def test_normalised_by_hand(accuracy: float, learned: float, expected: tuple[float, float]) -> None:
    assert normalised(accuracy, learned, REFERENCE) == pytest.approx(expected)


HYPERVOLUMES = {
    "nothing": ([], 0.0),
    "one point: its rectangle": ([(0.5, 0.4)], 0.2),
    # Staircase (0.9,0.2) (0.6,0.5) (0.3,0.8): 0.9*0.2 + 0.6*0.3 + 0.3*0.3 = 0.18 + 0.18 + 0.09.
    "staircase": ([(0.3, 0.8), (0.9, 0.2), (0.6, 0.5)], 0.45),
    "dominated and repeated points add nothing": ([(0.9, 0.2), (0.6, 0.5), (0.3, 0.8), (0.5, 0.4), (0.6, 0.5)], 0.45),
    "equal accuracy, the higher one counts": ([(0.5, 0.2), (0.5, 0.6)], 0.3),
    "the utopia point fills the square": ([(1.0, 1.0), (0.5, 0.5)], 1.0),
}


@pytest.mark.parametrize("case", HYPERVOLUMES)
def test_hypervolume_by_hand(case: str) -> None:
    points, expected = HYPERVOLUMES[case]
    assert hypervolume(points) == pytest.approx(expected)


def test_hypervolume_matches_a_grid_count() -> None:
    """An independent oracle: the fraction of a fine grid's cell centres that some point dominates."""
    rng = random.Random(0)
    points = [(rng.random(), rng.random()) for _ in range(12)]
    n = 400
    centres = [(i + 0.5) / n for i in range(n)]
    covered = sum(1 for x in centres for y in centres if any(x <= px and y <= py for px, py in points))
    assert hypervolume(points) == pytest.approx(covered / n**2, abs=2 / n)


def test_front_hypervolume_normalises_first() -> None:
    members = [Member("a", 0.6, 1e3), Member("b", 0.84, 1e4)]
    # Normalised (0.5, 0.5) and (0.8, 1/3): 0.8 * 1/3 + 0.5 * (0.5 - 1/3).
    assert front_hypervolume(members, REFERENCE) == pytest.approx(0.8 / 3 + 0.5 / 6)


def test_the_knee_is_the_member_farthest_above_the_line_through_the_extremes() -> None:
    # Extremes (1, 0) and (0, 1): the line x + y = 1. Heights: (0.7, 0.6) -> 0.3/sqrt2, (0.5, 0.7) -> 0.2/sqrt2.
    points = [(1.0, 0.0), (0.5, 0.7), (0.7, 0.6), (0.0, 1.0)]
    assert knee_index(points) == 2


def test_knee_of_one_or_two_members() -> None:
    assert knee_index([(0.3, 0.3)]) == 0
    assert knee_index([(0.9, 0.1), (0.4, 0.7)]) == 1  # no bend: the larger sum
    with pytest.raises(ValueError, match="at least one point"):
        knee_index([])


def test_aliases_name_the_right_members() -> None:
    members = [
        Member("accurate", 0.95, 5e5),
        Member("balanced", 0.90, 2e3),
        Member("tiny-but-useless", 0.20, 10),  # at chance: not "fewest learned params"
        Member("small", 0.60, 1e3),
    ]
    targets = alias_targets(members, REFERENCE)
    assert targets["best-accuracy"] == "accurate"
    assert targets["fewest-learned-params"] == "small"
    # Normalised: accurate (0.9375, 0.05), balanced (0.875, 0.45), tiny (0, 0.83), small (0.5, 0.5):
    # extremes accurate and tiny; balanced is farthest above the line joining them.
    assert targets["knee"] == "balanced"
    assert alias_targets([], REFERENCE) == {}


def test_reference_refuses_impossible_values() -> None:
    with pytest.raises(ValueError, match="chance_accuracy"):
        Reference(1.0, 100)
    with pytest.raises(ValueError, match="learned_params"):
        Reference(0.1, 1)
    assert Reference.for_task(10, 1000) == Reference(0.1, 1000.0)
