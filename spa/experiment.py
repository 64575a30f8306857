"""One experiment, as every study trial runs it: transfer, then prune step by step with recovery training.

seed -> build -> train ``epochs`` -> report step 0 -> for each pruning step: score -> remove -> evaluate ->
recover ``recovery_epochs`` (fresh optimizer: the learning rate restarts, as in the original research code) ->
evaluate val and test -> checkpoint -> report. docs/METHOD.md describes the protocol.

Every source of randomness is re-derived from (seed, step, epoch) at the start of each phase
(``spa.training.phase_seed``), so an experiment resumed from the checkpoint of step k ends with exactly the
metrics of an uninterrupted one. The engine (optimizer, epochs, evaluation) lives in ``spa.training``.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from spa import adapters, counting, gpu_data
from spa.checkpoint import load_checkpoint, resize_to, save_checkpoint
from spa.config import PRETRAINED_DIGITS, ConfigError, ExperimentConfig, RuntimeConfig
from spa.criteria import score_channels
from spa.cuda_only import check_cuda_only
from spa.data import Loaders, load_splits, make_loaders, score_loader
from spa.graphs import CapturedStep
from spa.loader_settings import available_cpus, loader_settings
from spa.metrics import COST_METRIC_NAMES, EXTRA_METRIC_NAMES, METRIC_NAMES
from spa.models import build_resnet, fetch_imagenet_weights
from spa.pretrain import PretrainConfig, pretrained_backbone
from spa.pruning import fewest_channels, prune_to_density
from spa.schedules import density_schedule, explicit_schedule
from spa.training import (
    NonFiniteLossError,
    build_optimizer,
    build_scheduler,
    compile_for_training,
    evaluate,
    phase_seed,
    recompute_batchnorm_statistics,
    resolve_device,
    seed_everything,
    train_one_epoch,
)

__all__ = [
    "NonFiniteLossError",
    "Report",
    "METRIC_NAMES",
    "EXTRA_METRIC_NAMES",
    "COST_METRIC_NAMES",
    "run_experiment",
    "pruning_densities",
    "build_model",
    # The engine's names, re-exported for callers that import them from here.
    "resolve_device",
    "seed_everything",
    "train_one_epoch",
    "evaluate",
    "build_optimizer",
    "build_scheduler",
]


# The training samples in order with eval transforms: a DataLoader, or on CUDA the device-resident one.
ScoringLoader = DataLoader | gpu_data.DeviceLoader

# report(metrics, checkpoint_dir): checkpoint_dir holds checkpoint.pt of this step, or is None.
Report = Callable[[dict[str, float], "str | None"], None]


@dataclass(frozen=True)
class _Setting:
    """What every phase of one experiment reads; the model and the history are what changes."""

    config: ExperimentConfig
    device: torch.device
    loaders: Loaders
    scoring_loader: ScoringLoader
    reference_channels: int  # conv output channels of the unpruned network: density's denominator
    checkpoints: Path
    report: Report | None
    log: Callable[[str], None]


def pruning_densities(config: ExperimentConfig) -> list[float]:
    """The density after each pruning step: the explicit ``densities`` or the shaped schedule."""
    prune = config.prune
    if prune.densities is not None:
        return explicit_schedule(prune.densities)
    return density_schedule(prune.final_density, prune.steps, prune.shape)


def run_experiment(
    config: ExperimentConfig,
    report: Report | None = None,
    *,
    resume_from: str | Path | None = None,
    checkpoint_root: str | Path | None = None,
    log: Callable[[str], None] | None = None,
) -> list[dict[str, float]]:
    """Run the experiment; returns one metrics row per reported step (step 0 = trained, unpruned).

    ``report(metrics, checkpoint_dir)`` is called after every step with a directory holding that step's
    checkpoint under ``checkpoint_root``. Without a ``checkpoint_root`` the checkpoints live in a temporary directory
    that is removed when the experiment ends: copy what you need during the callback (``tune.report`` does).
    ``resume_from`` is such a directory: the experiment continues with the next step and repeats no work.
    """
    device = resolve_device(config.runtime.device)
    # bf16 autocast and CUDA graphs exist on CUDA only: say so, rather than run without them
    check_cuda_only(device, bf16=config.runtime.bf16, cuda_graphs=config.runtime.cuda_graphs)
    densities = pruning_densities(config)
    # Before seeding: pretraining a backbone that is not cached yet draws from the global RNG, and the run on a cold
    # cache would then initialise its adapters differently from every later run.
    weights = _weights_path(config)
    _prepare_runtime(config.runtime)
    if device.type == "cuda":  # a reused Tune actor ran other trials before: the peak is this run's
        torch.cuda.reset_peak_memory_stats(device)
    loaders, scoring_loader = _load_data(config, device)
    start_step, history, state = _resume_point(resume_from)
    info = loaders.info
    model = build_model(config, info.num_classes, info.cifar_stem, weights=weights)
    reference_channels = counting.conv_channels(model)
    _check_floor(config, model, densities, reference_channels)
    _restore(model, state, device)

    with _checkpoint_directory(checkpoint_root) as checkpoints:
        setting = _Setting(
            config=config,
            device=device,
            loaders=loaders,
            scoring_loader=scoring_loader,
            reference_channels=reference_channels,
            checkpoints=checkpoints,
            report=report,
            log=log or _silent,
        )
        if start_step == 0:
            trained = _train(setting, model, step=0, epochs=config.optim.epochs)
            _finish_step(setting, model, history, step=0, density=1.0, trained=trained, pruned_accuracy=None)
        for step in range(max(start_step, 1), len(densities) + 1):
            density = densities[step - 1]
            pruned_accuracy = _prune(setting, model, density)
            trained = _train(setting, model, step=step, epochs=config.optim.recovery_epochs)
            _finish_step(
                setting, model, history, step=step, density=density, trained=trained, pruned_accuracy=pruned_accuracy
            )
    return history


def _silent(message: str) -> None:
    pass


def _check_floor(config: ExperimentConfig, model: nn.Module, densities: list[float], reference_channels: int) -> None:
    """Refuse, before any training, a schedule whose last density is under what ``min_channels`` leaves."""
    if not densities:
        return
    floor = fewest_channels(model, config.prune.min_channels)
    if round(densities[-1] * reference_channels) < floor:
        lowest = floor / reference_channels
        raise ConfigError(
            f"final density {densities[-1]:g} is below the {lowest:.4f} that min_channels="
            f"{config.prune.min_channels} leaves ({floor} of {reference_channels} conv channels); allowed: a final "
            f"density >= {lowest:.4f}, or a lower min_channels",
            field="min_channels",
            allowed=f"a final density >= {lowest:.4f}, or a lower min_channels",
        )


def _prepare_runtime(runtime: RuntimeConfig) -> None:
    if runtime.threads is not None:
        torch.set_num_threads(runtime.threads)
    if runtime.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    # Before anything random is created (the original research code seeded after building the model).
    seed_everything(runtime.seed)


def _load_data(config: ExperimentConfig, device: torch.device) -> tuple[Loaders, ScoringLoader]:
    data, seed = config.data, config.runtime.seed
    splits = load_splits(
        data.dataset, data_dir=data.data_dir, download=data.download, val_fraction=data.val_fraction, seed=seed
    )
    if device.type == "cuda" and data.dataset in gpu_data.SUPPORTED:  # held and augmented on the GPU
        return gpu_data.device_loaders(splits, batch_size=data.batch_size, seed=seed, device=device)
    cpus = config.runtime.threads or available_cpus()  # a study pins threads to the trial's cpus_per_trial
    kwargs = dataclasses.asdict(loader_settings(device.type, cpus, data.dataset, num_workers=data.num_workers))
    loaders = make_loaders(splits, batch_size=data.batch_size, seed=seed, **kwargs)
    # Channels are ranked on the training samples with eval transforms, in order: no augmentation noise. One pass
    # per pruning step: workers that persisted would sit idle in between.
    kwargs["persistent_workers"] = False
    return loaders, score_loader(splits, batch_size=data.batch_size, **kwargs)


def _resume_point(resume_from: str | Path | None) -> tuple[int, list[dict[str, float]], dict[str, Any] | None]:
    """(first step to run, the history so far, the checkpoint) -- from scratch: (0, [], None)."""
    if resume_from is None:
        return 0, [], None
    state = load_checkpoint(resume_from)
    return int(state["step"]) + 1, list(state["history"]), state


def _weights_path(config: ExperimentConfig) -> str:
    weights = config.model.weights
    if weights == "imagenet":
        fetch_imagenet_weights(config.model.arch)  # no network: one line now, before the data are loaded
    if weights != PRETRAINED_DIGITS:
        return weights
    pretrain = PretrainConfig(arch=config.model.arch)
    return str(pretrained_backbone(pretrain, config.runtime.cache_dir))


def build_model(config: ExperimentConfig, num_classes: int, cifar_stem: bool, *, weights: str | None) -> nn.Module:
    """The experiment's network before training: a ResNet with ``weights`` (see ``build_resnet``) and the
    config's learner (SPLoRA adapters added, or everything learned)."""
    model = build_resnet(config.model.arch, num_classes, cifar_stem=cifar_stem, weights=weights)
    learner = config.learner
    if learner.learner == "splora":
        adapters.add_splora(model, learner.rank, learner.init_range)
    else:
        adapters.mark_trainable(model, "finetune")
    return model


