"""``python -m study.report``: what a study found, read back from its MLflow experiment.

Prints (a) the Pareto front over the trials (each trial's final values; every reported step with ``--all-steps``)
and (b) a table shaped like the paper's Table 1: criterion x learner ("FP" or "SPLoRA r{rank}") x density ->
test accuracy (mean±std, percent), learned parameters (thousands), FLOPs (millions) and the number of points.
Every pruning step of every trial counts in (b), bucketed by the density it measured.

The trials are the experiment's child runs that FINISHED, read back by ``study.records``.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from spa.config import CRITERIA_NAMES
from spa.files import write_atomically
from study.logged_models import model_uri, step_models
from study.names import DEFAULT_OBJECTIVES, DEFAULT_TRACKING_URI, FINAL_STEP, MODES
from study.pareto import front_frame, front_text, write_front_html, write_front_png
from study.records import POINT_METRICS, load_points

if TYPE_CHECKING:
    from mlflow import MlflowClient

__all__ = [
    "build_parser",
    "final_points",
    "learner_label",
    "table1",
    "table1_text",
    "export_front_models",
    "EXPORT_INDEX",
    "main",
]

# Table 1 has one row per (criterion, learner, density bucket); each value column is (point column, aggregation).
_TABLE1_KEYS = ("criterion", "learner", "density")
_TABLE1_VALUES = {
    "test_accuracy": ("test_accuracy", "mean"),
    "test_accuracy_std": ("test_accuracy", "std"),
    "learned_params_k": ("learned_params_k", "mean"),
    "flops_m": ("flops_m", "mean"),
    "n": ("test_accuracy", "size"),
}
TABLE1_COLUMNS = (*_TABLE1_KEYS, *_TABLE1_VALUES)


# --- computing ---------------------------------------------------------------------------------------------------


def final_points(points: pd.DataFrame) -> pd.DataFrame:
    """Each trial's final values: its last reported step, unless it reported a ``final_step`` it never reached."""
    if points.empty:
        return points
    last = points.groupby("run_id", sort=False)["step"].transform("max")
    final = points[points["step"] == last].drop_duplicates("run_id", keep="last")
    stopped_early = final[FINAL_STEP].notna() & (final["step"] < final[FINAL_STEP])
    return final[~stopped_early].reset_index(drop=True)


def learner_label(learner: str, rank: Any) -> str:
    """The paper's row label: "FP" for fine-pruning, "SPLoRA r{rank}" for adapters."""
    if learner == "finetune":
        return "FP"
    if learner == "splora":
        return "SPLoRA" if rank is None or pd.isna(rank) else f"SPLoRA r{int(rank)}"
    return str(learner)


def table1(points: pd.DataFrame, *, buckets: Sequence[float] | None = None) -> pd.DataFrame:
    """The paper's Table 1 over every (run, step) point: one row per criterion x learner x density bucket.

    The bucket of a point is its measured density rounded to 2 decimals, or with ``buckets`` the nearest of those.
    Columns ``TABLE1_COLUMNS``: test accuracy mean and sample std (ddof 1; empty for n=1) in percent, learned
    parameters in thousands and FLOPs in millions (means), n points. Ordered as the paper: criterion, then FP before
    SPLoRA by rank, then density from dense to sparse.
    """
    usable = points.dropna(subset=["density", "test_accuracy", "learner", "criterion"])
    if usable.empty:
        return pd.DataFrame({column: pd.Series(dtype=float) for column in TABLE1_COLUMNS})
    density = usable["density"].astype(float).to_numpy()
    if buckets is None:
        bucket = np.round(density, 2)
    else:
        choices = np.asarray(sorted(buckets, reverse=True), dtype=float)
        bucket = choices[np.abs(density[:, None] - choices[None, :]).argmin(axis=1)]
    frame = pd.DataFrame(
        {
            "criterion": usable["criterion"].astype(str).to_numpy(),
            "learner": [learner_label(lr, rk) for lr, rk in zip(usable["learner"], usable["rank"], strict=True)],
            "density": bucket,
            "test_accuracy": usable["test_accuracy"].astype(float).to_numpy() * 100,
            "learned_params_k": usable["learned_params"].astype(float).to_numpy() / 1e3,
            "flops_m": usable["flops"].astype(float).to_numpy() / 1e6,
        }
    )
    table = frame.groupby(list(_TABLE1_KEYS), sort=False).agg(**_TABLE1_VALUES).reset_index()
    criterion_order = {name: index for index, name in enumerate(CRITERIA_NAMES)}
    table["_criterion"] = table["criterion"].map(lambda c: (criterion_order.get(c, len(criterion_order)), c))
    table["_learner"] = table["learner"].map(_learner_order)
    table = table.sort_values(["_criterion", "_learner", "density"], ascending=[True, True, False], kind="mergesort")
    return table[list(TABLE1_COLUMNS)].reset_index(drop=True)


