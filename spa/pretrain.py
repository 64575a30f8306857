"""The offline source task: a backbone pretrained once on printed digits, cached on disk, reused by every trial.

Transfer learning needs a pretrained network; offline there are no ImageNet weights, so the harness makes its
own: on ``printed-digits`` (digits 0-9 rendered from matplotlib's fonts, ``spa.sources``), a synthetic-to-real
source for the handwritten target. ``dataset="digits-source"`` (the handwritten digits 0-4) was the source
before; it is kept selectable for comparison. The file name is a hash of every setting that changes the
weights, and concurrent trials take a file lock so only one of them trains it.

It trains on one thread, whoever asks for it: CPU kernels sum in an order that depends on the thread count, so the
same recipe on 2 threads made other weights than on 1 (issue 14: a study's driver pretrained on torch's default,
``spa.run`` on its ``threads``, both under one file name; a ``--smoke`` study's best val was 0.765 on one backbone
and 0.966 on the other). On one thread the weights are the same in every run (checked bit for bit).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from spa.data import load_splits, make_loaders
from spa.files import write_atomically
from spa.models import build_resnet
from spa.training import build_optimizer, build_scheduler, phase_seed, seed_everything, train_one_epoch

__all__ = ["PRETRAIN_THREADS", "PretrainConfig", "default_cache_dir", "pretrained_backbone"]

# Bump when the training recipe below, or the engine it trains with, changes. 3: the engine stepped the cosine per
# batch and reseeded its splits after 2 was cached (issue 10), so version-2 files differ from what 2's key now makes.
# 4: trained on one thread (PRETRAIN_THREADS); a version-3 file may have been trained on any number.
_RECIPE_VERSION = 4
# Threads the backbone trains on, whatever the caller's torch setting (see the module docstring).
PRETRAIN_THREADS = 1


@dataclass(frozen=True)
class PretrainConfig:
    arch: str = "resnet18"
    dataset: str = "printed-digits"  # or "digits-source" (the handwritten digits 0-4, the former source)
    epochs: int = 2
    lr: float = 0.05
    batch_size: int = 32
    seed: int = 0


def default_cache_dir() -> Path:
    return Path(os.environ.get("SPA_CACHE_DIR", Path.home() / ".cache" / "spa"))


def _cache_key(config: PretrainConfig) -> str:
    from spa.sources import SOURCE_SAMPLES  # the generated source's size is part of the recipe

    payload = json.dumps({**asdict(config), "samples": SOURCE_SAMPLES, "recipe": _RECIPE_VERSION}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def pretrained_backbone(config: PretrainConfig, cache_dir: str | Path | None = None) -> Path:
    """Path of the backbone state dict for ``config``, training it first (on one thread) if no cached copy exists."""
    directory = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    directory = directory / "backbones"
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{config.arch}-{config.dataset}-{_cache_key(config)}.pt"
    if path.is_file():
        return path
    with open(directory / f".{path.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another trial may be training it right now: wait for it
        if not path.is_file():
            state = _train_source(config)
            write_atomically(path, lambda temporary: torch.save(state, temporary))
    return path


def _train_source(config: PretrainConfig) -> dict[str, torch.Tensor]:
    previous = torch.get_num_threads()
    torch.set_num_threads(PRETRAIN_THREADS)
    try:
        return _train_on_this_thread_count(config)
    finally:
        torch.set_num_threads(previous)


def _train_on_this_thread_count(config: PretrainConfig) -> dict[str, torch.Tensor]:
    seed_everything(config.seed)
    splits = load_splits(config.dataset, seed=config.seed)
    loaders = make_loaders(splits, batch_size=config.batch_size, seed=config.seed)
    model = build_resnet(config.arch, splits.info.num_classes, cifar_stem=splits.info.cifar_stem)
    optimizer = build_optimizer(model, "sgd", lr=config.lr, momentum=0.9, weight_decay=5e-4)
    scheduler = build_scheduler(optimizer, "cosine", config.epochs)
    device = torch.device("cpu")
    for epoch in range(config.epochs):
        train_one_epoch(model, loaders.train, optimizer, device, seed=phase_seed(config.seed, 0, epoch))
        scheduler.step()
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}
