"""Search-space files: where they are, reading one together with the files it ``extends``, writing one back.

A file may build on others::

    extends = "_splora"          # or a list, merged in order: extends = ["_splora", "_schedule"]
    description = "SPLoRA adapters pruned by LRP"
    [fixed]
    criterion = "lrp"

A base is found beside the file first, then in ``SPACES_DIR``; a name ending in ``.toml`` is a path relative to the
file. The bases are merged in the order listed, then the file itself on top: ``description``, ``objectives`` and
``start_points`` are replaced whole; ``fixed`` settings, ``params`` tables and ``constraints`` are replaced key by
key (a parameter a base already had keeps its place, so the sampling order stays that of the files); a key fixed on
top stops being searched, and leaves the start points it inherits, as does a value that a parameter searched anew
on top cannot take (``study.start_points.inherited``); a key searched on top stops being fixed. A cycle is refused
in one line naming its files.

Files whose name starts with ``_`` are bases: listed nowhere and not runnable on their own, they exist to be
extended. This module knows the file format only; ``study.spaces`` validates what the files say.
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from study.start_points import KEY as START_POINTS
from study.start_points import inherited

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = ["SPACES_DIR", "BASE_PREFIX", "SpaceError", "file_error", "list_spaces", "resolve", "read", "toml_text"]

# The first character of a base's file name.
BASE_PREFIX = "_"


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


def _display(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def file_error(path: Path, message: str) -> SpaceError:
    """``"<file>: <message>"`` on one line, the file relative to the working directory where it is below it."""
    return SpaceError(f"{_display(path)}: {' '.join(str(message).split())}")


def list_spaces() -> list[str]:
    """The names of the runnable spaces in ``SPACES_DIR`` (bases left out), sorted; empty when there is none."""
    if not SPACES_DIR.is_dir():
        return []
    return sorted(path.stem for path in SPACES_DIR.glob("*.toml") if not path.stem.startswith(BASE_PREFIX))


def _names_hint() -> str:
    names = list_spaces()
    if not names:
        return f"none found in {SPACES_DIR} (set SPA_SPACES_DIR to the repository's search_spaces/)"
    return ", ".join(names)


def _looks_like_path(text: str) -> bool:
    return text.endswith(".toml") or os.sep in text or "/" in text


def resolve(name_or_path: str | os.PathLike[str]) -> Path:
    """The file of a runnable space: a name in ``SPACES_DIR`` (``"splora_lrp"``) or a path to a ``.toml`` file."""
    text = os.fspath(name_or_path)
    if _looks_like_path(text):
        path = Path(text).expanduser()
        if not path.is_file():
            raise SpaceError(f"{text}: no such search-space file; allowed: a .toml file, or one of {_names_hint()}")
    else:
        path = SPACES_DIR / f"{text}.toml"
        if not path.is_file():
            raise SpaceError(f"unknown search space {text!r}; allowed: {_names_hint()}")
    if path.stem.startswith(BASE_PREFIX):
        raise file_error(path, f"is a base for other spaces to extend, not a space; allowed: {_names_hint()}")
    return path


Check = Callable[[Mapping[str, Any], Path], None]
Takes = Callable[[str, Any, Any], bool]


def read(path: Path, check: Check, takes: Takes) -> dict[str, Any]:
    """The file's data with every base it extends merged in (``extends`` itself removed).

    ``check(data, file)`` is called on each file's own data before merging, so an error names the file it is in;
    ``takes(name, spec, value)``: whether the parameter of table ``spec`` can take ``value`` (a start point's).
    """
    return _read(path, check, takes, chain=())


def _read(path: Path, check: Check, takes: Takes, chain: tuple[Path, ...]) -> dict[str, Any]:
    identity = path.resolve()
    if identity in chain:
        cycle = " -> ".join(_display(p) for p in (*chain[chain.index(identity) :], identity))
        raise file_error(chain[0], f"extends makes a cycle: {cycle}; allowed: bases that do not extend each other")
    data = _load_toml(path)
    bases = _bases(data.pop("extends", None), path)
    check(data, path)
    merged: dict[str, Any] = {}
    for base in bases:
        merged = _merge(merged, _read(base, check, takes, (*chain, identity)), takes)
    return _merge(merged, data, takes)


def _load_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as file:
            return tomllib.load(file)
    except tomllib.TOMLDecodeError as error:
        raise file_error(path, f"not valid TOML: {error}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise file_error(path, f"cannot be read: {error}") from None


def _bases(extends: Any, path: Path) -> list[Path]:
    if extends is None:
        return []
    names = [extends] if isinstance(extends, str) else extends
    if not isinstance(names, list) or not names or not all(isinstance(name, str) and name for name in names):
        allowed = "a space's name or file, or a list of them"
        raise file_error(path, f"extends={extends!r} is not allowed; allowed: {allowed}")
    bases = []
    for name in names:
        if _looks_like_path(name):
            candidates = [(path.parent / name).expanduser()]
        else:
            candidates = [path.parent / f"{name}.toml", SPACES_DIR / f"{name}.toml"]
        found = next((candidate for candidate in candidates if candidate.is_file()), None)
        if found is None:
            where = " or ".join(_display(candidate) for candidate in candidates)
            raise file_error(path, f"extends={name!r}: no file {where}; allowed: a space's name or file")
        bases.append(found)
    return bases


def _merge(base: Mapping[str, Any], top: Mapping[str, Any], takes: Takes) -> dict[str, Any]:
    """``top`` over ``base`` (see the module docstring); neither is changed."""
    merged = {key: value for key, value in base.items() if key not in ("fixed", "params", "constraints")}
    merged.update({key: value for key, value in top.items() if key not in ("fixed", "params", "constraints")})
    fixed_on_top, params_on_top = top.get("fixed", {}), top.get("params", {})  # tables: checked before merging
    fixed = {key: value for key, value in base.get("fixed", {}).items() if key not in params_on_top}
    params = {key: value for key, value in base.get("params", {}).items() if key not in fixed_on_top}
    fixed.update(fixed_on_top)
    params.update(params_on_top)
    if START_POINTS not in top and START_POINTS in base:
        merged[START_POINTS] = list(inherited(base[START_POINTS], fixed_on_top, params_on_top, takes))
    if fixed:
        merged["fixed"] = fixed
    if params:
        merged["params"] = params
    constraints = {**base.get("constraints", {}), **top.get("constraints", {})}
    if constraints:
        merged["constraints"] = constraints
    return merged


def toml_text(data: Mapping[str, Any], *, header: str = "") -> str:
    """A space's data (``description``, ``fixed``, ``params``, ``objectives``, ``constraints``, ``start_points``) as
    a TOML file ``read`` gives back."""
    lines = [f"# {line}" for line in header.splitlines()]
    if "description" in data:
        lines.append(f"description = {_value(data['description'])}")
    if data.get("fixed"):
        lines += ["", "[fixed]", *(f"{key} = {_value(value)}" for key, value in data["fixed"].items())]
    for name, spec in data.get("params", {}).items():
        lines += ["", f"[params.{name}]", *(f"{key} = {_value(value)}" for key, value in spec.items())]
    for objective in data.get("objectives", ()):
        lines += ["", "[[objectives]]", *(f"{key} = {_value(value)}" for key, value in objective.items())]
    if data.get("constraints"):
        lines += ["", "[constraints]", *(f"{key} = {_value(value)}" for key, value in data["constraints"].items())]
    for point in data.get(START_POINTS, ()):
        lines += ["", f"[[{START_POINTS}]]", *(f"{key} = {_value(value)}" for key, value in point.items())]
    return "\n".join(lines) + "\n"


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return repr(value) if math.isfinite(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string: JSON's escapes are TOML's
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_value(item) for item in value) + "]"
    raise TypeError(f"value={value!r} has no TOML form; allowed: strings, numbers, booleans and lists of them")
