"""Search spaces: TOML files under ``search_spaces/``, loaded and validated into a ``SearchSpace``.

A file is data, nothing else::

    description = "SPLoRA with the weight criterion"

    [fixed]                    # flat ExperimentConfig settings every trial gets as they are
    learner = "splora"
    epochs = 3

    [params.rank]              # a searched setting and its distribution
    type = "int"               # "int" | "float" | "categorical"
    low = 2
    high = 64
    log = true                 # optional, default false
    # step = 2                 # optional (int/float, not together with log)

    [params.shape]
    type = "categorical"
    choices = ["linear", "geometric"]

    [[objectives]]             # optional; default: maximise val_accuracy, then minimise learned_params
    metric = "val_accuracy"
    mode = "max"

    [constraints]              # optional: what a trial must reach to count (study.constraints)
    min_val_accuracy = 0.6

    [[start_points]]           # optional: trials evaluated first (study.start_points)
    rank = 1

Loading rejects, with one line naming the file, the key and what is allowed, everything a trial would otherwise
trip over hours later: unknown keys, bad types and bounds, and values ``ExperimentConfig`` refuses (every fixed
setting, every parameter at its low and high end, every categorical choice, every start point).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spa.config import ConfigError, ExperimentConfig
from spa.schedules import density_schedule
from study.constraints import Constraints, parse_constraints
from study.names import DEFAULT_OBJECTIVES, MODES, OBJECTIVE_METRICS, Objective
from study.space_files import (
    SPACES_DIR,
    SpaceError,
    _default_spaces_dir,  # noqa: F401 - where SPACES_DIR comes from, for tests
    list_spaces,
    read,
    resolve,
    toml_text,
)
from study.space_files import file_error as _error
from study.space_params import Param, parse_param
from study.start_points import KEY as START_POINTS
from study.start_points import check_structure, parse_start_points, without

if TYPE_CHECKING:
    import optuna

__all__ = [
    "SpaceError",
    "Param",
    "Objective",
    "SearchSpace",
    "SPACES_DIR",
    "OBJECTIVE_METRICS",
    "DEFAULT_OBJECTIVES",
    "list_spaces",
    "load_space",
    "optuna_distributions",
    "suggest",
]

_TOP_KEYS = ("description", "fixed", "params", "objectives", "constraints", START_POINTS, "extends")
_OBJECTIVE_KEYS = ("metric", "mode")


class _ReadOnlyDict(Mapping[str, Any]):
    """A read-only mapping that, unlike ``types.MappingProxyType``, pickles (Ray pickles what trials receive)."""

    def __init__(self, data: Mapping[str, Any] | None = None) -> None:
        self._data = dict(data or {})

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        return repr(self._data)


@dataclass(frozen=True)
class SearchSpace:
    """A validated search space: ``fixed`` settings plus searched ``params``, the ``objectives`` to trade off, and
    the ``start_points`` to evaluate first (each a dict of searched parameters' values)."""

    name: str
    path: Path
    description: str
    fixed: Mapping[str, Any]
    params: tuple[Param, ...]
    objectives: tuple[Objective, ...] = DEFAULT_OBJECTIVES
    constraints: Constraints = Constraints()
    start_points: tuple[Mapping[str, Any], ...] = ()

    @property
    def metrics(self) -> list[str]:
        return [objective.metric for objective in self.objectives]

    @property
    def modes(self) -> list[str]:
        return [objective.mode for objective in self.objectives]

    @property
    def directions(self) -> list[str]:
        return [objective.direction for objective in self.objectives]

    def with_overrides(self, fixed: Mapping[str, Any]) -> SearchSpace:
        """A copy in which ``fixed`` values win; a key that was searched is pinned (removed from ``params``).

        The driver pins, say, the dataset, the architecture or a smoke-test budget this way; a pinned key leaves the
        start points. Validated as on load.
        """
        settings = ExperimentConfig.field_names()
        unknown = sorted(set(fixed) - set(settings))
        if unknown:
            raise _error(self.path, f"override {unknown[0]} is not a setting; allowed: {', '.join(sorted(settings))}")
        space = replace(
            self,
            fixed=_ReadOnlyDict({**self.fixed, **fixed}),
            params=tuple(param for param in self.params if param.name not in fixed),
            start_points=tuple(map(_ReadOnlyDict, without(self.start_points, fixed))),
        )
        _check_values(space, overridden=frozenset(fixed))
        return space

    def to_toml(self, *, header: str = "") -> str:
        """The space with its bases merged in, as one file that ``load_space`` reads back to an equal space."""
        data = {
            "description": self.description,
            "fixed": dict(self.fixed),
            "params": {param.name: param.spec() for param in self.params},
            "objectives": [{"metric": objective.metric, "mode": objective.mode} for objective in self.objectives],
            "constraints": self.constraints.spec(),
            START_POINTS: [dict(point) for point in self.start_points],
        }
        return toml_text(data, header=header)


def load_space(name_or_path: str | os.PathLike[str]) -> SearchSpace:
    """Load and validate a space: a name in ``SPACES_DIR`` (``"splora_lrp"``) or a path to a ``.toml`` file, with
    the bases it extends merged in (``study.space_files``)."""
    path = resolve(name_or_path)
    return _parse(read(path, check=_structure, takes=_takes), path)


def _takes(name: str, spec: Any, value: Any) -> bool:
    """Whether the parameter of table ``spec`` (checked by ``_structure``) can take the start-point ``value``."""
    return parse_param(name, spec, SpaceError).refusal(value) is None


def optuna_distributions(space: SearchSpace) -> dict[str, optuna.distributions.BaseDistribution]:
    """The searched parameters as Optuna distributions (for ``OptunaSearch(space=...)`` or ``create_trial``)."""
    return {param.name: param.distribution() for param in space.params}


def suggest(space: SearchSpace, trial: optuna.Trial) -> dict[str, Any]:
    """Define-by-run: sample every searched parameter on ``trial``; returns fixed + sampled values as one flat dict."""
    values = dict(space.fixed)
    for param in space.params:
        if param.kind == "int":
            values[param.name] = trial.suggest_int(
                param.name, param.low, param.high, step=param.step or 1, log=param.log
            )
        elif param.kind == "float":
            values[param.name] = trial.suggest_float(param.name, param.low, param.high, step=param.step, log=param.log)
        else:
            values[param.name] = trial.suggest_categorical(param.name, list(param.choices))
    return values


# --- loading ---------------------------------------------------------------------------------------------------


def _parse(data: Mapping[str, Any], path: Path) -> SearchSpace:
    description, fixed, params, objectives = _structure(data, path)
    space = SearchSpace(
        name=path.stem,
        path=path,
        description=description,
        fixed=_ReadOnlyDict(fixed),
        params=params,
        objectives=objectives,
        constraints=parse_constraints(data.get("constraints"), lambda message: _error(path, message)),
        start_points=tuple(
            map(_ReadOnlyDict, parse_start_points(data.get(START_POINTS), params, fixed, partial(_error, path)))
        ),
    )
    _check_values(space)
    return space


def _structure(
    data: Mapping[str, Any], path: Path
) -> tuple[str, dict[str, Any], tuple[Param, ...], tuple[Objective, ...]]:
    """Keys, types and bounds of one file's data (values are judged by ``_check_values``)."""
    unknown = [key for key in data if key not in _TOP_KEYS]
    if unknown:
        raise _error(path, f"unknown top-level key {unknown[0]!r}; allowed: {', '.join(_TOP_KEYS)}")
    description = data.get("description", "")
    if not isinstance(description, str):
        raise _error(path, f"description={description!r} is not allowed; allowed: a string")

    settings = ExperimentConfig.field_names()
    allowed_settings = ", ".join(sorted(settings))
    fixed = data.get("fixed", {})
    if not isinstance(fixed, dict):
        raise _error(path, f"fixed={fixed!r} is not allowed; allowed: a table [fixed] of settings")
    for key in fixed:
        if key not in settings:
            raise _error(path, f"fixed.{key} is not a setting; allowed: {allowed_settings}")

    table = data.get("params", {})
    if not isinstance(table, dict):
        raise _error(path, f"params={table!r} is not allowed; allowed: tables [params.NAME]")
    params = []
    for name, spec in table.items():
        if name not in settings:
            raise _error(path, f"params.{name} is not a setting; allowed: {allowed_settings}")
        if name in fixed:
            raise _error(path, f"params.{name} is both fixed and searched; allowed: one of fixed.{name}, params.{name}")
        params.append(parse_param(name, spec, partial(_error, path)))
    parse_constraints(data.get("constraints"), lambda message: _error(path, message))  # each file, before merging
    check_structure(data.get(START_POINTS), lambda message: _error(path, message))
    return description, dict(fixed), tuple(params), _parse_objectives(path, data.get("objectives"))


def _parse_objectives(path: Path, raw: Any) -> tuple[Objective, ...]:
    if raw is None:
        return DEFAULT_OBJECTIVES
    if not isinstance(raw, list) or not all(isinstance(item, dict) for item in raw):
        raise _error(path, f"objectives={raw!r} is not allowed; allowed: [[objectives]] tables with metric and mode")
    if not raw:
        raise _error(path, "objectives=[] is not allowed; allowed: at least one [[objectives]] table")
    objectives: list[Objective] = []
    for index, item in enumerate(raw):
        key = f"objectives[{index}]"
        for field in item:
            if field not in _OBJECTIVE_KEYS:
                raise _error(path, f"{key}.{field} is not an objective key; allowed: {', '.join(_OBJECTIVE_KEYS)}")
        metric, mode = item.get("metric"), item.get("mode")
        if metric not in OBJECTIVE_METRICS:
            raise _error(path, f"{key}.metric={metric!r} is not allowed; allowed: {', '.join(OBJECTIVE_METRICS)}")
        if mode not in MODES:
            raise _error(path, f"{key}.mode={mode!r} is not allowed; allowed: {', '.join(MODES)}")
        if metric in [objective.metric for objective in objectives]:
            raise _error(path, f"{key}.metric={metric!r} repeats an earlier objective; allowed: each metric once")
        objectives.append(Objective(metric, mode))
    return tuple(objectives)


def _check_values(space: SearchSpace, *, overridden: frozenset[str] = frozenset()) -> None:
    """Build an ExperimentConfig from every value a trial could get; a refusal becomes a SpaceError."""
    fixed = dict(space.fixed)
    refusal = _refusal(fixed)
    if refusal is not None:
        for key, value in fixed.items():  # name the culprit when one setting is impossible on its own
            alone = _refusal({key: value}, schedule=False)
            if alone is not None:
                name = f"override {key}" if key in overridden else f"fixed.{key}"
                raise _error(space.path, f"{name}={value!r} is not allowed; allowed: {_allowed(alone)}")
        raise _error(space.path, f"the fixed settings do not make a valid experiment: {refusal}")
    for param in space.params:
        for which, value in param.extremes():
            refusal = _refusal({**fixed, param.name: value})
            if refusal is not None:
                key = f"params.{param.name}.{which}"
                raise _error(space.path, f"{key}={value!r} is not allowed; allowed: {_allowed(refusal)}")
    for index, point in enumerate(space.start_points):
        refusal = _refusal({**fixed, **point})
        if refusal is not None:
            raise _error(space.path, f"{START_POINTS}[{index}] is not allowed: {refusal}")


def _refusal(flat: dict[str, Any], *, schedule: bool = True) -> ValueError | TypeError | None:
    """Why ``flat`` does not make an experiment, or None when it does."""
    try:
        config = ExperimentConfig.from_flat(flat)
        _check_dataset(config.data.dataset)
        prune = config.prune
        if schedule and prune.densities is None:  # the schedule is only built at run time: check it now
            density_schedule(prune.final_density, prune.steps, prune.shape)
    except (ConfigError, ValueError, TypeError) as error:
        return error
    return None


def _allowed(refusal: ValueError | TypeError) -> str:
    """What the refused setting may be: ``ConfigError.allowed``, else the whole message."""
    return getattr(refusal, "allowed", None) or str(refusal)


def _check_dataset(name: str) -> None:
    from spa.data import dataset_names  # local: torchvision is only needed once a dataset is named

    names = dataset_names()
    if name not in names and not str(name).startswith("imagefolder:"):
        raise ConfigError.not_allowed("dataset", name, f"{', '.join(names)}, imagefolder:PATH")
