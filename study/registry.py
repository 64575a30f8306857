"""``--register-model NAME``: the front's logged models as versions of one registered model, aliases kept current.

Every logged model that enters the front becomes a version (once; a model that leaves the front keeps its version,
tagged ``on_front=false``), and the aliases of ``study.front_measures.ALIASES`` (``best-accuracy``,
``fewest-learned-params``, ``knee``) are moved to the versions of the members they name now.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from study.front_measures import ALIASES, Member, Reference, alias_targets
from study.logged_models import ON_FRONT_TAG, model_id_of, model_uri, using_tracking_uri

if TYPE_CHECKING:
    from mlflow import MlflowClient

__all__ = ["register_front"]


def _existing_versions(client: MlflowClient, name: str) -> dict[str, str]:
    """model_id -> version of the registered model ``name`` (created if missing)."""
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name, description="Pareto-front members of a spa-study pruning study")
    versions, token = {}, None
    while True:
        page = client.search_model_versions(f"name = '{name}'", page_token=token)
        for version in page:
            model_id = version.model_id or model_id_of(version.source)
            if model_id:
                versions[model_id] = version.version
        token = page.token
        if not token:
            return versions


def register_front(
    client: MlflowClient,
    name: str,
    members: Sequence[Member],
    sources: Mapping[str, str],
    reference: Reference,
    *,
    versions: dict[str, str] | None = None,
) -> dict[str, str]:
    """Register the front ``members`` (keys are logged-model ids; ``sources`` maps each to its run id) as versions
    of ``name``, tag every known version's ``on_front``, point the aliases; returns model_id -> version.

    ``versions`` is what an earlier call returned (saves a search); absent, it is read from the registry.
    """
    known = dict(versions) if versions is not None else _existing_versions(client, name)
    on_front = {str(member.key) for member in members}
    for model_id in sorted(on_front - set(known)):
        # Source "models:/<id>": what links a version to its logged model in the UI (a local registry keeps no
        # model_id column). A local registry resolves it through the process-wide tracking URI: set it.
        with using_tracking_uri(client.tracking_uri):
            version = client.create_model_version(
                name, source=model_uri(model_id), run_id=sources.get(model_id), model_id=model_id, await_creation_for=0
            )
        known[model_id] = version.version
    for model_id, version in known.items():
        client.set_model_version_tag(name, version, ON_FRONT_TAG, "true" if model_id in on_front else "false")
    targets = alias_targets(members, reference)
    for alias in ALIASES:
        if alias in targets:
            client.set_registered_model_alias(name, alias, known[str(targets[alias])])
    return known
