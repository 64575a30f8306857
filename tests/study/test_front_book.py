"""study.front: the incremental front (ParetoFront) against pareto_mask recomputed after every point, and the
FrontBook and FrontWriter the tracker uses."""

from __future__ import annotations

import math
import time

import numpy as np
import pandas as pd
import pytest

from study.constraints import Constraints
from study.front import FrontBook, FrontChange, ParetoFront
from study.front_files import FRONT_FILES, FrontWriter, write_front_files
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
    book, points, front = ParetoFront(modes), {}, set()
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
    book = ParetoFront(["max", "min"])
    book.extend([("a", (0.9, 100)), ("b", (0.8, 50)), ("c", (0.95, 200)), ("d", (0.7, 50)), ("e", (0.8, 50))])
    assert book.keys() == ["c", "a", "b", "e"] or book.keys() == ["c", "a", "e", "b"]
    assert "d" not in book and "a" in book


def test_front_book_a_key_measured_again_rebuilds() -> None:
    book = ParetoFront(["max", "min"])
    book.extend([("a", (0.9, 100)), ("b", (0.8, 120)), ("c", (0.85, 90))])
    assert set(book.keys()) == {"a", "c"}
    change = book.add("c", (0.5, 200))  # c got worse and leaves; a still dominates b
    assert set(book.keys()) == {"a"} and not change.joined
    change = book.add("a", (0.1, 500))  # a got worse: b, which a dominated, returns (and dominates c)
    assert set(book.keys()) == {"b"} and not change.joined and change.left == ()
    assert book.add("b", (0.8, 120)).joined  # same values again: nothing changes


def test_front_book_refuses_wrong_widths_and_modes() -> None:
    with pytest.raises(ValueError, match="len"):
        ParetoFront(["max", "min"]).add("a", (1.0,))
    with pytest.raises(ValueError, match="modes"):
        ParetoFront(["maximize"])


def test_a_discarded_member_brings_back_the_points_it_dominated() -> None:
    front = ParetoFront(["max", "min"])
    front.extend([("a", (0.9, 100)), ("b", (0.8, 120)), ("c", (0.85, 90))])
    assert front.discard("c") == FrontChange(joined=False, left=("c",))
    assert set(front.keys()) == {"a"}
    assert front.discard("a").left == ("a",) and set(front.keys()) == {"b"}
    assert front.discard("nobody") == FrontChange(joined=False)


def _row(run_id: str, step: int, accuracy: float, params: float) -> dict:
    return {"run_id": run_id, "step": step, "val_accuracy": accuracy, "learned_params": params, "status": "RUNNING"}


def test_the_book_keeps_membership_as_a_recomputation_would() -> None:
    """Random trial ends (complete, below the accuracy floor, pruned) in random order: after each, the membership
    the book reports equals pareto_mask over the completed finals that keep the constraint, and take_changes says
    exactly what changed."""
    rng = np.random.default_rng(3)
    constraints = Constraints(min_val_accuracy=0.2)
    book, finals, tags = FrontBook(["val_accuracy", "learned_params"], ["max", "min"], constraints), {}, {}
    for index in range(120):
        run_id = f"r{index}"
        accuracy, params = float(rng.integers(0, 8)) / 8, float(rng.integers(1, 9))
        book.add(run_id, 0, _row(run_id, 0, accuracy, params))
        if rng.random() < 0.15:
            book.end(run_id, "KILLED", None)
        else:
            book.end(run_id, "FINISHED", _row(run_id, 0, accuracy, params))
            if accuracy >= 0.2:
                finals[run_id] = (accuracy, params)
        tags.update(book.take_changes())
        expected = _expected_front(finals, ["max", "min"])
        assert {run for run, member in tags.items() if member} == expected
        assert book.front_size == len(expected)
        assert set(book.membership) >= set(finals)


def test_the_step_front_leaves_out_infeasible_points_and_the_files_show_both_fronts(tmp_path) -> None:
    """b's step 1 is a better trade-off than a's, but below 90% of b's own unpruned accuracy: on no front."""
    constraints = Constraints(min_val_accuracy_relative=0.9)
    book = FrontBook(["val_accuracy", "learned_params"], ["max", "min"], constraints)
    book.add("a", 0, _row("a", 0, 0.9, 100))
    book.add("a", 1, _row("a", 1, 0.85, 50))
    book.add("b", 0, _row("b", 0, 0.99, 100))
    book.add("b", 1, _row("b", 1, 0.88, 40))  # 0.88 < 0.9 x 0.99
    assert book.violation("b", book.points[("b", 1)]) == (
        "val_accuracy 0.88 < min_val_accuracy_relative 0.9 x 0.99 = 0.891"
    )
    book.end("a", "FINISHED", _row("a", 1, 0.85, 50))
    book.end("b", "FINISHED", _row("b", 1, 0.88, 40))
    assert book.take_changes() == {"a": True, "b": False}
    paths = write_front_files(book.snapshot(), tmp_path, "s")
    assert sorted(path.name for path in paths) == sorted(FRONT_FILES)
    steps = pd.read_csv(tmp_path / "pareto_front_steps.csv")
    assert list(zip(steps["run_id"], steps["step"], strict=True)) == [("a", 1), ("b", 0)]
    assert set(steps["status"]) == {"FINISHED"}
    assert list(pd.read_csv(tmp_path / "pareto_front.csv")["run_id"]) == ["a"]


def test_the_writer_coalesces_requests_and_close_writes_the_last_state(tmp_path) -> None:
    book = FrontBook(["val_accuracy", "learned_params"], ["max", "min"])
    written: list[list[str]] = []
    writer = FrontWriter(tmp_path, "s", interval=30.0, written=lambda paths: written.append([p.name for p in paths]))
    book.add("a", 0, _row("a", 0, 0.9, 100))
    book.end("a", "FINISHED", _row("a", 0, 0.9, 100))
    started = time.perf_counter()
    writer.request(book.snapshot())
    for index in range(50):  # none of these waits for a write
        run_id = f"r{index}"
        book.add(run_id, 0, _row(run_id, 0, 0.5 + index / 100, 100 + index))
        book.end(run_id, "FINISHED", _row(run_id, 0, 0.5 + index / 100, 100 + index))
        writer.request(book.snapshot())
    assert time.perf_counter() - started < 1.0
    deadline = time.perf_counter() + 60
    while writer.writes < 1 and time.perf_counter() < deadline:
        time.sleep(0.05)
    assert writer.writes == 1  # the requests that came during the first write wait for the interval, coalesced
    book.add("z", 0, _row("z", 0, 0.999, 1000))
    book.end("z", "FINISHED", _row("z", 0, 0.999, 1000))
    writer.request(book.snapshot())
    time.sleep(0.2)
    assert writer.writes == 1
    writer.close()
    assert writer.writes == 2 and len(written) == 2  # the final files, at close, of the last state
    front = pd.read_csv(tmp_path / "pareto_front.csv")
    assert set(front["run_id"]) == {"a", "z", *(f"r{index}" for index in range(41, 50))}
