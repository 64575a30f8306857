"""The model side never pulls in the orchestration stack."""

from __future__ import annotations

import subprocess
import sys


def test_spa_imports_no_ray_mlflow_or_optuna() -> None:
    code = (
        "import sys, spa.adapters, spa.checkpoint, spa.config, spa.counting, spa.criteria, spa.data, "
        "spa.experiment, spa.export, spa.models, spa.pretrain, spa.pruning, spa.run, spa.schedules\n"
        "print(sorted(m for m in ('ray', 'mlflow', 'optuna') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
