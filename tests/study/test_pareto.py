"""study.pareto: the front against hand-made cases and against Optuna's own multi-objective front; the writers."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest

from study.pareto import (
    front_frame,
    front_line,
    pareto_mask,
    write_front_csv,
    write_front_html,
    write_front_png,
)

optuna.logging.set_verbosity(optuna.logging.WARNING)
NAN, INF = math.nan, math.inf

CASES = {
    "accuracy up, parameters down; ties, duplicates, NaN": (
        [(0.9, 100), (0.8, 50), (0.85, 100), (0.9, 100), (0.7, 50), (NAN, 10), (0.95, NAN), (0.9, 120)],
        ["max", "min"],
        [True, True, False, True, False, False, False, False],
    ),
    "both minimised": ([(1, 2), (2, 1), (2, 2), (0, 3), (0, 4)], ["min", "min"], [True, True, False, True, False]),
    "both maximised": ([(1, 2), (2, 1), (2, 2), (0, 3), (0, 4)], ["max", "max"], [False, False, True, False, True]),
    "min then max": ([(1, 2), (2, 1), (2, 2), (0, 3), (0, 4)], ["min", "max"], [False, False, False, False, True]),
    "three objectives": (
        [(1, 1, 1), (1, 1, 2), (2, 0, 1), (0, 2, 0), (1, 2, 1)],
        ["max", "min", "max"],
        [False, True, True, False, False],
    ),
    "one objective, tied best kept": ([(3,), (5,), (5,), (NAN,)], ["max"], [False, True, True, False]),
    "infinities compare": ([(INF, 1), (1, 1), (1, -INF)], ["max", "min"], [True, False, True]),
    "all NaN": ([(NAN, 1), (1, NAN)], ["max", "min"], [False, False]),
    "nothing": ([], ["max", "min"], []),
}


@pytest.mark.parametrize("case", list(CASES))
def test_pareto_mask_hand_made(case: str) -> None:
    values, modes, expected = CASES[case]
    assert pareto_mask(values, modes) == expected


@pytest.mark.parametrize(
    ("values", "modes", "message"),
    [
        ([(1, 2)], ["max"], "len(modes)=1 and width=2"),
        ([(1, 2)], ["max", "maximize"], "allowed: max, min"),
        ([(1, 2), (1,)], ["max", "min"], "equal-length rows"),
    ],
)
def test_pareto_mask_rejects_bad_input(values: list, modes: list, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        pareto_mask(values, modes)
    assert message in str(caught.value)


def _optuna_front(values: np.ndarray, modes: list[str]) -> list[bool]:
    study = optuna.create_study(directions=["maximize" if mode == "max" else "minimize" for mode in modes])
    study.add_trials([optuna.trial.create_trial(values=list(map(float, row))) for row in values])
    on_front = {trial.number for trial in study.best_trials}
    return [index in on_front for index in range(len(values))]


@pytest.mark.parametrize(
    ("modes", "grid"),
    [
        (["max", "min"], None),
        (["min", "max", "max"], None),
        (["max", "min"], 4),  # a coarse grid: many ties and duplicates
        (["min", "min", "max"], 3),
    ],
)
@pytest.mark.parametrize("seed", [0, 1])
def test_pareto_mask_matches_optuna(modes: list[str], grid: int | None, seed: int) -> None:
    rng = np.random.default_rng(seed)
    values = rng.random((50, len(modes)))
    if grid is not None:
        values = np.floor(values * grid)
    mask = pareto_mask(values.tolist(), modes)
    assert mask == _optuna_front(values, modes)
    assert 0 < sum(mask) < 50


def test_pareto_mask_handles_many_points_in_blocks() -> None:
    values = np.random.default_rng(3).random((1500, 2))  # more than one block of rows
    expected = _optuna_front(values, ["max", "min"])
    assert pareto_mask(values, ["max", "min"]) == expected


def _points() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "run_name": ["a", "b", "c", "d", "e", "f"],
            "trial_id": ["t1", "t2", "t3", "t4", "t5", "t6"],
            "step": [2, 2, 1, 3, 2, 0],
            "learner": ["splora", "splora", "finetune", "finetune", "splora", "finetune"],
            "criterion": ["lrp", "weight", "lrp", "grad", "lrp", "grad"],
            "lr": [0.01, 0.02, 0.001, 0.002, 0.03, 0.005],
            "val_accuracy": [0.90, 0.80, 0.95, 0.85, NAN, 0.90],
            "learned_params": [2_000.0, 1_000.0, 50_000.0, 50_000.0, 10.0, 20_000.0],
        }
    )


def test_front_frame_keeps_front_rows_sorted_by_the_second_metric() -> None:
    front = front_frame(_points(), ["val_accuracy", "learned_params"], ["max", "min"])
    assert front["run_name"].tolist() == ["b", "a", "c"]
    assert front.index.tolist() == [0, 1, 2]
    assert front.columns.tolist() == _points().columns.tolist()
    with pytest.raises(ValueError, match=r"metrics \['flops'\] are not columns"):
        front_frame(_points(), ["val_accuracy", "flops"], ["max", "min"])
    assert front_frame(_points().iloc[0:0], ["val_accuracy", "learned_params"], ["max", "min"]).empty


def test_front_line_orders_best_first_along_x() -> None:
    front = front_frame(_points(), ["val_accuracy", "learned_params"], ["max", "min"])
    assert front_line(front, "learned_params", "val_accuracy", "min") == ([1_000, 2_000, 50_000], [0.80, 0.90, 0.95])
    assert front_line(front, "learned_params", "val_accuracy", "max") == ([50_000, 2_000, 1_000], [0.95, 0.90, 0.80])


def test_write_front_csv_round_trips(tmp_path: Path) -> None:
    front = front_frame(_points(), ["val_accuracy", "learned_params"], ["max", "min"])
    path = write_front_csv(front, tmp_path / "sub" / "front.csv")
    pd.testing.assert_frame_equal(pd.read_csv(path), front)
    assert sorted(p.name for p in path.parent.iterdir()) == ["front.csv"]  # no temporary file left


def test_write_front_html_and_png(tmp_path: Path) -> None:
    points = _points()
    metrics, modes = ["val_accuracy", "learned_params"], ["max", "min"]
    front = front_frame(points, metrics, modes)
    html = write_front_html(points, front, metrics, modes, tmp_path / "front.html", title="digits study")
    png = write_front_png(points, front, metrics, modes, tmp_path / "front.png", title="digits study")
    text = html.read_text(encoding="utf-8")
    assert html.stat().st_size > 1_000_000  # plotly.js embedded: works offline
    assert "Plotly.newPlot" in text and "digits study" in text and "Pareto front" in text
    for name in points["run_name"]:
        assert f"run_name: {name}" in text  # hover text names every run
    assert "trial_id: t2" in text and "lr: 0.02" in text
    data = png.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 10_000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["front.html", "front.png"]
    with pytest.raises(ValueError, match="two objectives"):
        write_front_png(points, front, ["val_accuracy"], ["max"], tmp_path / "one.png", title="x")


def _pairwise_mask(values: np.ndarray, modes: list[str]) -> list[bool]:
    """The O(n^2) definition, written out: what pareto_mask computed before its two-objective sort and sweep."""
    losses = values * np.array([-1.0 if mode == "max" else 1.0 for mode in modes])
    valid = ~np.isnan(losses).any(axis=1)
    mask = []
    for i, row in enumerate(losses):
        if not valid[i]:
            mask.append(False)
            continue
        others = losses[valid]
        dominated = ((others <= row).all(axis=1) & (others < row).any(axis=1)).any()
        mask.append(not dominated)
    return mask


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("modes", [["max", "min"], ["min", "min"], ["max", "max"], ["min", "max"]])
def test_pareto_mask_two_objectives_equals_pairwise_check(seed: int, modes: list[str]) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 300))
    # Few distinct values: many ties in one objective, exact duplicates; some NaN and infinities.
    values = rng.integers(0, 12, size=(n, 2)).astype(float)
    if seed % 2:
        values[:, 1] = rng.normal(size=n).round(1)
    values[rng.random(n) < 0.03, 0] = NAN
    values[rng.random(n) < 0.03, 1] = NAN
    values[rng.random(n) < 0.02, int(rng.integers(2))] = INF
    values[rng.random(n) < 0.02, int(rng.integers(2))] = -INF
    values = np.vstack([values, values[: n // 5]])  # duplicated rows
    assert pareto_mask(values, modes) == _pairwise_mask(values, modes)


def test_pareto_mask_two_objectives_continuous_values_equal_pairwise_check() -> None:
    rng = np.random.default_rng(7)
    values = rng.normal(size=(2000, 2))
    assert pareto_mask(values, ["max", "min"]) == _pairwise_mask(values, ["max", "min"])
