"""cluster.yaml, checked offline with Ray's own schema and the preparation `ray up` applies before launching."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def raw() -> dict:
    return yaml.safe_load((ROOT / "cluster.yaml").read_text())


def test_prepared_config_passes_ray_validation(raw: dict) -> None:
    prepared = prepare_config(copy.deepcopy(raw))
    validate_config(prepared)  # raises on any schema violation
    assert prepared["head_node_type"] == "head"
    workers = prepared["available_node_types"]["gpu_worker"]
    assert workers["min_workers"] == 0 and workers["max_workers"] == 8
    assert workers["node_config"]["InstanceType"] == "g5.xlarge"
    assert workers["node_config"]["InstanceMarketOptions"] == {"MarketType": "spot"}
    assert prepared["available_node_types"]["head"]["resources"] == {"CPU": 0}


def test_a_typo_fails_validation(raw: dict) -> None:
    broken = copy.deepcopy(raw)
    broken["available_node_types"]["gpu_worker"]["min_worker"] = 1  # typo of min_workers
    with pytest.raises(jsonschema.ValidationError, match="min_worker"):
        validate_config(prepare_config(broken))


def test_image_and_setup_pin_the_project_versions(raw: dict) -> None:
    image = raw["docker"]["image"]
    assert image.startswith(f"rayproject/ray:{ray.__version__}-py311")
    pyproject = (ROOT / "pyproject.toml").read_text()
    setup = " && ".join(raw["setup_commands"])
    for package in ("torch", "torchvision"):
        pinned = re.search(rf'"{package}==([0-9.]+)"', pyproject).group(1)
        assert f"{package}=={pinned}" in setup
    assert f'"ray[tune]=={ray.__version__}"' in pyproject


def test_head_runs_the_tracking_server_on_sqlite_with_s3_artifacts(raw: dict) -> None:
    commands = " ".join(raw["head_start_ray_commands"])
    assert "mlflow server" in commands
    assert "--backend-store-uri sqlite:////" in commands
    assert "--artifacts-destination s3://" in commands
    assert commands.index("mlflow server") < commands.index("ray start --head")
