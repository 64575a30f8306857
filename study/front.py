"""The front book of a running study: every point trials reported, each completed trial's final point, and which
trials are on the Pareto front; it writes the front files. Plain data: no MLflow, Ray or torch (``study.tracking``
tells it what happened and records what it says in MLflow).

Two fronts are kept: over the completed trials' final values (``pareto_front.csv/.html/.png``; membership is the
``pareto`` tag of a trial's run) and over every measured (trial, pruning step) point (``pareto_front_steps.csv``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from study.pareto import front_frame, write_front_csv, write_front_html, write_front_png
from study.records import points_frame

__all__ = ["FRONT_FILES", "FrontBook"]

FRONT_FILES = ("pareto_front.csv", "pareto_front.html", "pareto_front.png", "pareto_front_steps.csv")


class FrontBook:
    """Points by (run id, step), final points by run id, and front membership by run id."""

    def __init__(self, metrics: Sequence[str], modes: Sequence[str]) -> None:
        self.metrics = list(metrics)
        self.modes = list(modes)
        self.points: dict[tuple[str, int], dict[str, Any]] = {}
        self.finals: dict[str, dict[str, Any]] = {}  # completed trials only
        self.membership: dict[str, bool] = {}  # run id -> on the front of final values (its pareto tag)

    @property
    def front_size(self) -> int:
        return sum(self.membership.values())

    def restore(self, points: pd.DataFrame, statuses: Mapping[str, str], membership: Mapping[str, bool]) -> None:
        """Take back what a stopped driver recorded (``study.records.load_points`` of the study's runs)."""
        self.membership.update(membership)
        points = points[points["run_id"].isin(statuses)]
        for row in points.to_dict("records"):
            self.points[(row["run_id"], int(row["step"]))] = row
        for run_id, rows in points.groupby("run_id"):
            if statuses[run_id] == "FINISHED":
                self.finals[run_id] = rows.loc[rows["step"].idxmax()].to_dict()

    def add(self, run_id: str, step: int, row: dict[str, Any]) -> None:
        self.points[(run_id, step)] = row

    def end(self, run_id: str, status: str, final: dict[str, Any] | None) -> None:
        """A trial ended with run status ``status``; ``final``: its final point when it completed, else None (it
        leaves the front)."""
        for (point_run, _), row in self.points.items():
            if point_run == run_id:
                row["status"] = status
        if final is not None:
            self.finals[run_id] = final
        else:
            self.finals.pop(run_id, None)
            self.membership[run_id] = False

    def refresh(self, directory: Path, study_name: str) -> tuple[dict[str, bool], list[Path]]:
        """Recompute both fronts and write the front files present now into ``directory`` (the plots once a trial
        completed). Returns the runs whose membership changed (and their new one), and the files written."""
        finals = points_frame(self.finals.values())
        front = front_frame(finals, self.metrics, self.modes)
        on_front = set(front["run_id"])
        changed = {}
        for run_id in finals["run_id"]:
            member = run_id in on_front
            if self.membership.get(run_id) != member:
                changed[run_id] = self.membership[run_id] = member
        points = points_frame(self.points.values())
        paths = [
            write_front_csv(front, directory / "pareto_front.csv"),
            write_front_csv(front_frame(points, self.metrics, self.modes), directory / "pareto_front_steps.csv"),
        ]
        if len(self.metrics) >= 2 and len(finals):
            title = f"{study_name}: {len(front)} of {len(finals)} completed trials on the front"
            args = (finals, front, self.metrics, self.modes)
            paths.append(write_front_html(*args, directory / "pareto_front.html", title))
            paths.append(write_front_png(*args, directory / "pareto_front.png", title))
        return changed, paths
