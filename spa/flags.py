"""Command-line flags generated from the config dataclasses, as OpenLTH generates them from its hparams.

Each field becomes ``--field-name`` with the field's type, default and help text (from its metadata, see
``spa.config.setting``); the help always ends with the default. A command adds only what the dataclasses cannot
say: extra names for a flag (``aliases``), its own default where it differs (``defaults``), and vocabularies that
live with torch-side modules (``choices``). No default is written twice.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["add_flags", "flag_name", "density_list", "values_from_flags"]


def flag_name(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


def density_list(text: str) -> tuple[float, ...]:
    """``"0.8,0.5"`` -> ``(0.8, 0.5)``: a tuple-of-floats flag is a comma-separated list."""
    try:
        return tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers") from None


def _describe(default: Any, default_text: str | None) -> str:
    if default_text is not None:
        return default_text
    if isinstance(default, bool):
        return "on" if default else "off"
    if isinstance(default, float):
        return f"{default:g}"
    return "none" if default is None else str(default)


def _value_type(annotation: Any) -> Any:
    """``int | None`` -> ``int``; a field has one value type besides ``None``."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        (annotation,) = [a for a in typing.get_args(annotation) if a is not type(None)]
    return annotation


def _parser_type(value_type: Any) -> Any:
    if typing.get_origin(value_type) is tuple:
        return density_list  # the only tuple field holds densities
    if value_type in (int, float, str):
        return value_type
    raise TypeError(f"no flag type for {value_type!r}; allowed: int, float, str, bool, tuple[float, ...]")


def add_flags(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    config_type: type,
    *,
    aliases: Mapping[str, Sequence[str]] | None = None,
    defaults: Mapping[str, Any] | None = None,
    choices: Mapping[str, Sequence[str]] | None = None,
    details: Mapping[str, str] | None = None,
) -> None:
    """Add one flag per field of the dataclass ``config_type``; ``dest`` is the field name.

    ``aliases``: field -> more flag names (an old script's spelling); ``defaults``: field -> this command's
    default where it differs from the dataclass; ``choices``: field -> allowed values not in the field's
    metadata; ``details``: field -> text appended to the help.
    """
    aliases, defaults, choices, details = aliases or {}, defaults or {}, choices or {}, details or {}
    hints = typing.get_type_hints(config_type)
    for field in dataclasses.fields(config_type):
        metadata = field.metadata
        default = defaults.get(field.name, field.default)
        shown = _describe(default, metadata.get("default_text") if field.name not in defaults else None)
        help_text = metadata.get("help", field.name.replace("_", " "))
        if field.name in details:
            help_text = f"{help_text}: {details[field.name]}"
        names = [flag_name(field.name), *aliases.get(field.name, ())]
        value_type = _value_type(hints[field.name])
        if value_type is bool:
            action = parser.add_argument(
                *names, dest=field.name, action=argparse.BooleanOptionalAction, default=default
            )
        else:
            allowed = choices.get(field.name) or metadata.get("choices") or None
            action = parser.add_argument(
                *names, dest=field.name, type=_parser_type(value_type), default=default, choices=allowed
            )
        # Set after creation: BooleanOptionalAction would append its own "(default: True)".
        action.help = f"{help_text} (default: {shown})"


def values_from_flags(args: argparse.Namespace, config_type: type) -> dict[str, Any]:
    """The parsed value of every field of ``config_type``, by field name."""
    return {field.name: getattr(args, field.name) for field in dataclasses.fields(config_type)}
