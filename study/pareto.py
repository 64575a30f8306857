"""Pareto fronts of study results: the computation (plain data in, plain data out) kept apart from the drawing.

``pareto_mask`` is the whole algorithm, over a list of objective vectors, as Optuna's
``_get_pareto_front_trials_by_trials``; ``front_frame`` is its one-line adapter for a DataFrame of points. The
writers draw a front (plotly HTML that works offline, matplotlib PNG) and write CSV; every file is written
atomically (``spa.files.write_atomically``), so a reader never sees half a file.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from spa.files import write_atomically
from study.names import MODES

__all__ = [
    "pareto_mask",
    "front_frame",
    "front_line",
    "write_front_csv",
    "write_front_html",
    "write_front_png",
    "front_text",
    "LOG_AXIS_SPAN",
]

# Columns shown for each point when present (besides the plotted metrics), in this order.
_IDENTITY_COLUMNS = ("run_name", "trial_id", "step", "learner", "criterion", "rank")
_BLOCK = 512
# A log axis for the second objective (learned parameters) once its values span this factor or more.
LOG_AXIS_SPAN = 10


def _check_modes(modes: Sequence[str], width: int) -> None:
    if len(modes) != width:
        raise ValueError(f"one mode per objective is needed: {len(modes)=} and {width=}")
    bad = [mode for mode in modes if mode not in MODES]
    if bad:
        raise ValueError(f"modes={list(modes)!r} hold {bad!r}; allowed: {', '.join(MODES)}")


def pareto_mask(values: Sequence[Sequence[float]], modes: Sequence[str]) -> list[bool]:
    """For each point, whether no other point dominates it.

    ``values[i][k]`` is objective k of point i, to be maximised or minimised as ``modes[k]`` says. A point is
    dominated when another is at least as good in every objective and better in one. A point with a NaN objective
    is never on the front and dominates nothing; equal points are both kept. Two objectives take a sort and sweep,
    O(n log n); any other number a pairwise check, O(n^2).
    """
    if len(values) == 0:
        return []
    widths = sorted({len(row) for row in values})
    if len(widths) != 1:
        raise ValueError(f"values must be a sequence of equal-length rows; got rows of lengths {widths}")
    points = np.asarray(values, dtype=float).reshape(len(values), widths[0])
    _check_modes(modes, points.shape[1])
    losses = points * np.array([-1.0 if mode == "max" else 1.0 for mode in modes])  # all minimised now
    valid = ~np.isnan(losses).any(axis=1)
    candidates = losses[valid]
    if candidates.shape[1] == 2:
        on_front = _front_of_two(candidates)
    else:
        on_front = ~_dominated_by_any(candidates)
    mask = np.zeros(len(points), dtype=bool)
    mask[np.flatnonzero(valid)] = on_front
    return mask.tolist()


def _front_of_two(losses: np.ndarray) -> np.ndarray:
    """Non-dominated rows of an (n, 2) array of losses without NaN, by sort and sweep: O(n log n).

    Sorted by the first loss, then the second, a row is on the front when it is the best (lowest second loss) of its
    group of equal first losses, and strictly better in the second loss than every row of a lower first loss; rows
    equal to such a row are on the front too (equal points do not dominate each other).
    """
    order = np.lexsort((losses[:, 1], losses[:, 0]))  # by loss 0, then loss 1
    first, second = losses[order, 0], losses[order, 1]
    starts = np.flatnonzero(np.r_[True, first[1:] != first[:-1]])  # where each group of equal loss-0 begins
    group_start = starts[np.searchsorted(starts, np.arange(len(order)), side="right") - 1]
    best_of_group = second[group_start]
    best_before = np.minimum.accumulate(second)  # best loss 1 among rows up to here, in sorted order
    earlier = np.where(group_start > 0, best_before[np.maximum(group_start - 1, 0)], np.inf)
    sorted_front = (second == best_of_group) & ((group_start == 0) | (second < earlier))
    on_front = np.empty(len(order), dtype=bool)
    on_front[order] = sorted_front
    return on_front


def _dominated_by_any(losses: np.ndarray) -> np.ndarray:
    """For each row of an (n, m) array of losses, whether another row dominates it: O(n^2 m), any m."""
    dominated = np.zeros(len(losses), dtype=bool)
    for start in range(0, len(losses), _BLOCK):  # blocks of rows bound the (block, n, m) comparison arrays
        block = losses[start : start + _BLOCK, None, :]  # (b, 1, m) against (1, n, m)
        no_worse = (losses[None, :, :] <= block).all(axis=2)
        better = (losses[None, :, :] < block).any(axis=2)
        dominated[start : start + _BLOCK] = (no_worse & better).any(axis=1)  # some point is <= everywhere, < once
    return dominated


def front_frame(df: pd.DataFrame, metrics: Sequence[str], modes: Sequence[str]) -> pd.DataFrame:
    """The rows of ``df`` on the front of ``metrics``, sorted by the second metric (the first if alone), then the
    first; index reset."""
    missing = [metric for metric in metrics if metric not in df.columns]
    if missing:
        raise ValueError(
            f"metrics {missing!r} are not columns of the points; columns: {', '.join(map(str, df.columns))}"
        )
    mask = pareto_mask(df[list(metrics)].to_numpy(dtype=float), modes) if len(df) else []
    front = df[np.asarray(mask, dtype=bool)] if len(df) else df.iloc[0:0]
    order = [metrics[1], metrics[0]] if len(metrics) > 1 else [metrics[0]]
    return front.sort_values(order, kind="mergesort").reset_index(drop=True)


def front_line(front: pd.DataFrame, x: str, y: str, x_mode: str) -> tuple[list[float], list[float]]:
    """The front's points ordered best-first along x, for a step line drawn horizontal-then-vertical ("hv").

    Each point's y then holds until the next point's x: the boundary of what the front dominates.
    """
    if x_mode not in MODES:
        raise ValueError(f"x_mode={x_mode!r} is not allowed; allowed: {', '.join(MODES)}")
    ordered = front.sort_values(x, ascending=x_mode == "min", kind="mergesort")
    return ordered[x].astype(float).tolist(), ordered[y].astype(float).tolist()


def write_front_csv(front: pd.DataFrame, path: str | os.PathLike[str]) -> Path:
    return write_atomically(path, lambda temporary: front.to_csv(temporary, index=False))


def _axes(metrics: Sequence[str], modes: Sequence[str]) -> tuple[str, str, str, str]:
    """(x, x_mode, y, y_mode): the first objective up the y axis, the second along x."""
    if len(metrics) < 2:
        raise ValueError(f"a front is drawn over two objectives; got {list(metrics)!r}")
    _check_modes(modes, len(metrics))
    return metrics[1], modes[1], metrics[0], modes[0]


def _log_scale(values: pd.Series) -> bool:
    # Learned parameters span orders of magnitude (adapters vs fine-tuning): use a log axis when they do.
    finite = values.astype(float).dropna()
    return len(finite) > 0 and (finite > 0).all() and finite.max() / finite.min() >= LOG_AXIS_SPAN


def _drawn(points: pd.DataFrame, step_front: pd.DataFrame | None) -> pd.DataFrame:
    return points if step_front is None or not len(step_front) else pd.concat([points, step_front], ignore_index=True)


def _groups(points: pd.DataFrame) -> pd.Series:
    if {"learner", "criterion"} <= set(points.columns):
        return points["learner"].astype(str) + " / " + points["criterion"].astype(str)
    return pd.Series("points", index=points.index)


def _hover_columns(points: pd.DataFrame, metrics: Sequence[str]) -> list[str]:
    identity = [column for column in _IDENTITY_COLUMNS if column in points.columns]
    others = [column for column in points.columns if column not in identity and column not in metrics]
    return identity + others


def _hover_text(points: pd.DataFrame, columns: Sequence[str]) -> list[str]:
    def cell(value: object) -> str:
        if isinstance(value, float):
            return "-" if math.isnan(value) else f"{value:.6g}"
        return str(value)

    return ["<br>".join(f"{column}: {cell(row[column])}" for column in columns) for _, row in points.iterrows()]


def write_front_html(
    points: pd.DataFrame,
    front: pd.DataFrame,
    metrics: Sequence[str],
    modes: Sequence[str],
    path: str | os.PathLike[str],
    title: str,
    *,
    step_front: pd.DataFrame | None = None,
) -> Path:
    """An interactive scatter of every point (coloured by learner / criterion) with the front highlighted and its
    step line; hovering shows run name, trial, step and settings. plotly.js is embedded: the file works offline.
    ``step_front``: the front over every (trial, pruning step) point, drawn as a dashed line with its points."""
    import plotly.graph_objects as go  # local: plotting libraries load only when a plot is written

    x, x_mode, y, y_mode = _axes(metrics, modes)
    hover = _hover_columns(points, metrics)
    figure = go.Figure()
    groups = _groups(points)
    for group in sorted(groups.unique()):
        members = points[groups == group]
        figure.add_trace(
            go.Scatter(
                x=members[x],
                y=members[y],
                mode="markers",
                name=str(group),
                marker={"size": 8, "opacity": 0.7},
                text=_hover_text(members, hover),
                hovertemplate=f"{x}: %{{x}}<br>{y}: %{{y}}<br>%{{text}}<extra></extra>",
            )
        )
    line_x, line_y = front_line(front, x, y, x_mode)
    figure.add_trace(
        go.Scatter(x=line_x, y=line_y, mode="lines", line_shape="hv", name="Pareto front", line={"color": "black"})
    )
    if step_front is not None and len(step_front):
        step_x, step_y = front_line(step_front, x, y, x_mode)
        figure.add_trace(
            go.Scatter(
                x=step_x,
                y=step_y,
                mode="lines+markers",
                line_shape="hv",
                name=f"front over every step ({len(step_front)})",
                line={"color": "grey", "dash": "dash"},
                marker={"size": 7, "symbol": "diamond-open", "color": "grey"},
                text=_hover_text(step_front, _hover_columns(step_front, metrics)),
                hovertemplate=f"{x}: %{{x}}<br>{y}: %{{y}}<br>%{{text}}<extra>step front</extra>",
            )
        )
    figure.add_trace(
        go.Scatter(
            x=front[x],
            y=front[y],
            mode="markers",
            name=f"on the front ({len(front)})",
            marker={"size": 13, "symbol": "circle-open", "color": "black", "line": {"width": 2}},
            text=_hover_text(front, _hover_columns(front, metrics)),
            hovertemplate=f"{x}: %{{x}}<br>{y}: %{{y}}<br>%{{text}}<extra>front</extra>",
        )
    )
    figure.update_layout(
        title=title,
        xaxis_title=f"{x} ({x_mode})",
        yaxis_title=f"{y} ({y_mode})",
        xaxis_type="log" if _log_scale(_drawn(points, step_front)[x]) else "linear",
        template="plotly_white",
    )
    return write_atomically(path, lambda temporary: figure.write_html(temporary, include_plotlyjs=True, full_html=True))


def write_front_png(
    points: pd.DataFrame,
    front: pd.DataFrame,
    metrics: Sequence[str],
    modes: Sequence[str],
    path: str | os.PathLike[str],
    title: str,
    *,
    step_front: pd.DataFrame | None = None,
) -> Path:
    """The same picture as ``write_front_html``, as a static PNG (matplotlib's Agg canvas; no display needed)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # local: see write_front_html
    from matplotlib.figure import Figure

    x, x_mode, y, y_mode = _axes(metrics, modes)
    figure = Figure(figsize=(8, 5.5), dpi=100)
    FigureCanvasAgg(figure)  # a figure outside pyplot: no global backend switched, nothing left open
    axes = figure.add_subplot()
    groups = _groups(points)
    for group in sorted(groups.unique()):
        members = points[groups == group]
        axes.scatter(members[x], members[y], s=25, alpha=0.7, label=str(group))
    line_x, line_y = front_line(front, x, y, x_mode)
    axes.plot(line_x, line_y, drawstyle="steps-post", color="black", linewidth=1.2, label="Pareto front")
    axes.scatter(front[x], front[y], s=90, facecolors="none", edgecolors="black", linewidths=1.5)
    if step_front is not None and len(step_front):
        step_x, step_y = front_line(step_front, x, y, x_mode)
        axes.plot(
            step_x,
            step_y,
            drawstyle="steps-post",
            color="grey",
            linestyle="--",
            marker="D",
            markerfacecolor="none",
            linewidth=1.0,
            label=f"front over every step ({len(step_front)})",
        )
    if _log_scale(_drawn(points, step_front)[x]):
        axes.set_xscale("log")
    axes.set_xlabel(f"{x} ({x_mode})")
    axes.set_ylabel(f"{y} ({y_mode})")
    axes.set_title(title)
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize="small")
    figure.tight_layout()
    return write_atomically(path, lambda temporary: figure.savefig(temporary, format="png"))


def _cell(value: Any, column: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return "-"
    if column in ("learned_params", "params", "flops"):
        return f"{float(value):,.0f}"
    if isinstance(value, (float, np.floating)):
        return f"{value:.4f}" if abs(value) < 10 else f"{value:,.1f}"
    return str(value)


def front_text(front: pd.DataFrame, points: pd.DataFrame, metrics: Sequence[str]) -> str:
    """The front as a fixed-width table; settings columns shown only where the trials' settings differ."""
    identity = ["run_name", "trial_id", "step", "learner", "criterion", "rank"]
    varying = [
        column
        for column in points.columns
        if column.startswith("config/")
        and column.removeprefix("config/") not in identity
        and points[column].astype(str).nunique(dropna=False) > 1
    ]
    shown_metrics = list(dict.fromkeys([*metrics, "density", "test_accuracy", "learned_params", "flops"]))
    columns = [*identity, *shown_metrics, *varying]
    cells = pd.DataFrame({c.removeprefix("config/"): [_cell(v, c) for v in front[c]] for c in columns})
    return cells.to_string(index=False)
