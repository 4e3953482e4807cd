"""Typed configuration: YAML values mapped strictly onto frozen dataclasses.

Each component owns a small frozen dataclass and receives only its own section. This module only
knows how to fill a dataclass tree from YAML and `--set a.b=value` overrides:

- an unknown key fails, naming the key, the file and the valid keys;
- a value of the wrong type fails the same way (ints are accepted where floats are expected);
- a value out of its range fails naming the dotted key, the file, the value and the allowed range,
  when the caller passes the range table in (`checks=`; the table is `config_ranges.CHECKS`);
- the resolved tree can be written back as YAML into the run folder (`dump_config`).

There is no `target:` indirection: the dataclass type decides what gets built.
"""
from __future__ import annotations

import dataclasses
import types
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file or override does not fit the typed config. `key` is the dotted key at fault,
    when one is."""

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


@dataclass(frozen=True)
class Checks:
    """Value checks that `from_dict` runs while it reads, before a class is built, so the message
    names the key and the file. `range_problem(cls, field, value, key)` and
    `relation_problems(cls, values, where)` return what is wrong (None / []).

    Why passed in: the range table names every config class by type, so it sits above all of them
    (`ldm_system/config_ranges.py`), while this module is the bottom floor and imports nothing of
    ours. The loaders at the top (the CLI, the demo, benchmarks) pass `config_ranges.CHECKS`."""

    range_problem: Callable[[type, str, Any, str], str | None]
    relation_problems: Callable[[type, dict[str, Any], str], list[str]]


NO_CHECKS = Checks(lambda cls, name, value, key: None, lambda cls, given, where: [])


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None,
                checks: Checks = NO_CHECKS) -> T:
    """Read `path` (YAML) into `cls`, then apply `overrides` ("a.b=value", value parsed as YAML);
    `checks` judge each value as it is read."""
    raw: dict[str, Any] = {}
    source = "<defaults>"
    if path is not None:
        source = str(path)
        try:
            text = Path(path).read_text()
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        try:
            raw = yaml.safe_load(text) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: the top level must be a mapping, got {type(raw).__name__}")
    for item in overrides or []:
        _apply_override(raw, item)
    try:
        return from_dict(cls, raw, source=source, checks=checks)
    except ConfigError as e:
        # The message names the file; say so when the value came from the command line instead.
        given = {item.partition("=")[0].strip(): item for item in overrides or []}
        if e.key in given:
            raise ConfigError(f"{e} (given as --set {given[e.key]})", e.key) from None
        raise


def _apply_override(raw: dict[str, Any], item: str) -> None:
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like section.key=value")
    dotted, _, text = item.partition("=")
    keys = dotted.strip().split(".")
    if not all(keys):
        raise ConfigError(f"override {item!r} has an empty key")
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        value = text
    node = raw
    for k in keys[:-1]:
        child = node.setdefault(k, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {item!r}: {k!r} is a value, not a section")
        node = child
    node[keys[-1]] = value


def from_dict(cls: type[T], data: Any, source: str = "<dict>", where: str = "", checks: Checks = NO_CHECKS) -> T:
    """Build dataclass `cls` from a mapping, strictly; `checks` judge each value as it is read."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls} is not a dataclass")
    label = where or "top level"
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: {label} must be a mapping, got {type(data).__name__}")
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    moved = getattr(cls, "MOVED", {})  # a class may name where keys of an earlier layout went
    if gone := [k for k in unknown if k in moved]:
        old, new = (f"{where}.{x}" if where else x for x in (gone[0], moved[gone[0]]))
        raise ConfigError(f"{source}: key {old!r} has moved to {new!r}", old)
    if unknown:
        key = f"{where}.{unknown[0]}" if where else unknown[0]
        raise ConfigError(
            f"{source}: unknown key {key!r} in {label}; valid keys: {', '.join(sorted(fields))}"
        )
    missing = [n for n, f in fields.items()
               if n not in data and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        key = f"{where}.{missing[0]}" if where else missing[0]
        raise ConfigError(f"{source}: missing required key {key!r} in {label}; add it to the file or pass --set {key}=...")
    kwargs = {}
    for name, value in data.items():
        key = f"{where}.{name}" if where else name
        kwargs[name] = _coerce(hints[name], value, source, key, checks)
        if problem := checks.range_problem(cls, name, kwargs[name], key):
            raise ConfigError(f"{source}: {problem}", key)
    if problems := checks.relation_problems(cls, kwargs, where):
        raise ConfigError(f"{source}: {problems[0]}")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{source}: {label}: {e}") from None


def _coerce(tp: Any, value: Any, source: str, key: str, checks: Checks = NO_CHECKS) -> Any:
    origin = get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, source, key, checks)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, source, key, checks)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[-1] if errors else f"{source}: {key}: bad value {value!r}")
    if origin is Literal:
        choices = get_args(tp)
        if value not in choices:
            raise ConfigError(f"{source}: {key} must be one of {list(choices)}, got {value!r}")
        return value
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{source}: {key} must be a list, got {type(value).__name__} {value!r}")
        args = get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"{source}: {key} must have {len(args)} items, got {len(value)}")
            items = [_coerce(a, v, source, f"{key}[{i}]", checks) for i, (a, v) in enumerate(zip(args, value))]
        else:
            inner = args[0] if args else Any
            items = [_coerce(inner, v, source, f"{key}[{i}]", checks) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: {key} must be a mapping, got {type(value).__name__}")
        return dict(value)
    if tp is float:
        if isinstance(value, str):  # PyYAML reads `1e-4` (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{source}: {key} must be a number, got {type(value).__name__} {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{source}: {key} must be an integer, got {type(value).__name__} {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{source}: {key} must be true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{source}: {key} must be a string, got {type(value).__name__} {value!r}")
        return value
    if tp is Path:
        if not isinstance(value, str):
            raise ConfigError(f"{source}: {key} must be a path string, got {value!r}")
        return Path(value)
    raise ConfigError(f"{source}: {key}: unsupported config type {tp!r}")


def to_dict(cfg: Any) -> Any:
    """Plain-YAML-able view of a dataclass tree (tuples become lists, paths strings)."""
    if dataclasses.is_dataclass(cfg):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, (list, tuple)):
        return [to_dict(v) for v in cfg]
    if isinstance(cfg, dict):
        return {k: to_dict(v) for k, v in cfg.items()}
    if isinstance(cfg, Path):
        return str(cfg)
    return cfg


def dump_config(cfg: Any, path: str | Path) -> None:
    """Write the resolved config so a run folder records exactly what ran."""
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


__all__ = ["Checks", "ConfigError", "NO_CHECKS", "load_config", "from_dict", "to_dict", "dump_config"]
