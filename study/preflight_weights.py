"""Preflight checks of the weights a trial loads (``--weights``): the only preflight checks that import torch.

Like every check of ``study.preflight``, each raises ``PreflightError`` with one line that names the bad value and
says what to do, and costs at most a few seconds:

- ``check_weights``: a state-dict file that does not load, or does not fit the architecture (``spa.models``);
- ``check_imagenet_weights``: ImageNet weights neither cached nor downloadable.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from collections.abc import Iterable
from pathlib import Path

from study.preflight import TIMEOUT_S, PreflightError, first_line, within

__all__ = ["check_imagenet_weights", "check_weights"]


def check_weights(path: str | os.PathLike[str], *, archs: Iterable[str], cifar_stems: Iterable[bool]) -> None:
    """A state-dict file loads (once, on the CPU) and fits every architecture a trial may build, with every stem
    its datasets need (``spa.models.build_resnet`` is the judge, as in a trial)."""
    from spa.models import WeightsError, build_resnet, load_backbone_state

    flag = f"--weights {path}"
    try:
        load_backbone_state(path)
    except WeightsError as error:
        raise PreflightError(f"{flag}: {error}; pass a file saved with torch.save(model.state_dict(), PATH)") from None
    except Exception as error:  # noqa: BLE001 - torch.load raises many kinds on a file that is not a state dict
        raise PreflightError(
            f"{flag} is not a PyTorch state dict (torch.load: {type(error).__name__}: {_first_sentence(error)}); "
            "pass a file saved with torch.save(model.state_dict(), PATH), or imagenet or none"
        ) from None
    for arch in sorted(set(archs)):
        for cifar_stem in sorted(set(cifar_stems)):
            try:
                build_resnet(arch, 10, cifar_stem=cifar_stem, weights=path)
            except (WeightsError, RuntimeError, KeyError, ValueError) as error:
                reason = first_line(error).replace(f"weights {path} do not fit this architecture: ", "")
                raise PreflightError(
                    f"{flag} does not fit {arch} ({reason}); pass weights saved from a torchvision {arch}, "
                    "or another --arch"
                ) from None


def check_imagenet_weights(archs: Iterable[str], *, timeout_s: float = TIMEOUT_S) -> None:
    """``--weights imagenet``: torchvision's file is in the torch hub cache, or its server answers (each trial
    downloads it otherwise, and fails without a network)."""
    for arch in sorted(set(archs)):
        url, cached = _imagenet_file(arch)
        if cached.is_file():
            continue
        host = url.split("://", 1)[1].split("/", 1)[0]

        def probe(url: str = url) -> None:
            with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout_s):
                pass

        try:
            within(timeout_s, probe)
        except TimeoutError:
            reason = f"no answer within {timeout_s:g} s"
        except urllib.error.HTTPError as error:
            reason = f"HTTP {error.code}"
        except (urllib.error.URLError, OSError) as error:
            reason = str(getattr(error, "reason", error))
        else:
            continue
        raise PreflightError(
            f"--weights imagenet: the {arch} ImageNet weights are not in the torch hub cache ({cached}) and {host} "
            f"cannot be reached ({reason}); connect to the network once, or put {url.rsplit('/', 1)[1]} there"
        )


def _imagenet_file(arch: str) -> tuple[str, Path]:
    """torchvision's URL of the ImageNet weights of ``arch``, and where ``torch.hub`` caches them."""
    from spa.models import imagenet_weights_file

    return imagenet_weights_file(arch)


def _first_sentence(error: BaseException, limit: int = 160) -> str:
    sentence = first_line(error).split(". ", 1)[0]
    return sentence if len(sentence) <= limit else sentence[: limit - 3] + "..."
