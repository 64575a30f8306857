"""The train -> prune -> recover experiment on the embedded digits transfer task, with a tiny budget."""

from __future__ import annotations

import math

import pytest
import torch

from spa import experiment
from spa.config import ExperimentConfig
from spa.experiment import METRIC_NAMES, NonFiniteLossError, run_experiment
from spa.models import build_resnet
from spa.pruning import channel_groups
from spa.training import build_optimizer

TINY = {"epochs": 2, "recovery_epochs": 1, "batch_size": 64, "max_score_batches": 3, "threads": 1}


def tiny_config(cache_dir: str, **overrides: object) -> ExperimentConfig:
    return ExperimentConfig.from_flat({**TINY, "cache_dir": cache_dir, **overrides})


# The starting learning rate of every optimizer group, per training phase, of the run below.
PHASE_LRS: list[list[float]] = []


@pytest.fixture(scope="module")
def splora_run(spa_cache_dir: str) -> tuple[ExperimentConfig, list[dict[str, float]], list[str]]:
    config = tiny_config(spa_cache_dir, learner="splora", rank=4, lr=0.05, criterion="lrp", densities=(0.7, 0.4))
    checkpoints: list[str] = []

    def recording(*args, **kwargs):
        optimizer = build_optimizer(*args, **kwargs)
        PHASE_LRS.append([group["lr"] for group in optimizer.param_groups])
        return optimizer

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(experiment, "build_optimizer", recording)
        rows = run_experiment(config, lambda metrics, checkpoint: checkpoints.append(checkpoint))
    return config, rows, checkpoints


def test_adapters_recover_at_their_recovery_ratio(splora_run) -> None:
    # lr 0.05; the factors at 100x it in the transfer, at 10x in each of the two recoveries (OptimConfig says why).
    _, rows, _ = splora_run
    assert len(rows) == 3
    assert [lr for phase in PHASE_LRS for lr in phase] == pytest.approx([0.05, 5.0, 0.05, 0.5, 0.05, 0.5])


def test_accuracy_clearly_above_chance_after_training(splora_run) -> None:
    _, rows, _ = splora_run
    # Five classes: chance is 0.2.
    assert rows[0]["step"] == 0 and rows[0]["density"] == 1.0
    assert rows[0]["val_accuracy"] > 0.5
    assert rows[0]["test_accuracy"] > 0.5


def test_density_follows_schedule_within_one_channel_group(splora_run) -> None:
    config, rows, _ = splora_run
    model = build_resnet("resnet18", 5)
    import torch

    groups = channel_groups(model, torch.zeros(1, 3, 32, 32))
    reference = sum(g.size * len(g.members) for g in groups)
    largest_group_channel = max(len(g.members) for g in groups) / reference
    for row, target in zip(rows[1:], config.prune.densities, strict=True):
        assert abs(row["density"] - target) <= largest_group_channel + 1e-9
        assert row["target_density"] == target


def test_learned_parameters_fall_step_by_step(splora_run) -> None:
    _, rows, _ = splora_run
    learned = [row["learned_params"] for row in rows]
    assert all(a > b for a, b in zip(learned, learned[1:], strict=False)), learned
    flops = [row["flops"] for row in rows]
    assert all(a > b for a, b in zip(flops, flops[1:], strict=False)), flops
    assert [row["epoch"] for row in rows] == [2, 3, 4]


def test_every_metric_reported_every_step(splora_run) -> None:
    _, rows, checkpoints = splora_run
    from pathlib import Path

    # Without a checkpoint_root the checkpoints were temporary: gone once the experiment returned.
    assert not any(Path(c).exists() for c in checkpoints)
    assert [row["step"] for row in rows] == [0, 1, 2]
    assert len(checkpoints) == 3
    for row in rows:
        assert set(METRIC_NAMES) <= set(row)
        for name in ("val_accuracy", "test_accuracy", "train_loss"):
            assert math.isfinite(row[name]), name


def test_resume_after_step_k_equals_uninterrupted(spa_cache_dir: str, tmp_path) -> None:
    config = tiny_config(
        spa_cache_dir, learner="finetune", criterion="taylor", densities=(0.8, 0.6, 0.45), deterministic=True
    )
    checkpoints: list[str] = []
    full = run_experiment(
        config, lambda metrics, checkpoint: checkpoints.append(checkpoint), checkpoint_root=tmp_path / "full"
    )
    assert sorted(p.name for p in (tmp_path / "full").iterdir()) == ["step_000", "step_001", "step_002", "step_003"]
    resumed_reports: list[dict[str, float]] = []
    resumed = run_experiment(
        config, lambda metrics, checkpoint: resumed_reports.append(metrics), resume_from=checkpoints[1]
    )
    assert [r["step"] for r in resumed_reports] == [2, 3]  # no work repeated
    assert resumed == full  # exactly the same metrics, every step


def test_nan_loss_stops_with_specific_exception(spa_cache_dir: str) -> None:
    config = tiny_config(spa_cache_dir, learner="finetune", lr=1e8, momentum=0.0, weight_decay=0.0, steps=0)
    with pytest.raises(NonFiniteLossError, match="loss became (nan|inf)"):
        run_experiment(config)


def test_compiled_training_reports_the_same_steps_and_its_compile_time(spa_cache_dir: str, tmp_path) -> None:
    """``compile=True`` gives the eager run's step records (compile_s aside), per phase through a pruning step,
    with LRP scoring the uncompiled module, and resumes exactly. aot_eager traces the same forward and backward
    graphs as inductor without generating code: seconds per phase on a CPU where inductor takes minutes."""
    config = tiny_config(
        spa_cache_dir,
        learner="splora",
        rank=4,
        lr=0.05,
        criterion="lrp",
        densities=(0.7,),
        epochs=1,
        val_fraction=0.8,  # ~290 training images: 3 batches of 128
        batch_size=128,
        max_score_batches=1,
        deterministic=True,
    )
    eager = run_experiment(config)
    compiled_config = ExperimentConfig.from_flat({**config.to_flat(), "compile": True, "compile_backend": "aot_eager"})
    checkpoints: list[str] = []
    counters = torch._dynamo.utils.counters
    counters.clear()
    compiled = run_experiment(
        compiled_config, lambda metrics, checkpoint: checkpoints.append(checkpoint), checkpoint_root=tmp_path
    )
    assert not counters["graph_break"], dict(counters["graph_break"])  # one graph per phase: breaks cost steps
    assert [row["compile_s"] for row in eager] == [0.0, 0.0]
    assert [row["peak_gpu_mib"] for row in compiled] == [0.0, 0.0]  # a CPU run
    assert all(row["compile_s"] > 0 for row in compiled)  # one compile per training phase, each reported
    for eager_row, compiled_row in zip(eager, compiled, strict=True):
        assert eager_row.keys() == compiled_row.keys()
        for name, value in eager_row.items():
            if name != "compile_s":
                assert compiled_row[name] == pytest.approx(value, rel=1e-4, abs=1e-6), name
    resumed = run_experiment(compiled_config, resume_from=checkpoints[0])
    assert resumed[0] == compiled[0]
    assert {k: v for k, v in resumed[1].items() if k != "compile_s"} == {
        k: v for k, v in compiled[1].items() if k != "compile_s"
    }
