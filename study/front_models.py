"""The logged models of a running study's front members, kept in step with its two fronts (driver side).

Tune keeps one checkpoint per trial (the latest), so a (trial, pruning step) point that may become a front member
is copied when its checkpoint arrives (``keep``): a point on the front over every step, or a trial's final step.
When a trial ends (``update``), every member of either front without a model gets one (``study.logged_models``,
rebuilt from the copy), every model's ``on_front`` / ``on_step_front`` tags are set to where its point stands now
(a model whose point left both fronts stays logged), and copies that can no longer become members are deleted.
With ``register_model`` the final front's models are registered and the aliases moved (``study.registry``).

Rebuilding, exporting and uploading a model takes seconds of CPU, so it runs on one background thread of the driver
(torch limited to one thread there): Tune's event loop, which hands the running trials their next step, is never
held up by it. ``finish`` waits for the models still queued and settles their tags once more.

A resumed driver finds the study's models again by their ``study_id`` tag.
"""

from __future__ import annotations

import shutil
import threading
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from study.front_measures import Member, Reference
from study.logged_models import (
    CHECKPOINT_FILE,
    ON_FRONT_TAG,
    copy_checkpoint,
    log_step_model,
    read_checkpoint,
    task_reference,
)

if TYPE_CHECKING:
    from mlflow import MlflowClient

__all__ = ["FrontModels", "ON_STEP_FRONT_TAG", "Key"]

ON_STEP_FRONT_TAG = "on_step_front"
Key = tuple[str, int]  # (run id, pruning step)


