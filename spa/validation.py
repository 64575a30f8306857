"""What every validator here shares: the refusal it raises and the two value checks (no torch: the study driver
imports this).

``bool`` is a subclass of ``int`` in Python, so ``True`` would pass a naive ``isinstance(value, int)``; a
setting such as ``rank = true`` in a search-space file must be refused, so both checks exclude it.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

__all__ = ["ConfigError", "is_int", "is_finite_number"]


def is_int(value: Any) -> bool:
    """True for an integer (``bool`` excluded)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_finite_number(value: Any) -> bool:
    """True for a real number that is neither NaN nor infinite (``bool`` excluded)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


class ConfigError(ValueError):
    """An impossible configuration value; the message is one line naming the field and what is allowed.

    ``field`` is the flat setting name (``"rank"``) and ``allowed`` a short text of what it may be (``"an integer
    >= 1"``, ``"weight, grad, taylor, lrp"``), so callers can rephrase a refusal without parsing the message.
    """

    def __init__(self, message: str, *, field: str | None = None, allowed: str | None = None) -> None:
        super().__init__(message)
        self.field = field
        self.allowed = allowed

    @classmethod
    def not_allowed(cls, field: str, value: Any, allowed: str) -> ConfigError:
        """The usual refusal: ``"rank=0 is not allowed; allowed: an integer >= 1"``."""
        return cls(f"{field}={value!r} is not allowed; allowed: {allowed}", field=field, allowed=allowed)
