"""The front files of a running study, written from snapshots of its front book (``study.front.FrontSnapshot``):
``pareto_front.csv/.html/.png`` (the front of the completed trials' final values, over every completed trial) and
``pareto_front_steps.csv`` (the front of every measured (trial, pruning step) point).

Drawing the HTML and PNG of a large study takes seconds, so ``FrontWriter`` writes them on a background thread, at
most every ``WRITE_INTERVAL_S`` and always once at the study's end: the driver's event loop never waits for a plot.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from pathlib import Path
from typing import Any

from study.front import FrontSnapshot

__all__ = ["FRONT_FILES", "WRITE_INTERVAL_S", "FrontWriter", "write_front_files"]

logger = logging.getLogger(__name__)

FRONT_FILES = ("pareto_front.csv", "pareto_front.html", "pareto_front.png", "pareto_front_steps.csv")
# The front files are rewritten at most this often while a study runs (and always once at its end): drawing the HTML
# and PNG of a large study takes seconds, which the driver's event loop must not wait for at every trial end.
WRITE_INTERVAL_S = 5.0


def write_front_files(snapshot: FrontSnapshot, directory: Path, study_name: str) -> list[Path]:
    """Write the front files of ``snapshot`` into ``directory`` (the plots once a trial completed); the paths."""
    from study.pareto import write_front_csv, write_front_html, write_front_png
    from study.records import points_frame

    metrics, modes = list(snapshot.metrics), list(snapshot.modes)
    finals = points_frame(snapshot.finals)
    front = _front_rows(finals, set(snapshot.front), metrics, key=lambda run_id, step: run_id)
    points = points_frame(snapshot.points)
    steps_front = _front_rows(points, set(snapshot.steps_front), metrics, key=lambda run_id, step: (run_id, int(step)))
    paths = [
        write_front_csv(front, directory / "pareto_front.csv"),
        write_front_csv(steps_front, directory / "pareto_front_steps.csv"),
    ]
    if len(metrics) >= 2 and len(finals):
        title = f"{study_name}: {len(front)} of {len(finals)} completed trials on the front"
        args = (finals, front, metrics, modes)
        paths.append(write_front_html(*args, directory / "pareto_front.html", title, step_front=steps_front))
        paths.append(write_front_png(*args, directory / "pareto_front.png", title, step_front=steps_front))
    return paths


def _front_rows(frame: Any, keys: set, metrics: Sequence[str], *, key: Callable[[str, int], Hashable]) -> Any:
    """The rows of ``frame`` whose key (of run id and step) is in ``keys``, ordered as ``study.pareto.front_frame``
    orders a front."""
    if not len(frame):
        return frame
    mask = [key(run_id, step) in keys for run_id, step in zip(frame["run_id"], frame["step"], strict=True)]
    order = [metrics[1], metrics[0]] if len(metrics) > 1 else [metrics[0]]
    return frame[mask].sort_values(order, kind="mergesort").reset_index(drop=True)


class FrontWriter:
    """Writes the front files off the driver's event loop: ``request`` hands over a snapshot (cheap) and returns; a
    background thread writes the latest one, at most every ``interval`` seconds (requests in between coalesce);
    ``close`` writes the final files before it returns. ``written`` is called with the paths after each write (in
    the writing thread), e.g. to log them as artifacts."""

    def __init__(
        self,
        directory: Path,
        study_name: str,
        *,
        interval: float = WRITE_INTERVAL_S,
        written: Callable[[list[Path]], None] | None = None,
    ) -> None:
        self.directory = Path(directory)
        self.study_name = study_name
        self.interval = interval
        self.written = written
        self.writes = 0  # files written so far (each time the set of front files)
        self._pending: FrontSnapshot | None = None
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closing = threading.Event()
        self._last = -math.inf  # time.monotonic() of the last write
        self._thread = threading.Thread(target=self._run, name="front-writer", daemon=True)
        self._thread.start()

    def request(self, snapshot: FrontSnapshot) -> None:
        with self._lock:
            self._pending = snapshot
        self._wake.set()

    def close(self, snapshot: FrontSnapshot | None = None) -> None:
        """Stop the thread and write ``snapshot`` (else the one pending, if any) now: the final files."""
        if snapshot is not None:
            with self._lock:
                self._pending = snapshot
        self._closing.set()
        self._wake.set()
        self._thread.join()
        self._write_pending()

    def _run(self) -> None:
        while not self._closing.is_set():
            self._wake.wait()
            if self._closing.is_set():
                return  # close() writes what is pending
            # Coalesce: requests arriving until the interval has passed are written once, as the latest.
            self._closing.wait(max(0.0, self._last + self.interval - time.monotonic()))
            if self._closing.is_set():
                return
            self._wake.clear()
            self._write_pending()

    def _write_pending(self) -> None:
        with self._lock:
            snapshot, self._pending = self._pending, None
        if snapshot is None:
            return
        self._last = time.monotonic()
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            paths = write_front_files(snapshot, self.directory, self.study_name)
            self.writes += 1
            if self.written is not None:
                self.written(paths)
        except Exception:  # bookkeeping must never end the study; say so loudly instead
            logger.exception("could not write the front files of study %r", self.study_name)
