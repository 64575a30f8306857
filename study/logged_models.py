"""Every front member as an MLflow 3 logged model that loads with MLflow and torch alone.

The model of a (trial, pruning step) point is rebuilt from that step's checkpoint (``spa.export``): adapters merged
into plain convs, pruned channels physically gone, BatchNorm with its trained statistics, eval mode, float32, CPU.

Format: ``torch.export`` (MLflow's ``serialization_format="pt2"``, its default in 3.17). The exported program is
a traced graph of aten operators plus the tensors, so loading it needs neither this project nor torchvision, and
it holds no pickle: MLflow 3.17 refuses to unpickle a model unless ``MLFLOW_ALLOW_PICKLE_DESERIALIZATION=true``,
which rules out a whole-module save (it would also import torchvision's ResNet classes to load) and a TorchScript
archive (saved and loaded through the same pickle-checked path; ``torch.jit`` is deprecated in torch 2.14). The
batch dimension is exported dynamic (the input example has 2 images; ``torch.export`` fixes size-1 dimensions).

Each model is linked to its child run at the pruning step (the run's metrics at that step are linked to it:
``val_accuracy``, ``test_accuracy``, ``learned_params``, ``params``, ``flops``, ``density``), carries the trial's
settings as params and the tags in ``MODEL_TAGS``, has a signature and an input example at the dataset's input size,
and a picture of the output channels each conv kept against the unpruned network (``kept_channels.png``).
"""

from __future__ import annotations

import io
import os
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from study.front_measures import Reference

if TYPE_CHECKING:
    import pyarrow.fs
    from mlflow import MlflowClient

    from spa.export import LayerChannels

# spa (so torch) is imported inside the functions that rebuild a model: the driver imports this module, and
# recording a study that logs no model needs no torch.
CHECKPOINT_FILE = "checkpoint.pt"  # spa.checkpoint.CHECKPOINT_FILE, checked equal by the tests

__all__ = [
    "ON_FRONT_TAG",
    "MODEL_TAGS",
    "CHANNELS_PICTURE",
    "EXAMPLE_BATCH",
    "LoggedStepModel",
    "read_checkpoint",
    "copy_checkpoint",
    "task_reference",
    "example_input",
    "model_name",
    "model_uri",
    "model_id_of",
    "step_models",
    "using_tracking_uri",
    "log_step_model",
    "set_on_front",
    "write_channels_png",
]

ON_FRONT_TAG = "on_front"
# Tags of every logged model, besides on_front: which trial and step it is and how it was learned.
MODEL_TAGS = ("learner", "criterion", "rank", "trial", "step", "run_name")
CHANNELS_PICTURE = "kept_channels.png"
EXAMPLE_BATCH = 2  # > 1: torch.export keeps a dimension of size 1 static, and the batch should stay free


@dataclass(frozen=True)
class LoggedStepModel:
    model_id: str
    name: str
    seconds: float  # wall time of rebuilding, exporting and logging it
    size_bytes: int  # the MLflow model directory as logged


def _open(location: str, filesystem: pyarrow.fs.FileSystem | None) -> tuple[pyarrow.fs.FileSystem, str]:
    import pyarrow.fs

    if filesystem is not None:
        return filesystem, location
    if "://" in location:
        return pyarrow.fs.FileSystem.from_uri(location)
    return pyarrow.fs.LocalFileSystem(), os.path.abspath(location)


def _checkpoint_bytes(location: str | os.PathLike[str], filesystem: pyarrow.fs.FileSystem | None) -> bytes:
    fs, directory = _open(str(location), filesystem)
    path = f"{directory.rstrip('/')}/{CHECKPOINT_FILE}"
    try:
        with fs.open_input_stream(path) as stream:
            return stream.read()
    except FileNotFoundError as error:
        raise FileNotFoundError(f"no checkpoint at {str(location)!r} ({path} on {fs.type_name})") from error


