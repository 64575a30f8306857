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

Loading rejects, with one line naming the file, the key and what is allowed, everything a trial would otherwise
trip over hours later: unknown keys, bad types and bounds, and values ``ExperimentConfig`` refuses (every fixed
setting, every parameter at its low and high end, every categorical choice).
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spa.config import ConfigError, ExperimentConfig
from spa.metrics import EXTRA_METRIC_NAMES, METRIC_NAMES
from spa.schedules import density_schedule

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

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

# What spa.experiment.run_experiment reports after every pruning step (kept here so that loading a space does not
# import the training code).
# Every reported metric, the schedule's target next to the density it aims at.
OBJECTIVE_METRICS = (*METRIC_NAMES[:2], EXTRA_METRIC_NAMES[0], *METRIC_NAMES[2:], EXTRA_METRIC_NAMES[1])
MODES = ("max", "min")
PARAM_KINDS = ("int", "float", "categorical")
_TOP_KEYS = ("description", "fixed", "params", "objectives")
_PARAM_KEYS = ("type", "low", "high", "log", "step", "choices")
_OBJECTIVE_KEYS = ("metric", "mode")


def _default_spaces_dir() -> Path:
    # An explicit SPA_SPACES_DIR wins; otherwise the repository's search_spaces/ beside the package (an editable
    # install or a checkout). A non-editable install has no such directory: set SPA_SPACES_DIR there.
    configured = os.environ.get("SPA_SPACES_DIR")
    if configured:
        return Path(configured).expanduser()
    return Path(__file__).resolve().parents[1] / "search_spaces"


SPACES_DIR: Path = _default_spaces_dir()


class SpaceError(ValueError):
    """A search-space file that cannot be used; the message is one line naming the file, the key and what is allowed."""


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


@dataclass(frozen=True)
class Objective:
    metric: str
    mode: str  # "max" | "min"

    @property
    def direction(self) -> str:
        """Optuna's word for the mode."""
        return "maximize" if self.mode == "max" else "minimize"


DEFAULT_OBJECTIVES = (Objective("val_accuracy", "max"), Objective("learned_params", "min"))


@dataclass(frozen=True)
class SearchSpace:
    """A validated search space: ``fixed`` settings plus searched ``params``, and the ``objectives`` to trade off."""

    name: str
    path: Path
    description: str
    fixed: Mapping[str, Any]
    params: tuple[Param, ...]
    objectives: tuple[Objective, ...] = DEFAULT_OBJECTIVES

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


def list_spaces() -> list[str]:
    """The names of the spaces in ``SPACES_DIR``, sorted; empty when the directory does not exist."""
    if not SPACES_DIR.is_dir():
        return []
    return sorted(path.stem for path in SPACES_DIR.glob("*.toml"))


def load_space(name_or_path: str | os.PathLike[str]) -> SearchSpace:
    """Load and validate a space: a name in ``SPACES_DIR`` (``"splora_lrp"``) or a path to a ``.toml`` file."""
    path = _resolve(name_or_path)
    try:
        with path.open("rb") as file:
            data = tomllib.load(file)
    except tomllib.TOMLDecodeError as error:
        raise _error(path, f"not valid TOML: {error}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise _error(path, f"cannot be read: {error}") from None
    return _parse(data, path)


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


def _display(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _error(path: Path, message: str) -> SpaceError:
    return SpaceError(f"{_display(path)}: {' '.join(str(message).split())}")


def _resolve(name_or_path: str | os.PathLike[str]) -> Path:
    text = os.fspath(name_or_path)
    looks_like_path = text.endswith(".toml") or os.sep in text or "/" in text
    if looks_like_path:
        path = Path(text).expanduser()
        if not path.is_file():
            raise SpaceError(f"{text}: no such search-space file; allowed: a .toml file, or one of {_names_hint()}")
        return path
    path = SPACES_DIR / f"{text}.toml"
    if not path.is_file():
        raise SpaceError(f"unknown search space {text!r}; allowed: {_names_hint()}")
    return path


def _names_hint() -> str:
    names = list_spaces()
    if not names:
        return f"none found in {SPACES_DIR} (set SPA_SPACES_DIR to the repository's search_spaces/)"
    return ", ".join(names)


def _parse(data: dict[str, Any], path: Path) -> SearchSpace:
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

    space = SearchSpace(
        name=path.stem,
        path=path,
        description=description,
        fixed=_ReadOnlyDict(fixed),
        params=tuple(params),
        objectives=_parse_objectives(path, data.get("objectives")),
    )
    _check_values(space)
    return space


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


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
    is_bound = _is_int if kind == "int" else _is_number
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
        if kind == "int" and not (_is_int(step) and step >= 1):
            raise _error(path, f"{key}.step={step!r} is not allowed with type = 'int'; allowed: an integer >= 1")
        if kind == "float" and not (_is_number(step) and step > 0):
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


def _refusal(flat: dict[str, Any], *, schedule: bool = True) -> str | None:
    """Why ``flat`` does not make an experiment, or None when it does."""
    try:
        config = ExperimentConfig.from_flat(flat)
        _check_dataset(config.data.dataset)
        prune = config.prune
        if schedule and prune.densities is None:  # the schedule is only built at run time: check it now
            density_schedule(prune.final_density, prune.steps, prune.shape)
    except (ConfigError, ValueError, TypeError) as error:
        return str(error)
    return None


def _allowed(refusal: str) -> str:
    # ConfigError messages read "name=value is not allowed; allowed: WHAT": keep WHAT.
    return refusal.split("; allowed: ", 1)[1] if "; allowed: " in refusal else refusal


def _check_dataset(name: str) -> None:
    from spa.data import dataset_names  # local: torchvision is only needed once a dataset is named

    names = dataset_names()
    if name not in names and not str(name).startswith("imagefolder:"):
        raise ConfigError(f"dataset={name!r} is not allowed; allowed: {', '.join(names)}, imagefolder:PATH")
