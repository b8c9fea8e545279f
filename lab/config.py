"""Typed configs: dataclasses filled from TOML tables and ``key.sub=value`` overrides.

Every value is checked against its field's annotation when the config is built (``int``,
``float``, ``str``, ``bool``, ``X | None``, ``list[X]``, ``tuple[X, ...]``, ``dict[str, X]``,
``Any`` and nested dataclasses), and each config's ``__post_init__`` checks ranges, so a bad
value is refused before anything is written, with an error that names the field, the value
and what is allowed.
"""

from __future__ import annotations

import ast
import dataclasses
import tomllib
import types
import typing
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A config value, field or file is wrong; the message says which and why."""


def from_dict(cls: type, data: dict[str, Any] | None, where: str):
    """Build dataclass ``cls`` from ``data``, checking every field (see module doc).

    ``where`` names the table in messages, e.g. ``"configs/small.toml [train]"``.
    """
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a table of fields, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {unknown}; valid: {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    values = {name: check(hints[name], value, f"{where} {name}") for name, value in data.items()}
    try:
        return cls(**values)
    except (ValueError, TypeError) as error:
        raise ConfigError(f"{where}: {error}") from error


def check(annotation: Any, value: Any, where: str) -> Any:
    """``value`` converted to ``annotation`` (int -> float, list -> tuple, table ->
    dataclass), or a ConfigError naming ``where``, the value and the expected type."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is Any:
        return value
    if dataclasses.is_dataclass(annotation):
        return value if isinstance(value, annotation) else from_dict(annotation, value, where)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for option in (a for a in args if a is not type(None)):
            try:
                return check(option, value, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: expected {type_name(annotation)}, got {value!r}")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected {type_name(annotation)}, got {value!r}")
        item = args[0] if args else Any
        if origin is tuple and args and (len(args) != 2 or args[1] is not Ellipsis):
            if len(value) != len(args):
                raise ConfigError(f"{where}: expected {type_name(annotation)}, got {value!r}")
            pairs = enumerate(zip(args, value, strict=True))
            return tuple(check(a, v, f"{where}[{i}]") for i, (a, v) in pairs)
        items = [check(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table, got {value!r}")
        item = args[1] if len(args) == 2 else Any
        return {str(k): check(item, v, f"{where}.{k}") for k, v in value.items()}
    if annotation is bool:
        if isinstance(value, bool):
            return value
    elif annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif annotation is str:
        if isinstance(value, str):
            return value
    elif isinstance(value, annotation):
        return value
    raise ConfigError(f"{where}: expected {type_name(annotation)}, got {value!r}")


def type_name(annotation: Any) -> str:
    """A readable name of a type annotation: 'int', 'a list of str', 'float or None'."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(type_name(a) for a in args)
    if origin in (list, tuple):
        return f"a list of {type_name(args[0]) if args else 'values'}"
    if origin is dict:
        return "a table"
    if annotation is type(None):
        return "None"
    return getattr(annotation, "__name__", str(annotation))


def load_toml(path: Path) -> dict[str, Any]:
    """The TOML file at ``path``; errors name the file."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: not valid TOML ({error})") from error


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """``data`` with each ``key.sub=value`` applied (values parsed as Python literals, bare
    words as strings; a list value replaces the whole list)."""
    for override in overrides:
        key, sep, raw = override.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {override!r} is not of the form key=value")
        *parents, leaf = key.strip().split(".")
        node = data
        for parent in parents:
            child = node.setdefault(parent, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {override!r}: {parent!r} is not a table")
            node = child
        node[leaf] = parse_value(raw.strip())
    return data


def parse_value(raw: str) -> Any:
    """A Python literal (``3``, ``1e-3``, ``[1, 2]``, ``None``, ``True``), else the string."""
    try:
        return ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return raw


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``extra`` merged in: tables merge recursively, other values replace."""
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def require(condition: bool, message: str) -> None:
    """Raise ConfigError(message) unless ``condition`` (for ``__post_init__`` range checks)."""
    if not condition:
        raise ConfigError(message)