def read_checkpoint(location: str | os.PathLike[str], filesystem: pyarrow.fs.FileSystem | None = None) -> dict:
    """The ``checkpoint.pt`` of a step's checkpoint directory: a local path, a URI (``file://``, ``s3://``, ... as
    Ray storage takes) or a path on ``filesystem`` (a Tune checkpoint's ``.path`` and ``.filesystem``)."""
    import torch

    data = _checkpoint_bytes(location, filesystem)
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def copy_checkpoint(
    location: str | os.PathLike[str], filesystem: pyarrow.fs.FileSystem | None, directory: str | os.PathLike[str]
) -> Path:
    """Copy a step's ``checkpoint.pt`` into the local ``directory`` (no torch: the bytes only); returns it.

    Tune keeps one checkpoint per trial: the driver copies a step that may become a model before the next step's
    checkpoint replaces it in the trial's storage."""
    from spa.files import write_atomically

    data = _checkpoint_bytes(location, filesystem)
    return write_atomically(Path(directory) / CHECKPOINT_FILE, lambda path: path.write_bytes(data))


def task_reference(checkpoint: Mapping[str, Any]) -> Reference:
    """The hypervolume reference point of the checkpoint's task: chance accuracy and the unpruned network's
    parameters (``study.front_measures``)."""
    from spa.export import num_classes, unpruned_parameters

    return Reference.for_task(num_classes(checkpoint), unpruned_parameters(checkpoint))


def example_input(input_size: Sequence[int], batch: int = EXAMPLE_BATCH) -> np.ndarray:
    """A fixed, seeded example batch (batch, C, H, W) of normalised-image-like values in {-1, -0.75, ..., 1}: exact
    in float32 and short in the JSON MLflow stores, yet different per pixel so logits can be compared on it."""
    rng = np.random.default_rng(0)
    return (rng.integers(-4, 5, size=(batch, *input_size)) / 4).astype(np.float32)


def model_name(run_name: str, step: int) -> str:
    return f"{run_name}-step-{step}"


def model_uri(model_id: str) -> str:
    return f"models:/{model_id}"


def model_id_of(uri: str) -> str | None:
    """The logged-model id of a ``models:/m-...`` URI (a registered version's source), else None."""
    prefix = "models:/"
    rest = uri[len(prefix) :] if uri.startswith(prefix) else ""
    return rest if rest.startswith("m-") and "/" not in rest else None


def step_models(client: MlflowClient, experiment_id: str) -> dict[tuple[str, int], Any]:
    """The experiment's logged models (``LoggedModel``) by the point each is the model of: (run id, pruning step)."""
    models, token = {}, None
    while True:
        page = client.search_logged_models([experiment_id], page_token=token)
        for model in page:
            if model.source_run_id and "step" in model.tags:
                models[(model.source_run_id, int(model.tags["step"]))] = model
        token = page.token
        if not token:
            return models


@contextmanager
def using_tracking_uri(uri: str) -> Iterator[None]:
    """Set MLflow's process-wide tracking URI for the block: ``mlflow.pytorch.log_model`` and a local model
    registry talk to it, not to the client they were handed."""
    import mlflow

    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)


