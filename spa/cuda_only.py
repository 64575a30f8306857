"""Settings that only mean something on a CUDA device fail loudly elsewhere, in one line.

``RuntimeConfig(bf16=True)`` on a CPU run used to be silently ignored (``spa.training.autocast`` applies it on
CUDA only), so a study asked for bf16 could run in fp32 without saying so. ``check_cuda_only`` is called once the
device is resolved (``spa.training.resolve_device``; ``device="cuda"`` without a GPU already fails there).
"""

from __future__ import annotations

import torch

from spa.config import ConfigError

__all__ = ["check_cuda_only"]


def check_cuda_only(device: torch.device, **flags: bool) -> None:
    """Raise ``ConfigError`` (one line) when any of ``flags`` (name=value) is on and ``device`` is not CUDA."""
    on = [name for name, value in flags.items() if value]
    if on and device.type != "cuda":
        settings = ", ".join(f"{name}=True" for name in on)
        raise ConfigError(
            f"{settings} needs a CUDA device, but this run uses {device.type!r} "
            f"(torch.cuda.is_available()={torch.cuda.is_available()}); drop it or run on a GPU"
        )
