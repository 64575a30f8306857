"""Typed, validated configuration of one experiment (train -> prune -> recover).

Frozen dataclasses checked in ``__post_init__``: an impossible value fails at construction with a one-line
message naming the field, the value and what is allowed. A Tune trial's flat dict becomes these once, at the edge
(``ExperimentConfig.from_flat``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from spa.schedules import SHAPES as SCHEDULE_SHAPES
from spa.validation import ConfigError, is_finite_number, is_int

__all__ = [
    "ConfigError",
    "DataConfig",
    "ModelConfig",
    "LearnerConfig",
    "OptimConfig",
    "PruneConfig",
    "RuntimeConfig",
    "ExperimentConfig",
    "LEARNERS",
    "CRITERIA_NAMES",
    "SCHEDULE_SHAPES",
    "OPTIMIZERS",
    "LR_SCHEDULES",
]

LEARNERS = ("finetune", "splora")
CRITERIA_NAMES = ("weight", "grad", "taylor", "lrp")
OPTIMIZERS = ("sgd", "adamw")
LR_SCHEDULES = ("step", "cosine", "constant")


def _require(condition: bool, field: str, value: Any, allowed: str) -> None:
    if not condition:
        raise ConfigError.not_allowed(field, value, allowed)


@dataclass(frozen=True)
class DataConfig:
    dataset: str = "digits"
    data_dir: str | None = None
    download: bool = False
    val_fraction: float = 0.1
    batch_size: int = 32
    num_workers: int = 0

    def __post_init__(self) -> None:
        _require(
            is_finite_number(self.val_fraction) and 0 < self.val_fraction < 1,
            "val_fraction",
            self.val_fraction,
            "a number in (0, 1)",
        )
        _require(is_int(self.batch_size) and self.batch_size >= 1, "batch_size", self.batch_size, "an integer >= 1")
        _require(is_int(self.num_workers) and self.num_workers >= 0, "num_workers", self.num_workers, "an integer >= 0")


@dataclass(frozen=True)
class ModelConfig:
    arch: str = "resnet18"
    weights: str = "pretrained-digits"  # "imagenet", "none", "pretrained-digits" or a state-dict path

    def __post_init__(self) -> None:
        from spa.models import ARCHITECTURES  # local: keep config import-light

        _require(self.arch in ARCHITECTURES, "arch", self.arch, ", ".join(ARCHITECTURES))
        if not (isinstance(self.weights, str) and self.weights != ""):
            raise ConfigError(
                f"weights={self.weights!r} must be a string", field="weights", allowed="a non-empty string"
            )


@dataclass(frozen=True)
class LearnerConfig:
    learner: str = "splora"
    rank: int = 8
    init_range: float = 1e-3

    def __post_init__(self) -> None:
        _require(self.learner in LEARNERS, "learner", self.learner, ", ".join(LEARNERS))
        _require(is_int(self.rank) and self.rank >= 1, "rank", self.rank, "an integer >= 1")
        _require(
            is_finite_number(self.init_range) and self.init_range > 0,
            "init_range",
            self.init_range,
            "a finite number > 0",
        )


@dataclass(frozen=True)
class OptimConfig:
    optimizer: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    lr_schedule: str = "step"
    epochs: int = 3
    recovery_epochs: int = 1

    def __post_init__(self) -> None:
        _require(self.optimizer in OPTIMIZERS, "optimizer", self.optimizer, ", ".join(OPTIMIZERS))
        _require(is_finite_number(self.lr) and self.lr > 0, "lr", self.lr, "a finite number > 0")
        _require(
            is_finite_number(self.momentum) and 0 <= self.momentum < 1, "momentum", self.momentum, "a number in [0, 1)"
        )
        _require(
            is_finite_number(self.weight_decay) and self.weight_decay >= 0,
            "weight_decay",
            self.weight_decay,
            "a number >= 0",
        )
        _require(self.lr_schedule in LR_SCHEDULES, "lr_schedule", self.lr_schedule, ", ".join(LR_SCHEDULES))
        _require(is_int(self.epochs) and self.epochs >= 0, "epochs", self.epochs, "an integer >= 0")
        _require(
            is_int(self.recovery_epochs) and self.recovery_epochs >= 0,
            "recovery_epochs",
            self.recovery_epochs,
            "an integer >= 0",
        )


@dataclass(frozen=True)
class PruneConfig:
    criterion: str = "lrp"
    norm: bool = True
    final_density: float = 0.3
    steps: int = 3
    shape: str = "geometric"
    densities: tuple[float, ...] | None = None  # an explicit schedule overrides final_density/steps/shape
    max_score_batches: int | None = None  # None: one full pass over the training data, as the reference

    def __post_init__(self) -> None:
        _require(self.criterion in CRITERIA_NAMES, "criterion", self.criterion, ", ".join(CRITERIA_NAMES))
        _require(
            is_finite_number(self.final_density) and 0 < self.final_density <= 1,
            "final_density",
            self.final_density,
            "a number in (0, 1]",
        )
        _require(is_int(self.steps) and self.steps >= 0, "steps", self.steps, "an integer >= 0")
        _require(self.shape in SCHEDULE_SHAPES, "shape", self.shape, ", ".join(SCHEDULE_SHAPES))
        if self.densities is not None:
            values = tuple(self.densities)
            object.__setattr__(self, "densities", values)
            _require(all(is_finite_number(d) and 0 < d <= 1 for d in values), "densities", values, "numbers in (0, 1]")
            _require(
                all(a > b for a, b in zip(values, values[1:], strict=False)),
                "densities",
                values,
                "a strictly decreasing list",
            )
        _require(
            self.max_score_batches is None or (is_int(self.max_score_batches) and self.max_score_batches >= 1),
            "max_score_batches",
            self.max_score_batches,
            "an integer >= 1 or None",
        )


@dataclass(frozen=True)
class RuntimeConfig:
    seed: int = 0
    device: str = "auto"  # "auto", "cpu", "cuda" or "cuda:N"
    threads: int | None = None
    bf16: bool = False
    deterministic: bool = False
    cache_dir: str | None = None  # where the pretrained digits backbone is cached

    def __post_init__(self) -> None:
        _require(is_int(self.seed) and self.seed >= 0, "seed", self.seed, "an integer >= 0")
        _require(
            self.device in ("auto", "cpu", "cuda") or str(self.device).startswith("cuda:"),
            "device",
            self.device,
            "auto, cpu, cuda, cuda:N",
        )
        _require(
            self.threads is None or (is_int(self.threads) and self.threads >= 1),
            "threads",
            self.threads,
            "an integer >= 1",
        )


@dataclass(frozen=True)
class ExperimentConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    prune: PruneConfig = field(default_factory=PruneConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)

    _SECTIONS = ("data", "model", "learner", "optim", "prune", "runtime")

    @classmethod
    def field_names(cls) -> dict[str, str]:
        """Flat key -> section, e.g. ``{"rank": "learner", "lr": "optim", ...}``."""
        names: dict[str, str] = {}
        for section in cls._SECTIONS:
            section_type = {f.name: f for f in dataclasses.fields(cls)}[section].default_factory
            for f in dataclasses.fields(section_type):
                names[f.name] = section
        return names

    @classmethod
    def from_flat(cls, flat: dict[str, Any]) -> ExperimentConfig:
        """Build from a flat dict (a Tune trial's config); unknown keys are an error."""
        names = cls.field_names()
        unknown = sorted(set(flat) - set(names))
        if unknown:
            allowed = ", ".join(sorted(names))
            raise ConfigError(f"unknown setting(s) {unknown}; allowed: {allowed}", field=unknown[0], allowed=allowed)
        grouped: dict[str, dict[str, Any]] = {s: {} for s in cls._SECTIONS}
        for key, value in flat.items():
            if key == "densities" and value is not None:
                value = tuple(value)
            grouped[names[key]][key] = value
        sections = {f.name: f.default_factory for f in dataclasses.fields(cls)}
        return cls(**{s: sections[s](**grouped[s]) for s in cls._SECTIONS})

    def to_flat(self) -> dict[str, Any]:
        flat: dict[str, Any] = {}
        for section in self._SECTIONS:
            flat.update(dataclasses.asdict(getattr(self, section)))
        return flat
