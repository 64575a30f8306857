"""study.settings and study.plan: flags checked in one place, normalised once, the same for a new study and its
resume (no Ray; the study directory is laid out as the driver leaves it)."""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

import optuna
import pytest
import torch
from torchvision import models as tv_models

from study.plan import plan
from study.settings import MANIFEST, StudySettings, UsageError, check_flags, shares_gpus_evenly, write_manifest
from study.tune import build_parser


def args(*argv: str):
    return build_parser().parse_args(list(argv))


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory with a data directory, a weights file and a cache; relative flags point here."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    (tmp_path / "data").mkdir()
    torch.save(tv_models.resnet18().state_dict(), tmp_path / "w.pt")  # the plan loads it, as a trial would
    return tmp_path


FLAGS = (
    "--storage-path", "runs", "--tracking-uri", "sqlite:///m.db", "--cache-dir", "cache", "--data-dir", "data",
    "--weights", "w.pt", "--seed", "3", "--num-samples", "4", "--cpus-per-trial", "1", "--gpus-per-trial", "0",
    "--max-failures", "2", "--scheduler", "asha", "--sampler", "random", "--experiment-name", "exp",
)  # fmt: skip


def start(*argv: str) -> tuple[StudySettings, object]:
    """Plan a new study and leave its directory as the driver does (manifest, resolved space, tuner.pkl)."""
    settings, space = plan(args("--space", "splora_lrp", *argv))
    settings.study_dir.mkdir(parents=True)
    original = space.path
    (settings.study_dir / f"{settings.space}.toml").write_text(
        dataclasses.replace(space, path=original).to_toml(header="test")
    )
    (settings.study_dir / "tuner.pkl").write_bytes(b"")
    optuna.create_study(study_name=settings.name, storage=settings.optuna_url, directions=space.directions)
    write_manifest(settings)
    return settings, space


def test_new_settings_are_normalised(workdir: Path) -> None:
    settings, space = plan(args("--space", "splora_lrp", *FLAGS))
    assert settings.storage_path == str(workdir / "runs") and settings.study_dir == workdir / "runs" / "splora_lrp"
    assert settings.tracking_uri == f"sqlite:///{workdir / 'm.db'}"
    assert (settings.cache_dir, settings.data_dir, settings.weights) == tuple(
        str(workdir / name) for name in ("cache", "data", "w.pt")
    )
    assert (settings.gpus_per_trial, settings.max_failures, settings.seed) == (0.0, 2, 3)
    assert isinstance(settings.gpus_per_trial, float)
    assert space.fixed["weights"] == str(workdir / "w.pt") and space.fixed["threads"] == 1


@pytest.mark.parametrize(
    "again",
    [
        pytest.param(FLAGS, id="the same flags"),
        pytest.param(("--storage-path", "runs", "--cache-dir", "cache"), id="only where the study is"),
    ],
)
def test_resume_gives_the_settings_the_study_started_with(workdir: Path, again: tuple[str, ...]) -> None:
    started, space = start(*FLAGS)
    resumed, resumed_space = plan(args("--resume", "--space", "splora_lrp", *again))
    assert resumed == started
    assert dataclasses.replace(resumed_space, path=space.path) == space
    # From another working directory, with absolute paths: the same study.
    elsewhere = workdir / "elsewhere"
    elsewhere.mkdir()
    os.chdir(elsewhere)
    absolute = [str(workdir / a) if a in ("runs", "cache", "data", "w.pt") else a for a in again]
    absolute = [f"sqlite:///{workdir / 'm.db'}" if a == "sqlite:///m.db" else a for a in absolute]
    assert plan(args("--resume", "--name", "splora_lrp", *absolute))[0] == started


def test_resume_may_grow_the_study_and_nothing_else(workdir: Path) -> None:
    started, _ = start(*FLAGS)
    where = ("--resume", "--name", "splora_lrp", "--storage-path", "runs", "--cache-dir", "cache")
    assert plan(args(*where, "--num-samples", "6"))[0] == dataclasses.replace(started, num_samples=6)
    for flag, value, message in (
        ("--num-samples", "3", "--num-samples 3 is below the study's 4; a study only grows"),
        ("--seed", "4", "--seed 4 differs from the study's 3"),
        ("--max-failures", "0", "--max-failures 0 differs from the study's 2"),
        ("--tracking-uri", "sqlite:///other.db", "--tracking-uri sqlite:///"),
        ("--space", "splora_grad", "--space splora_grad differs from the study's splora_lrp"),
    ):
        with pytest.raises(UsageError, match=message):
            plan(args(*where, flag, value))


def test_the_manifest_of_an_older_study_still_resumes(workdir: Path) -> None:
    started, _ = start(*FLAGS)
    manifest = started.study_dir / MANIFEST
    manifest.write_text(manifest.read_text().replace(',\n  "max_failures": 2', ""))
    assert "max_failures" not in manifest.read_text()
    resumed, _ = plan(args("--resume", "--name", "splora_lrp", "--storage-path", "runs", "--cache-dir", "cache"))
    assert resumed == dataclasses.replace(started, max_failures=0)