def _directory_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def log_step_model(
    client: MlflowClient,
    *,
    experiment_id: str,
    run_id: str,
    run_name: str,
    step: int,
    checkpoint: Mapping[str, Any],
    params: Mapping[str, Any],
    tags: Mapping[str, str],
) -> LoggedStepModel:
    """Log the deployable model of ``checkpoint`` (the run's pruning step ``step``) under ``experiment_id``.

    The run's metrics at ``step`` must be logged already: MLflow links them to the model. ``tags`` add to
    ``trial``/``step``/``run_name``; put ``learner``, ``criterion``, ``rank`` and ``on_front`` there.
    """
    import mlflow
    import mlflow.pytorch
    import torch
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    from spa.data import input_size as dataset_input_size
    from spa.export import checkpoint_config, deployable_model, kept_channels

    started = time.perf_counter()
    config = checkpoint_config(checkpoint)
    model = deployable_model(checkpoint)
    example = example_input(dataset_input_size(config.data.dataset))
    with torch.inference_mode():
        logits = model(torch.from_numpy(example))
    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, *example.shape[1:]))]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, logits.shape[1]))]),
    )
    name = model_name(run_name, step)
    all_tags = {**{k: str(v) for k, v in tags.items()}, "trial": run_name, "run_name": run_name, "step": str(step)}
    logged = client.create_logged_model(
        experiment_id=experiment_id,
        name=name,
        source_run_id=run_id,
        tags=all_tags,
        params={str(k): str(v) for k, v in params.items()},
        model_type="pruned-resnet",
    )
    with tempfile.TemporaryDirectory(prefix="spa-model-") as scratch:
        with using_tracking_uri(client.tracking_uri):
            mlflow.pytorch.log_model(
                model,
                name=name,
                model_id=logged.model_id,
                run_id=run_id,
                step=step,
                signature=signature,
                input_example=example,
                serialization_format="pt2",
                # Given, not inferred: inferring loads the model in a subprocess (seconds per model).
                pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", f"mlflow=={mlflow.__version__}"],
                # The signature already fixes the input; validating the example would load the model once more.
                validate_serving_input=False,
            )
        picture = write_channels_png(kept_channels(checkpoint), Path(scratch) / CHANNELS_PICTURE, name)
        client.log_model_artifact(logged.model_id, str(picture))
        size = _model_size(client, logged.model_id)
    return LoggedStepModel(logged.model_id, name, time.perf_counter() - started, size)


def _model_size(client: MlflowClient, model_id: str) -> int:
    model = client.get_logged_model(model_id)
    # MLflow records the size of the saved model directory in the MLmodel file; read it back from the model's
    # local artifact location when there is one (a server's store is not ours to walk).
    location = model.artifact_location
    if location.startswith("file://") or "://" not in location:
        from urllib.parse import unquote, urlparse

        path = Path(unquote(urlparse(location).path)) if "://" in location else Path(location)
        if path.is_dir():
            return _directory_size(path)
    return -1


def set_on_front(client: MlflowClient, model_id: str, on_front: bool) -> None:
    client.set_logged_model_tags(model_id, {ON_FRONT_TAG: "true" if on_front else "false"})


def write_channels_png(layers: Sequence[LayerChannels], path: str | os.PathLike[str], title: str) -> Path:
    """Bars per conv, in network order: the unpruned network's output channels (light) and those kept (dark);
    convs the global ranking cut to a single channel are marked red."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from spa.files import write_atomically

    names = [layer.name for layer in layers]
    positions = np.arange(len(layers))
    figure = Figure(figsize=(8, max(3.0, 0.22 * len(layers) + 1.2)), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.barh(positions, [layer.total for layer in layers], color="#d0d7e1", label="unpruned")
    colors = ["#c0392b" if layer.kept <= 1 else "#2c5d8f" for layer in layers]
    axes.barh(positions, [layer.kept for layer in layers], color=colors, label="kept")
    for position, layer in zip(positions, layers, strict=True):
        axes.text(layer.total, position, f" {layer.kept}/{layer.total}", va="center", fontsize=7)
    axes.set_yticks(positions, names, fontsize=7)
    axes.invert_yaxis()
    axes.set_xlabel("output channels")
    kept = sum(layer.kept for layer in layers)
    total = sum(layer.total for layer in layers)
    axes.set_title(f"{title}: {kept}/{total} conv channels kept ({kept / max(total, 1):.0%})", fontsize=9)
    axes.legend(fontsize="small", loc="upper right")
    figure.tight_layout()
    return write_atomically(path, lambda temporary: figure.savefig(temporary, format="png"))
