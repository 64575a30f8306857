"""The nodes a study may count on in an autoscaling Ray cluster: the live head plus every worker the autoscaler may
start, so that a study submitted to a head with no workers yet (``cluster.yaml``: workers scale from 0) is sized for
the workers it will get, rather than refused because no live node can place a trial.

Ray's cluster launcher writes the autoscaler's config to ``~/ray_bootstrap_config.yaml`` on the head (the file
``ray start --autoscaling-config`` names in ``cluster.yaml``), each node type's ``resources`` filled in from its
instance type (Ray's AWS provider: ``CPU``, ``GPU``, ``memory``, ``accelerator_type:A10G``); the driver runs on the head
(``ray job submit``), so it reads the same file.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

__all__ = ["BOOTSTRAP_CONFIG", "HEAD_RESOURCE", "autoscaling_workers", "countable_nodes"]

BOOTSTRAP_CONFIG = Path("~/ray_bootstrap_config.yaml")
HEAD_RESOURCE = "node:__internal_head__"  # Ray's marker resource of the head node


def autoscaling_workers(path: Path) -> list[dict[str, float]]:
    """The resources of every worker the autoscaler config at ``path`` may start (each worker type ``max_workers``
    times, within the cluster's ``max_workers``); [] without a readable config (not a launcher's cluster)."""
    import yaml  # local: a Ray dependency, needed only on a cluster

    try:
        config = yaml.safe_load(path.expanduser().read_text())
    except (OSError, yaml.YAMLError):
        return []
    if not isinstance(config, dict) or not isinstance(config.get("available_node_types"), dict):
        return []
    remaining = int(config.get("max_workers") or 0)
    workers: list[dict[str, float]] = []
    for name, node_type in sorted(config["available_node_types"].items()):
        if name == config.get("head_node_type") or not isinstance(node_type, dict):
            continue
        resources = {
            key: float(value)
            for key, value in (node_type.get("resources") or {}).items()
            if isinstance(value, (int, float)) and not isinstance(value, bool)
        }
        count = min(int(node_type.get("max_workers") or 0), remaining)
        remaining -= count
        workers += [resources] * count
    return workers


def countable_nodes(live: Sequence[dict[str, float]], path: Path = BOOTSTRAP_CONFIG) -> list[dict[str, float]]:
    """The live nodes, or, where an autoscaler may add workers, the live head and every worker it may start."""
    workers = autoscaling_workers(path)
    if not workers:
        return list(live)
    return [node for node in live if HEAD_RESOURCE in node] + workers