def _restore(model: nn.Module, state: dict[str, Any] | None, device: torch.device) -> None:
    """Load a checkpoint's (pruned) weights, if resuming, and move the model to ``device``."""
    if state is not None:
        resize_to(model, state["model"])
        model.load_state_dict(state["model"])
    model.to(device)
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)


@contextmanager
def _checkpoint_directory(checkpoint_root: str | Path | None) -> Iterator[Path]:
    if checkpoint_root is not None:
        yield Path(checkpoint_root)
        return
    with tempfile.TemporaryDirectory(prefix="spa-ckpt-") as temporary:
        yield Path(temporary)


@dataclass(frozen=True)
class _Trained:
    """What a training phase reports: its last epoch's mean loss and the seconds of its compiled first step."""

    loss: float
    compile_s: float


def _train(setting: _Setting, model: nn.Module, *, step: int, epochs: int) -> _Trained:
    """Train ``epochs`` epochs with a fresh optimizer (after a pruning step, SPLoRA's factors at
    ``recovery_adapter_lr_ratio``) and LR schedule (stepped per batch; and, with ``compile``, a fresh compile), then
    recompute the BatchNorm statistics if ``precise_bn``."""
    optim, runtime = setting.config.optim, setting.config.runtime
    optimizer = build_optimizer(
        model,
        optim.optimizer,
        lr=optim.lr,
        momentum=optim.momentum,
        weight_decay=optim.weight_decay,
        adapter_lr_ratio=optim.adapter_lr_ratio if step == 0 else optim.recovery_adapter_lr_ratio,
    )
    train = setting.loaders.train
    scheduler = build_scheduler(optimizer, optim.lr_schedule, epochs, steps_per_epoch=len(train))  # per batch
    trained = compile_for_training(model, runtime.compile_backend) if runtime.compile and epochs else model
    # One capture per phase: the shapes hold until the next pruning step.
    captured = CapturedStep(model, nn.CrossEntropyLoss(), bf16=runtime.bf16) if runtime.cuda_graphs else None
    first_steps: list[float] = []  # the first step of the phase: compile (or capture) time plus one step
    loss = float("nan")
    for epoch in range(epochs):
        started = time.perf_counter()
        seed = phase_seed(runtime.seed, step, epoch)
        on_first_step = first_steps.append if (runtime.compile or runtime.cuda_graphs) and epoch == 0 else None
        loss = train_one_epoch(
            trained,
            train,
            optimizer,
            setting.device,
            seed=seed,
            bf16=runtime.bf16,
            on_first_step=on_first_step,
            scheduler=scheduler,
            captured=captured,
        )
        setting.log(f"step {step} epoch {epoch + 1}/{epochs}: loss {loss:.4f} ({time.perf_counter() - started:.1f}s)")
    if first_steps:
        done = "compiled" if runtime.compile else "captured as a CUDA graph"
        setting.log(f"step {step}: {done} in {first_steps[0]:.1f}s (the first step, included)")
    if epochs > 0 and optim.precise_bn:
        recompute_batchnorm_statistics(model, setting.scoring_loader, setting.device)
    return _Trained(loss=loss, compile_s=sum(first_steps))