class FrontModels:
    def __init__(
        self,
        client: MlflowClient,
        *,
        experiment_id: str,
        study_id: str,
        directory: Path,
        register_model: str | None = None,
    ) -> None:
        self.client = client
        self.experiment_id = experiment_id
        self.study_id = study_id
        self.directory = Path(directory)  # copies of checkpoints that may become models
        self.register_model = register_model
        self.models: dict[Key, str] = {}  # point -> logged model id
        self.tags: dict[str, tuple[bool, bool]] = {}  # model id -> (on_front, on_step_front) as tagged
        self.reference: Reference | None = None
        self.versions: dict[str, str] | None = None  # model id -> registered version, once read
        self.seconds: list[float] = []  # wall time of each model logged in this session
        self.sizes: list[int] = []  # bytes of each model logged in this session
        self._standing: dict[Key, tuple[bool, bool]] = {}  # point -> (on front, on step front) at the last update
        self._pending: dict[Key, Future] = {}  # points whose model is being logged
        self._registering: Future | None = None  # the latest registration of the front (--register-model)
        self._lock = threading.Lock()  # guards models, tags, seconds, sizes (the logging thread adds to them)
        self._pool: ThreadPoolExecutor | None = None

    def restore(self) -> None:
        token = None
        while True:
            page = self.client.search_logged_models(
                [self.experiment_id], filter_string=f"tags.study_id = '{self.study_id}'", page_token=token
            )
            for model in page:
                tags = model.tags
                if model.source_run_id and "step" in tags:
                    key = (model.source_run_id, int(tags["step"]))
                    self.models[key] = model.model_id
                    self.tags[model.model_id] = (
                        tags.get(ON_FRONT_TAG) == "true",
                        tags.get(ON_STEP_FRONT_TAG) == "true",
                    )
            token = page.token
            if not token:
                return

    def _copy_of(self, key: Key) -> Path:
        run_id, step = key
        return self.directory / f"{run_id}-step-{step:03d}"

    def keep(self, key: Key, path: str, filesystem: Any = None) -> None:
        """Copy the checkpoint of point ``key`` (a Tune checkpoint's ``path`` and ``filesystem``)."""
        if key not in self.models and not (self._copy_of(key) / CHECKPOINT_FILE).is_file():
            copy_checkpoint(path, filesystem, self._copy_of(key))

    def update(
        self,
        front: set[Key],
        step_front: set[Key],
        rows: Mapping[Key, Mapping[str, Any]],
        ended_runs: set[str],
    ) -> None:
        """Models for the members of ``front`` and ``step_front`` (point ``rows`` say what each is), tags, copies.

        New models are queued for the logging thread; everything else happens now."""
        members = front | step_front
        with self._lock:
            logged = dict(self.models)
        self._standing = {key: (key in front, key in step_front) for key in set(logged) | members}
        waiting = [
            key
            for key in sorted(members - set(logged) - set(self._pending))
            if (self._copy_of(key) / CHECKPOINT_FILE).is_file()
        ]
        if waiting and self.reference is None:  # now, not on the thread: the study metrics need it at this end
            self.reference = task_reference(read_checkpoint(self._copy_of(waiting[0])))
        for key in waiting:
            self._pending[key] = self._thread().submit(self._log, key, self._copy_of(key), dict(rows[key]))
        self._pending = {key: job for key, job in self._pending.items() if not job.done() or job.exception()}
        self._settle_tags()
        if self.directory.is_dir():
            for copy in self.directory.iterdir():
                run_id, _, step = copy.name.rpartition("-step-")
                key = (run_id, int(step)) if step.isdigit() else None
                if key in self._pending:
                    continue  # the logging thread reads it, then removes it
                # A point of a trial still running may yet become its final, front point: keep its copy.
                if key is None or key in logged or (run_id in ended_runs and key not in members):
                    shutil.rmtree(copy, ignore_errors=True)
        if self.register_model and self.reference is not None:
            front_rows = {key: dict(rows[key]) for key in front}
            # After the models queued before it; only the latest matters (it registers the front as it stands).
            self._registering = self._thread().submit(self._register, set(front), front_rows)

    def finish(self) -> list[str]:
        """Wait for the models still being logged, then settle tags once more. Returns one line per model that
        could not be logged, and one for a front that could not be registered (the study itself goes on: its runs,
        metrics and front files are complete)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        errors = [
            f"{run_id} step {step}: {type(job.exception()).__name__}: {job.exception()}"
            for (run_id, step), job in self._pending.items()
            if job.exception() is not None
        ]
        if self._registering is not None and self._registering.exception() is not None:
            error = self._registering.exception()
            errors.append(f"registering the front as {self.register_model!r}: {type(error).__name__}: {error}")
        self._pending, self._registering = {}, None
        self._settle_tags()
        return errors

    def _thread(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="front-models")
        return self._pool

    def _settle_tags(self) -> None:
        with self._lock:
            logged = list(self.models.items())
        for key, model_id in logged:
            standing = self._standing.get(key, (False, False))
            if self.tags.get(model_id) != standing:
                self.client.set_logged_model_tags(
                    model_id, {ON_FRONT_TAG: _text(standing[0]), ON_STEP_FRONT_TAG: _text(standing[1])}
                )
                with self._lock:
                    self.tags[model_id] = standing

    def _log(self, key: Key, copy: Path, row: Mapping[str, Any]) -> None:
        """On the logging thread: log the model of point ``key`` from its checkpoint copy, then drop the copy."""
        import torch

        torch.set_num_threads(1)  # the driver's share of the CPUs the trials train on
        run_id, step = key
        checkpoint = read_checkpoint(copy)
        on_front, on_step_front = self._standing.get(key, (False, False))
        settings = {name[len("config/") :]: value for name, value in row.items() if name.startswith("config/")}
        rank = row.get("rank")
        tags = {
            "study_id": self.study_id,
            "learner": str(row.get("learner")),
            "criterion": str(row.get("criterion")),
            "rank": "" if rank is None or rank != rank else str(int(rank)),
            ON_FRONT_TAG: _text(on_front),
            ON_STEP_FRONT_TAG: _text(on_step_front),
        }
        logged = log_step_model(
            self.client,
            experiment_id=self.experiment_id,
            run_id=run_id,
            run_name=str(row.get("run_name")),
            step=step,
            checkpoint=checkpoint,
            params=settings,
            tags=tags,
        )
        with self._lock:
            self.models[key] = logged.model_id
            self.tags[logged.model_id] = (on_front, on_step_front)
            self.seconds.append(logged.seconds)
            self.sizes.append(logged.size_bytes)
        shutil.rmtree(copy, ignore_errors=True)

    def _register(self, front: set[Key], rows: Mapping[Key, Mapping[str, Any]]) -> None:
        """On the logging thread: the front's logged models as versions, the aliases on the current front."""
        from study.registry import register_front

        with self._lock:
            models = dict(self.models)
        members = [
            Member(models[key], float(rows[key]["val_accuracy"]), float(rows[key]["learned_params"]))
            for key in sorted(front)
            if key in models
        ]
        sources = {models[key]: key[0] for key in front if key in models}
        self.versions = register_front(
            self.client, self.register_model, members, sources, self.reference, versions=self.versions
        )


def _text(flag: bool) -> str:
    return "true" if flag else "false"
