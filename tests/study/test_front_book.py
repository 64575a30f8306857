"""study.front_book: the incremental front against pareto_mask recomputed from scratch after every point."""

from __future__ import annotations

import math

import numpy as np
import pytest

from study.front_book import FrontBook
from study.pareto import pareto_mask

NAN, INF = math.nan, math.inf


def _expected_front(points: dict, modes: list[str]) -> set:
    keys = list(points)
    mask = pareto_mask([points[key] for key in keys], modes) if keys else []
    return {key for key, member in zip(keys, mask, strict=True) if member}


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize(
    "modes", [["max", "min"], ["min", "min"], ["max", "max"], ["max", "min", "min"], ["min"]], ids=str
)
def test_front_book_equals_recomputation_after_every_point(seed: int, modes: list[str]) -> None:
    rng = np.random.default_rng(seed)
    book, points, front = FrontBook(modes), {}, set()
    for index in range(250):
        values = tuple(float(v) for v in rng.integers(0, 9, size=len(modes)))  # many ties and duplicates
        if rng.random() < 0.03:
            values = (NAN, *values[1:])
        if rng.random() < 0.02:
            values = (INF if modes[0] == "max" else -INF, *values[1:])
        key = ("trial", index // 5, index % 5)
        change = book.add(key, values)
        points[key] = values
        expected = _expected_front(points, modes)
        assert set(book.keys()) == expected
        assert len(book) == len(expected)
        assert change.joined == (key in expected)
        assert set(change.left) == front - expected  # exactly the members pushed off
        front = expected


def test_front_book_two_objectives_sorted_by_first_objective() -> None:
    book = FrontBook(["max", "min"])
    book.extend([("a", (0.9, 100)), ("b", (0.8, 50)), ("c", (0.95, 200)), ("d", (0.7, 50)), ("e", (0.8, 50))])
    assert book.keys() == ["c", "a", "b", "e"] or book.keys() == ["c", "a", "e", "b"]
    assert "d" not in book and "a" in book


def test_front_book_a_key_measured_again_rebuilds() -> None:
    book = FrontBook(["max", "min"])
    book.extend([("a", (0.9, 100)), ("b", (0.8, 120)), ("c", (0.85, 90))])
    assert set(book.keys()) == {"a", "c"}
    change = book.add("c", (0.5, 200))  # c got worse and leaves; a still dominates b
    assert set(book.keys()) == {"a"} and not change.joined
    change = book.add("a", (0.1, 500))  # a got worse: b, which a dominated, returns (and dominates c)
    assert set(book.keys()) == {"b"} and not change.joined and change.left == ()
    assert book.add("b", (0.8, 120)).joined  # same values again: nothing changes


def test_front_book_refuses_wrong_widths_and_modes() -> None:
    with pytest.raises(ValueError, match="len"):
        FrontBook(["max", "min"]).add("a", (1.0,))
    with pytest.raises(ValueError, match="modes"):
        FrontBook(["maximize"])
