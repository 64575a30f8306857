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

Loading rejects, with one line naming the file, the key and what is allowed, everything a trial would otherwise
trip over hours later: unknown keys, bad types and bounds, and values ``ExperimentConfig`` refuses (every fixed
setting, every parameter at its low and high end, every categorical choice).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spa.config import ConfigError, ExperimentConfig
from spa.schedules import density_schedule
from spa.validation import is_finite_number, is_int
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

PARAM_KINDS = ("int", "float", "categorical")
_TOP_KEYS = ("description", "fixed", "params", "objectives", "constraints", "extends")
_PARAM_KEYS = ("type", "low", "high", "log", "step", "choices")
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
class Param:
    """One searched setting: ``kind`` "int" or "float" with ``low``/``high`` (``log``, ``step``), or
    "categorical" with ``choices``."""

    name: str
    kind: str
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple[Any, ...] | None = None

    def extremes(self) -> list[tuple[str, Any]]:
        """The values that must all make a valid experiment: (label, value) for low and high, or each choice."""
        if self.kind == "categorical":
            return [(f"choices[{i}]", choice) for i, choice in enumerate(self.choices or ())]
        return [("low", self.low), ("high", self.high)]

    def distribution(self) -> optuna.distributions.BaseDistribution:
        from optuna import distributions  # local: loading a space needs no optuna

        if self.kind == "int":
            return distributions.IntDistribution(self.low, self.high, log=self.log, step=self.step or 1)
        if self.kind == "float":
            return distributions.FloatDistribution(self.low, self.high, log=self.log, step=self.step)
        return distributions.CategoricalDistribution(self.choices)

    def spec(self) -> dict[str, Any]:
        """The parameter's table in a space file."""
        if self.kind == "categorical":
            return {"type": self.kind, "choices": list(self.choices or ())}
        spec = {"type": self.kind, "low": self.low, "high": self.high}
        if self.log:
            spec["log"] = True
        if self.step is not None:
            spec["step"] = self.step
        return spec


@dataclass(frozen=True)
class SearchSpace:
    """A validated search space: ``fixed`` settings plus searched ``params``, and the ``objectives`` to trade off."""

    name: str
    path: Path
    description: str
    fixed: Mapping[str, Any]
    params: tuple[Param, ...]
    objectives: tuple[Objective, ...] = DEFAULT_OBJECTIVES
    constraints: Constraints = Constraints()

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

        The driver pins, say, the dataset, the architecture or a smoke-test budget this way. Validated as on load.
        """
        settings = ExperimentConfig.field_names()
        unknown = sorted(set(fixed) - set(settings))
        if unknown:
            raise _error(self.path, f"override {unknown[0]} is not a setting; allowed: {', '.join(sorted(settings))}")
        space = replace(
            self,
            fixed=_ReadOnlyDict({**self.fixed, **fixed}),
            params=tuple(param for param in self.params if param.name not in fixed),
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
        }
        return toml_text(data, header=header)


def load_space(name_or_path: str | os.PathLike[str]) -> SearchSpace:
    """Load and validate a space: a name in ``SPACES_DIR`` (``"splora_lrp"``) or a path to a ``.toml`` file, with
    the bases it extends merged in (``study.space_files``)."""
    path = resolve(name_or_path)
    return _parse(read(path, check=_structure), path)


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
        params.append(_parse_param(path, name, spec))
    parse_constraints(data.get("constraints"), lambda message: _error(path, message))  # each file, before merging
    return description, dict(fixed), tuple(params), _parse_objectives(path, data.get("objectives"))


def _parse_param(path: Path, name: str, spec: Any) -> Param:
    key = f"params.{name}"
    if not isinstance(spec, dict):
        raise _error(path, f"{key}={spec!r} is not allowed; allowed: a table with type = int, float or categorical")
    for field in spec:
        if field not in _PARAM_KEYS:
            raise _error(path, f"{key}.{field} is not a parameter key; allowed: {', '.join(_PARAM_KEYS)}")
    kind = spec.get("type")
    if kind not in PARAM_KINDS:
        raise _error(path, f"{key}.type={kind!r} is not allowed; allowed: {', '.join(PARAM_KINDS)}")

    if kind == "categorical":
        for field in ("low", "high", "log", "step"):
            if field in spec:
                raise _error(path, f"{key}.{field} is not allowed with type = 'categorical'; allowed: type, choices")
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise _error(path, f"{key}.choices={choices!r} is not allowed; allowed: a non-empty list")
        for choice in choices:
            if not isinstance(choice, (str, bool, int, float)):
                raise _error(path, f"{key}.choices holds {choice!r}; allowed: strings, numbers, booleans")
        if len(set(map(repr, choices))) != len(choices):
            raise _error(path, f"{key}.choices={choices!r} repeats a choice; allowed: distinct choices")
        return Param(name=name, kind=kind, choices=tuple(choices))

    if "choices" in spec:
        raise _error(path, f"{key}.choices is not allowed with type = {kind!r}; allowed: low, high, log, step")
    is_bound = is_int if kind == "int" else is_finite_number
    what = "an integer" if kind == "int" else "a finite number"
    bounds = {}
    for field in ("low", "high"):
        if field not in spec:
            raise _error(path, f"{key}.{field} is missing; allowed: {what}")
        if not is_bound(spec[field]):
            raise _error(path, f"{key}.{field}={spec[field]!r} is not allowed with type = {kind!r}; allowed: {what}")
        bounds[field] = spec[field] if kind == "int" else float(spec[field])
    low, high = bounds["low"], bounds["high"]
    if low >= high:
        raise _error(path, f"{key}.low={low!r} >= {key}.high={high!r}; allowed: low < high")
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise _error(path, f"{key}.log={log!r} is not allowed; allowed: true, false")
    if log and low <= 0:
        raise _error(path, f"{key}.low={low!r} is not allowed with log = true; allowed: a number > 0")
    step = spec.get("step")
    if step is not None:
        if log:
            raise _error(path, f"{key}.step is not allowed with log = true; allowed: step or log, not both")
        if kind == "int" and not (is_int(step) and step >= 1):
            raise _error(path, f"{key}.step={step!r} is not allowed with type = 'int'; allowed: an integer >= 1")
        if kind == "float" and not (is_finite_number(step) and step > 0):
            raise _error(path, f"{key}.step={step!r} is not allowed; allowed: a finite number > 0")
        count = (high - low) / step
        if abs(count - round(count)) > 1e-9 * max(1.0, abs(count)):
            raise _error(path, f"{key}.high={high!r} is not low + a whole number of steps of {step!r}; allowed: such")
        step = step if kind == "int" else float(step)
    return Param(name=name, kind=kind, low=low, high=high, log=log, step=step)


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