def _learner_order(label: str) -> tuple[int, int, str]:
    if label == "FP":
        return (0, 0, label)
    if label.startswith("SPLoRA r"):
        return (1, int(label.removeprefix("SPLoRA r")), label)
    return (2, 0, label)


# --- printing ----------------------------------------------------------------------------------------------------


def table1_text(table: pd.DataFrame) -> str:
    """Table 1 as printed: accuracy "mean±std" in percent, learned parameters in k, FLOPs in M."""

    def accuracy(mean: float, std: float) -> str:
        return f"{mean:.2f}" if math.isnan(std) else f"{mean:.2f}±{std:.2f}"

    cells = pd.DataFrame(
        {
            "criterion": table["criterion"],
            "learner": table["learner"],
            "density": [f"{d:.2f}" for d in table["density"]],
            "test acc. (%)": [
                accuracy(m, s) for m, s in zip(table["test_accuracy"], table["test_accuracy_std"], strict=True)
            ],
            "learned params (k)": [f"{v:,.1f}" for v in table["learned_params_k"]],
            "FLOPs (M)": [f"{v:,.1f}" for v in table["flops_m"]],
            "n": [str(int(n)) for n in table["n"]],
        }
    )
    return cells.to_string(index=False)


# --- command -----------------------------------------------------------------------------------------------------


def _objective(text: str) -> tuple[str, str]:
    metric, _, mode = text.partition(":")
    if metric not in POINT_METRICS or mode not in MODES:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not METRIC:MODE; allowed metrics: {', '.join(POINT_METRICS)}; modes: {', '.join(MODES)}"
        )
    return metric, mode


def _densities(text: str) -> list[float]:
    try:
        values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        values = []
    if not values or not all(0 < v <= 1 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of densities in (0, 1]")
    return values


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m study.report",
        description="Print the Pareto front of a study's trials and a table shaped like the paper's Table 1, "
        "read from the study's MLflow experiment.",
    )
    parser.add_argument("--experiment-name", required=True, help="the MLflow experiment of the study (required)")
    parser.add_argument(
        "--tracking-uri",
        default=None,
        help=f"MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else {DEFAULT_TRACKING_URI})",
    )
    parser.add_argument(
        "--csv", type=Path, default=None, help="also write the Table-1 table to this CSV file (default: none)"
    )
    parser.add_argument(
        "--all-steps",
        action="store_true",
        help="front over every reported pruning step of every trial, not only each trial's final values (default: off)",
    )
    parser.add_argument(
        "--objective",
        dest="objectives",
        action="append",
        type=_objective,
        default=None,
        metavar="METRIC:MODE",
        help=f"an objective of the front; repeat for several (default: {' '.join(map(str, DEFAULT_OBJECTIVES))})",
    )
    parser.add_argument(
        "--buckets",
        type=_densities,
        default=None,
        metavar="D1,D2,...",
        help="group Table-1 densities to the nearest of these, e.g. 0.3,0.1 "
        "(default: the measured densities rounded to 2 decimals)",
    )
    parser.add_argument("--html", type=Path, default=None, help="also draw the front to this HTML file (default: none)")
    parser.add_argument("--png", type=Path, default=None, help="also draw the front to this PNG file (default: none)")
    parser.add_argument(
        "--export",
        type=Path,
        default=None,
        metavar="DIR",
        help="also download the logged model of every front member into DIR/<model name>/ and write DIR/index.csv "
        "(default: none)",
    )
    return parser


EXPORT_INDEX = "index.csv"


