"""CUDA-only settings without CUDA: a one-line ConfigError, from the check and from a whole experiment."""

from __future__ import annotations

import pytest
import torch

from spa.config import ConfigError
from spa.cuda_only import check_cuda_only


def test_cuda_only_flags_on_the_cpu_are_one_line_errors() -> None:
    with pytest.raises(ConfigError, match=r"bf16=True needs a CUDA device, but this run uses 'cpu'") as error:
        check_cuda_only(torch.device("cpu"), bf16=True, compile=False)
    assert "\n" not in str(error.value)
    check_cuda_only(torch.device("cpu"), bf16=False)  # off: fine anywhere
    check_cuda_only(torch.device("cuda"), bf16=True)  # the check reads the device, not the machine


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
def test_cuda_device_without_cuda_is_a_one_line_error() -> None:
    from spa.training import resolve_device

    with pytest.raises(ConfigError, match="asked for a CUDA GPU but none is available") as error:
        resolve_device("cuda")
    assert "\n" not in str(error.value)


def test_an_experiment_with_bf16_on_the_cpu_stops_before_any_work() -> None:
    from spa.config import ExperimentConfig, RuntimeConfig
    from spa.experiment import run_experiment

    with pytest.raises(ConfigError, match="bf16=True needs a CUDA device"):
        run_experiment(ExperimentConfig(runtime=RuntimeConfig(device="cpu", bf16=True)))


def test_cuda_graphs_on_the_cpu_stops_before_any_work_and_refuses_compile_too() -> None:
    from spa.config import ExperimentConfig, RuntimeConfig
    from spa.experiment import run_experiment

    with pytest.raises(ConfigError, match=r"^cuda_graphs=True needs a CUDA device, but this run uses 'cpu'"):
        run_experiment(ExperimentConfig(runtime=RuntimeConfig(device="cpu", cuda_graphs=True)))
    with pytest.raises(ConfigError, match=r"cuda_graphs=True .*false when compile is true") as error:
        RuntimeConfig(compile=True, cuda_graphs=True)
    assert "\n" not in str(error.value)
    with pytest.raises(ConfigError, match=r"cuda_graphs='yes' .*true or false"):
        RuntimeConfig(cuda_graphs="yes")