def test_max_failures_defaults_by_where_the_driver_runs(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    local = ("--space", "splora_lrp", "--storage-path", "runs", "--cache-dir", "cache")
    assert plan(args(*local))[0].max_failures == 0
    assert plan(args(*local, "--address", "auto"))[0].max_failures == 3
    monkeypatch.setenv("RAY_ADDRESS", "auto")
    assert plan(args(*local))[0].max_failures == 3


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ((), "--space is required"),
        (("--space", "s", "--name", "a/b"), "--name 'a/b' is not allowed"),
        (("--space", "s", "--num-samples", "0"), "--num-samples 0 is not allowed; allowed: an integer >= 1"),
        (("--space", "s", "--max-failures", "-1"), "--max-failures -1 is not allowed; allowed: an integer >= 0"),
        (("--space", "s", "--gpus-per-trial", "-1"), "--gpus-per-trial -1 is not allowed"),
        (("--space", "s", "--gpus-per-trial", "0.3"), "--gpus-per-trial 0.3 is not allowed; allowed: 0, a whole"),
        (("--space", "s", "--gpus-per-trial", "0.4"), "--gpus-per-trial 0.4 is not allowed"),
        (("--space", "s", "--gpus-per-trial", "1.5"), "--gpus-per-trial 1.5 is not allowed"),
        (("--space", "s", "--gpus-per-trial", "nan"), "--gpus-per-trial nan is not allowed"),
        (("--space", "s", "--weights", "missing.pt"), "--weights 'missing.pt' is not a file nor one of imagenet"),
        (("--space", "s", "--data-dir", "nowhere"), "--data-dir 'nowhere' does not exist"),
        (("--space", "s", "--tracking-uri", "mlruns"), "--tracking-uri 'mlruns': MLflow"),
    ],
)
def test_every_flag_is_checked_in_one_place(workdir: Path, argv: tuple[str, ...], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        check_flags(args(*argv))


@pytest.mark.parametrize(
    ("flag", "name"),
    [("--experiment-name", name) for name in ("", " ", "x" * 500, "x" * 501, "a/b:c", "..x", "exp")]
    + [("--register-model", name) for name in ("", " ", "a/b", "a:b", "a'b", ".", "..", "..x", "x..", "spa front")],
)  # fmt: skip
def test_mlflow_names_are_refused_as_mlflow_refuses_them(workdir: Path, flag: str, name: str) -> None:
    """A name MLflow would refuse mid-study (the experiment at the callback's setup, a registered model on the
    logging thread, where the error went unseen) is refused before any work, and only such a name."""
    from mlflow.exceptions import MlflowException
    from mlflow.utils.validation import _validate_experiment_name, _validate_model_name

    validate = _validate_experiment_name if flag == "--experiment-name" else _validate_model_name
    try:
        validate(name)
        refused_by_mlflow = "'" in name  # a quote would break the registry's filter strings
    except MlflowException:
        refused_by_mlflow = True
    if refused_by_mlflow:
        with pytest.raises(UsageError, match=f"^{flag} {re.escape(repr(name))} is not allowed; allowed: "):
            check_flags(args("--space", "s", flag, name))
    else:
        check_flags(args("--space", "s", flag, name))


@pytest.mark.parametrize(
    ("gpus", "allowed"),
    [(0, True), (0.5, True), (0.25, True), (0.2, True), (0.125, True), (0.3333, True), (1, True), (2.0, True),
     (0.3, False), (0.4, False), (0.75, False), (1.5, False), (0.33, False), (-0.5, False), (float("inf"), False)],
)  # fmt: skip
def test_a_gpu_is_shared_by_a_whole_number_of_trials(gpus: float, allowed: bool) -> None:
    assert shares_gpus_evenly(gpus) is allowed


def test_an_optuna_storage_url_is_kept_resumed_and_a_taken_name_refused(workdir: Path) -> None:
    where = ("--storage-path", "runs", "--cache-dir", "cache")
    (workdir / "shared").mkdir()
    started, _ = start("--optuna-storage", "sqlite:///shared/optuna.db", *where)
    assert started.optuna_storage == started.optuna_url == f"sqlite:///{workdir / 'shared' / 'optuna.db'}"
    assert (workdir / "shared" / "optuna.db").is_file() and not (started.study_dir / "optuna.db").exists()
    resumed, _ = plan(args("--resume", "--name", "splora_lrp", *where))
    assert resumed == started
    with pytest.raises(UsageError, match="--optuna-storage sqlite:///.* differs from the study's"):
        plan(args("--resume", "--name", "splora_lrp", *where, "--optuna-storage", "sqlite:///other.db"))
    # A new study may not take a name the shared database already holds.
    with pytest.raises(UsageError, match="holds a study named 'splora_lrp'; pass --resume to continue it"):
        plan(args("--space", "splora_lrp", "--optuna-storage", "sqlite:///shared/optuna.db", "--storage-path", "other"))
    assert plan(args("--space", "splora_lrp", "--storage-path", "other", "--name", "x", "--optuna-storage",
                     "sqlite:///shared/optuna.db"))[0].optuna_storage.endswith("shared/optuna.db")  # fmt: skip