def _prune(setting: _Setting, model: nn.Module, density: float) -> float:
    """Score the channels, remove the weakest down to ``density``; returns the val accuracy right after."""
    prune, device = setting.config.prune, setting.device
    scores = score_channels(
        model,
        setting.scoring_loader,
        prune.criterion,
        norm=prune.norm,
        device=device,
        max_batches=prune.max_score_batches,
    )
    model.to("cpu")  # the dependency graph is traced on the CPU
    example_input = torch.zeros(1, *setting.loaders.info.input_size)
    prune_to_density(model, scores, density, setting.reference_channels, example_input, min_channels=prune.min_channels)
    model.to(device)
    return evaluate(model, setting.loaders.val, device)


def _finish_step(
    setting: _Setting,
    model: nn.Module,
    history: list[dict[str, float]],
    *,
    step: int,
    density: float,
    trained: _Trained,
    pruned_accuracy: float | None,
) -> None:
    """Measure the step, append it to ``history``, checkpoint it and report it."""
    epochs = setting.config.optim.epochs if step == 0 else setting.config.optim.recovery_epochs
    epoch = (int(history[-1]["epoch"]) if history else 0) + epochs
    metrics = _measure(
        setting, model, step=step, density=density, trained=trained, epoch=epoch, pruned_accuracy=pruned_accuracy
    )
    history.append(metrics)
    directory = setting.checkpoints / f"step_{step:03d}"
    save_checkpoint(directory, model, {"step": step, "history": history, "config": setting.config.to_flat()})
    setting.log(
        f"step {step}: density {metrics['density']:.3f} val {metrics['val_accuracy']:.4f} "
        f"test {metrics['test_accuracy']:.4f} learned {metrics['learned_params']:,}"
    )
    if setting.report is not None:
        setting.report(dict(metrics), str(directory))


def _measure(
    setting: _Setting,
    model: nn.Module,
    *,
    step: int,
    density: float,
    trained: _Trained,
    epoch: int,
    pruned_accuracy: float | None,
) -> dict[str, float]:
    """One row of ``METRIC_NAMES`` + ``EXTRA_METRIC_NAMES`` + ``COST_METRIC_NAMES`` for the model as it is now."""
    loaders, device = setting.loaders, setting.device
    val_accuracy = evaluate(model, loaders.val, device)
    counts = {
        "learned_params": counting.learned_parameters(model),
        "params": counting.total_parameters(model),
        "flops": counting.flops(model, loaders.info.input_size),
    }
    return {
        "step": step,
        "density": counting.conv_channels(model) / setting.reference_channels,
        "target_density": density,
        "val_accuracy": val_accuracy,
        "test_accuracy": evaluate(model, loaders.test, device),
        **counts,
        "epoch": epoch,
        "train_loss": trained.loss,
        # Before recovery training; at step 0 nothing was pruned, so it is the trained accuracy itself.
        "val_accuracy_pruned": val_accuracy if pruned_accuracy is None else pruned_accuracy,
        "compile_s": trained.compile_s,
        "peak_gpu_mib": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else 0.0,
    }
