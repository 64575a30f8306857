"""How a run's DataLoaders are set up: workers, pinned memory and persistent workers, from where the run trains.

One pure function of (device type, CPUs, dataset, the workers asked for), so the choice is tested apart from any
loader:

- sets read and decoded from image files per sample (the 224 px sets: ``flowers102``, ``stanford-cars``,
  ``imagefolder:PATH``) on a GPU: ``cpus - 1`` workers by default, one CPU left to the trial's own process, which
  queues the GPU's work. Decoding, ``RandomResizedCrop`` and normalising a 224 px image cost milliseconds each in
  Python; in the trial's own process they would stall the GPU between steps. Workers persist across epochs
  (started once per loader, not once per epoch) and hand over pinned memory (an asynchronous copy to the GPU).
- the in-memory sets on a GPU: ``spa.gpu_data`` holds and augments them on the device, no DataLoader at all; where
  a DataLoader remains (a set not held there, val/test for scoring), no workers by default, pinned memory.
- on the CPU: no workers by default, as before: the trial's threads already use every CPU Tune gives it, and a
  worker would take one from the convolutions (not measured faster on the 2-core machine this was written on).

An explicit ``num_workers`` (``--num-workers``) always wins; ``persistent_workers`` follows it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from spa.data import reads_image_files
from spa.validation import ConfigError, is_int

__all__ = ["LoaderSettings", "loader_settings", "available_cpus"]


@dataclass(frozen=True)
class LoaderSettings:
    """The DataLoader keyword arguments a run's loaders share."""

    num_workers: int
    pin_memory: bool
    persistent_workers: bool


def available_cpus() -> int:
    """CPUs this process may run on (its affinity, which a container or ``taskset`` may limit)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def loader_settings(device_type: str, cpus: int, dataset: str, *, num_workers: int | None = None) -> LoaderSettings:
    """The loaders' settings for a run on ``device_type`` (``"cpu"``, ``"cuda"``) with ``cpus`` CPUs (a Tune trial's
    ``cpus_per_trial``) over ``dataset``; ``num_workers`` is the user's explicit choice, ``None`` for the default."""
    if not (is_int(cpus) and cpus >= 1):
        raise ConfigError.not_allowed("cpus", cpus, "an integer >= 1")
    if num_workers is not None and not (is_int(num_workers) and num_workers >= 0):
        raise ConfigError.not_allowed("num_workers", num_workers, "an integer >= 0 or None")
    on_gpu = device_type == "cuda"
    if num_workers is None:
        num_workers = cpus - 1 if on_gpu and reads_image_files(dataset) else 0
    return LoaderSettings(num_workers=num_workers, pin_memory=on_gpu, persistent_workers=num_workers > 0)