def export_front_models(client: MlflowClient, experiment_id: str, front: pd.DataFrame, directory: Path) -> pd.DataFrame:
    """Download the logged model of each front point (run, step) into ``directory``; returns (and writes) the index.

    A point without a logged model (a study recorded before models were logged) is listed with an empty path."""
    import mlflow.artifacts

    models = step_models(client, experiment_id)
    rows = []
    directory.mkdir(parents=True, exist_ok=True)
    for point in front.to_dict("records"):
        model = models.get((point["run_id"], int(point["step"])))
        row = {
            "model_name": model.name if model else "",
            "model_id": model.model_id if model else "",
            "model_uri": model_uri(model.model_id) if model else "",
            "path": "",
            **{c: point.get(c) for c in ("run_name", "run_id", "step", "learner", "criterion", "rank", *POINT_METRICS)},
        }
        if model is not None:
            target = directory / model.name
            # The model's artifact location, not "models:/<id>": that is resolved through the process-wide tracking
            # URI, this one through the client's (a server's mlflow-artifacts:/ location included).
            scratch = directory / f".{model.name}.download"
            shutil.rmtree(scratch, ignore_errors=True)
            local = mlflow.artifacts.download_artifacts(
                artifact_uri=model.artifact_location, dst_path=str(scratch), tracking_uri=client.tracking_uri
            )
            shutil.rmtree(target, ignore_errors=True)
            shutil.move(local, target)  # the location's last folder ("artifacts") becomes DIR/<model name>
            shutil.rmtree(scratch, ignore_errors=True)
            row["path"] = str(target)
        rows.append(row)
    index = pd.DataFrame(rows)
    write_atomically(directory / EXPORT_INDEX, lambda temporary: index.to_csv(temporary, index=False))
    return index


def _sqlite_file(uri: str) -> Path | None:
    prefix = "sqlite:///"
    return Path(uri[len(prefix) :]) if uri.startswith(prefix) else None


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    uri = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    objectives = args.objectives or [(objective.metric, objective.mode) for objective in DEFAULT_OBJECTIVES]
    metrics, modes = [m for m, _ in objectives], [mode for _, mode in objectives]
    if (args.html or args.png) and len(metrics) < 2:
        print(
            f"error: --html/--png draw a front over two objectives; got {len(metrics)}: {', '.join(metrics)}",
            file=sys.stderr,
        )
        return 2
    database = _sqlite_file(uri)
    if database is not None and str(database) not in ("", ":memory:") and not database.is_file():
        # Opening a missing sqlite file would create an empty store here: refuse instead.
        print(f"error: no MLflow store at {uri} ({database} does not exist)", file=sys.stderr)
        return 2

    from mlflow import MlflowClient  # local: --help needs no MLflow

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(args.experiment_name)
    if experiment is None:
        names = sorted(e.name for e in client.search_experiments())
        known = ", ".join(names) or "none"
        print(
            f"error: no experiment named {args.experiment_name!r} at {uri}; experiments there: {known}", file=sys.stderr
        )
        return 2

    points = load_points(client, experiment.experiment_id)
    if points.empty:
        print(f"error: experiment {args.experiment_name!r} has no FINISHED trial runs yet", file=sys.stderr)
        return 1

    candidates = points if args.all_steps else final_points(points)
    front = front_frame(candidates.dropna(subset=metrics), metrics, modes)
    which = "every step of every trial" if args.all_steps else "each trial's final values"
    objective_text = ", ".join(f"{metric} ({mode})" for metric, mode in objectives)
    print(f"Pareto front over {which} of {args.experiment_name!r}: {objective_text}")
    print(f"{len(front)} of {len(candidates)} points on the front")
    print(front_text(front, points, metrics))

    table = table1(points, buckets=args.buckets)
    runs = points["run_id"].nunique()
    print()
    print(f"Table 1 over {len(points)} points (every step) of {runs} finished trials: test accuracy mean±std")
    print(table1_text(table))

    title = f"{args.experiment_name}: {objective_text}"
    if args.csv is not None:
        write_atomically(args.csv, lambda temporary: table.to_csv(temporary, index=False))
        print(f"\nwrote {args.csv}")
    if args.html is not None:
        write_front_html(candidates, front, metrics, modes, args.html, title)
        print(f"wrote {args.html}")
    if args.png is not None:
        write_front_png(candidates, front, metrics, modes, args.png, title)
        print(f"wrote {args.png}")
    if args.export is not None:
        index = export_front_models(client, experiment.experiment_id, front, args.export)
        exported = int((index["path"] != "").sum()) if len(index) else 0
        print(
            f"exported {exported} of {len(index)} front models to {args.export} (index: {args.export / EXPORT_INDEX})"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
