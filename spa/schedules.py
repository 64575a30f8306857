"""Density schedules for iterative pruning: the density the network is pruned to after each step.

A schedule is a plain list of floats, strictly decreasing, each in (0, 1]; the experiment prunes to each in turn
(with recovery training between steps), so the last entry is the final density. The original research code
removes a fixed 5% of the channels per step (``density_schedule(0.05, 19, "linear")``, see docs/METHOD.md); a
geometric schedule removes a fixed *fraction of what is left* instead, which is gentler at low densities where
each channel matters more. Refusals are ``ConfigError`` (a ``ValueError``) naming the field and what is allowed.
"""

from __future__ import annotations

from collections.abc import Sequence

from spa.validation import ConfigError, is_finite_number, is_int

__all__ = ["SHAPES", "density_schedule", "explicit_schedule"]

SHAPES = ("linear", "geometric")


def density_schedule(final_density: float, steps: int, shape: str = "geometric") -> list[float]:
    """The densities after each of ``steps`` steps, ending exactly at ``final_density``.

    ``"linear"``: ``1 - (1 - f) * k / steps`` (equal numbers of channels per step);
    ``"geometric"``: ``f ** (k / steps)`` (equal fractions of the remaining channels per step), k = 1..steps.
    ``steps=0`` gives ``[]`` (no pruning).
    """
    if not (is_finite_number(final_density) and 0 < final_density <= 1):
        raise ConfigError.not_allowed("final_density", final_density, "a number in (0, 1]")
    if not (is_int(steps) and steps >= 0):
        raise ConfigError.not_allowed("steps", steps, "an integer >= 0")
    if shape not in SHAPES:
        raise ConfigError.not_allowed("shape", shape, ", ".join(SHAPES))
    if steps == 0:
        return []
    if final_density == 1:
        allowed = "final_density < 1, or steps=0"
        raise ConfigError(
            f"final_density=1 with steps={steps} prunes nothing; allowed: {allowed}",
            field="final_density",
            allowed=allowed,
        )
    if shape == "linear":
        densities = [1 - (1 - final_density) * k / steps for k in range(1, steps)]
    else:
        densities = [final_density ** (k / steps) for k in range(1, steps)]
    # Set the last entry exactly: 1 - (1 - f) need not round back to f.
    return explicit_schedule([*densities, float(final_density)])


def explicit_schedule(densities: Sequence[float]) -> list[float]:
    """A hand-written schedule, validated: each density in (0, 1], strictly decreasing."""
    values = list(densities)
    bad = [d for d in values if not (is_finite_number(d) and 0 < d <= 1)]
    if bad:
        allowed = "numbers in (0, 1]"
        raise ConfigError(f"densities={values!r} hold {bad!r}; allowed: {allowed}", field="densities", allowed=allowed)
    if any(a <= b for a, b in zip(values, values[1:], strict=False)):
        allowed = "a strictly decreasing sequence"
        raise ConfigError(
            f"densities={values!r} are not allowed; allowed: {allowed}", field="densities", allowed=allowed
        )
    return [float(d) for d in values]
