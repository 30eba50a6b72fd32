"""Loading one TOML table into a frozen dataclass, with errors that name file, line and key."""

from __future__ import annotations

import re
import tomllib
import types
import typing
from dataclasses import fields, replace
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


class TomlConfigError(ValueError):
    """A config file is unreadable, malformed, or holds an unknown key or a wrong type."""


def _line_of(text: str, key: str) -> int | None:
    pattern = re.compile(rf"^[ \t]*{re.escape(key)}[ \t]*=", re.MULTILINE)
    m = pattern.search(text)
    return text.count("\n", 0, m.start()) + 1 if m else None


def read_table(path: Path, table: str) -> tuple[dict[str, Any], str]:
    """The `[table]` of a TOML file and the file text (for line numbers)."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise TomlConfigError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise TomlConfigError(f"{path}: {exc}") from None
    value = doc.get(table, {})
    if not isinstance(value, dict):
        raise TomlConfigError(f"{path}: [{table}] must be a table")
    return value, text


def apply_values(obj: T, values: dict[str, Any], source: str, text: str = "") -> T:
    """A copy of dataclass `obj` with `values` set, each checked against the field's type."""
    hints = typing.get_type_hints(type(obj))
    known = {f.name for f in fields(obj)}  # type: ignore[arg-type]
    changes: dict[str, Any] = {}
    for key, value in values.items():
        where = f"{source}, line {_line_of(text, key)}" if _line_of(text, key) else source
        if key not in known:
            raise TomlConfigError(
                f"{where}: unknown setting {key!r}; known: {', '.join(sorted(known))}")
        changes[key] = _coerce(value, hints[key], key, where)
    return replace(obj, **changes)  # type: ignore[type-var]


def _coerce(value: Any, hint: Any, key: str, where: str) -> Any:
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    if value is None and type(None) in options:
        return None
    for option in options:
        if option is Path and isinstance(value, (str, Path)):
            return Path(value)
        if option is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if option is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if option in (str, bool) and isinstance(value, option):
            return value
    names = " or ".join(getattr(o, "__name__", str(o)) for o in options)
    raise TomlConfigError(f"{where}: {key} must be {names}, got {value!r}")


def load_dataclass(default: T, path: Path | None, table: str, overrides: dict[str, Any]) -> T:
    """`default`, then the `[table]` of the TOML file at `path`, then the non-None overrides.

    Raises TomlConfigError naming the file, line and key.
    """
    cfg = default
    if path is not None:
        values, text = read_table(path, table)
        cfg = apply_values(cfg, values, str(path), text)
    return apply_values(cfg, {k: v for k, v in overrides.items() if v is not None}, "arguments")
