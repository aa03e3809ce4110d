"""Typed, validated configuration: dataclasses <-> dicts <-> YAML, with dotted command-line overrides.

Every config class is a dataclass whose ``__post_init__`` validates its own values. :func:`from_dict`
builds one from a nested dict, refusing unknown keys (listing the valid ones) and values of the wrong
type (naming the key, expected against found). :func:`apply_overrides` applies ``--section.key value``
pairs on top of a dict before it is built, so a bad override fails exactly like a bad YAML key.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration key or value is invalid; the message names the key, expected against found."""


def _type_name(tp: Any) -> str:
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp`` and convert where lossless (int -> float, list -> tuple)."""
    origin = get_origin(tp)
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
                return _coerce(value, arg, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r} ({type(value).__name__})")
    if origin is typing.Literal:
        choices = get_args(tp)
        if value not in choices:
            raise ConfigError(f"{key}: expected one of {list(choices)}, got {value!r}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r} ({type(value).__name__})")
        args = get_args(tp)
        inner = args[0] if args else Any
        items = [_coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r} ({type(value).__name__})")
        kt, vt = get_args(tp) or (Any, Any)
        return {_coerce(k, kt, f"{key}.<key>"): _coerce(v, vt, f"{key}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping for section {tp.__name__}, got {value!r}")
        # a section whose keys depend on one of its values (model.type) names its concrete class
        resolve = getattr(tp, "config_class_for", None)
        return from_dict(resolve(value, key) if resolve else tp, value, prefix=key)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected a boolean (true/false), got {value!r} ({type(value).__name__})")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{key}: expected an integer, got {value!r} ({type(value).__name__})")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{key}: expected a number, got {value!r} ({type(value).__name__})")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected a string, got {value!r} ({type(value).__name__})")
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r} ({type(value).__name__})")


def from_dict(cls: type[T], data: dict[str, Any] | None, prefix: str = "") -> T:
    """Build the dataclass ``cls`` from ``data``; unknown keys and wrong types raise :class:`ConfigError`."""
    data = dict(data or {})
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(
            f"unknown config key '{where}{unknown[0]}'" + (f" (and {unknown[1:]})" if len(unknown) > 1 else "")
            + f"; valid keys{' in ' + prefix if prefix else ''}: {sorted(fields)}"
            + suggest(unknown[0], fields, prefix=where)
        )
    kwargs = {}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else name
        kwargs[name] = _coerce(value, hints[name], key)
    try:
        return cls(**kwargs)
    except ConfigError as exc:
        if prefix and not str(exc).startswith(prefix):
            raise ConfigError(f"{prefix}.{exc}") from None
        raise


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain nested dict (lists for tuples) suitable for YAML/JSON."""

    def convert(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: convert(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [convert(x) for x in v]
        if isinstance(v, dict):
            return {k: convert(x) for k, x in v.items()}
        return v

    return convert(cfg)


def _parse_scalar(text: str) -> Any:
    """Parse a command-line value the way YAML would (3e-4 -> float, true -> bool, [1,2] -> list)."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, str):
        # YAML 1.1 reads '3e-4' as a string; accept plain float syntax too.
        try:
            return float(value) if any(c in value for c in ".eE") else value
        except ValueError:
            return value
    return value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``["--train.lr", "3e-4", "--model.fusion=early"]`` to a nested dict (returns a new dict)."""
    out = yaml.safe_load(yaml.safe_dump(data)) or {}
    items: list[tuple[str, str]] = []
    i = 0
    while i < len(overrides):
        tok = overrides[i]
        if not tok.startswith("--"):
            raise ConfigError(f"expected an override of the form --section.key VALUE, got {tok!r}")
        tok = tok[2:]
        if "=" in tok:
            k, v = tok.split("=", 1)
            i += 1
        else:
            if i + 1 >= len(overrides) or overrides[i + 1].startswith("--"):
                raise ConfigError(f"override --{tok} has no value")
            k, v = tok, overrides[i + 1]
            i += 2
        items.append((k.replace("-", "_"), v))
    for key, raw in items:
        parts = key.split(".")
        node = out
        for p in parts[:-1]:
            child = node.setdefault(p, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {key}: {p!r} is not a section")
            node = child
        node[parts[-1]] = _parse_scalar(raw)
    return out


def suggest(word: str, choices: list[str] | tuple[str, ...] | set[str], prefix: str = "") -> str:
    """``"; did you mean 'x'?"`` for the closest of ``choices`` to ``word`` (or ``""`` when none is close)."""
    close = difflib.get_close_matches(word, sorted(choices), n=1, cutoff=0.6)
    return f"; did you mean '{prefix}{close[0]}'?" if close else ""


def config_keys(cfg: Any, prefix: str = "") -> list[tuple[str, str, Any, Any]]:
    """Every settable key of a config dataclass instance (or class: its defaults): ``(dotted key, type name,
    default, value)``, sections expanded recursively through the instance's own section classes (so ``model``
    lists the keys of the policy type it holds): ``("train.lr", "float", 0.001, 0.0003)``."""
    if isinstance(cfg, type):
        cfg = cfg()
    hints = get_type_hints(type(cfg))
    defaults = type(cfg)()
    out: list[tuple[str, str, Any, Any]] = []
    for f in dataclasses.fields(cfg):
        if not f.init:
            continue
        key = f"{prefix}{f.name}"
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            out.extend(config_keys(value, f"{key}."))
        else:
            out.append((key, _type_name(hints[f.name]), to_dict(getattr(defaults, f.name)), to_dict(value)))
    return out


def check_key(cls: type, dotted: str, data: dict[str, Any] | None = None) -> None:
    """Raise :class:`ConfigError` unless ``dotted`` (``train.lr``) names a key of ``cls``; the message names the
    whole key, where it stops matching, the valid names there and the closest one. ``data`` (the nested dict the
    config is built from) picks the concrete class of a section that depends on its values (``model.type``)."""
    node: Any = cls
    parts = dotted.split(".")
    for i, part in enumerate(parts):
        where = ".".join(parts[:i])
        hints = get_type_hints(node)
        names = [f.name for f in dataclasses.fields(node) if f.init]
        if part not in names:
            sections = [n for n in names if dataclasses.is_dataclass(hints[n])]
            if i == 0:
                valid = f"valid sections: {sections}; top-level keys: {sorted(set(names) - set(sections))}"
            else:
                valid = f"valid keys in {where}: {sorted(names)}"
            raise ConfigError(f"unknown config key '{dotted}': no {'section or key' if i == 0 else 'key'} "
                              f"{part!r}{' in ' + where if where else ''}; {valid}"
                              + suggest(part, names, prefix=f"{where}." if where else ""))
        tp = hints[part]
        data = data.get(part) if isinstance(data, dict) else None
        if i < len(parts) - 1:
            if not dataclasses.is_dataclass(tp):
                raise ConfigError(f"override {dotted}: {part!r} is not a section")
            resolve = getattr(tp, "config_class_for", None)
            node = resolve(data if isinstance(data, dict) else {}, ".".join(parts[:i + 1])) if resolve else tp


def override_keys(overrides: list[str]) -> list[str]:
    """The dotted keys named by ``--section.key VALUE`` / ``--section.key=VALUE`` overrides (``-`` -> ``_``)."""
    keys = []
    for tok in overrides:
        if tok.startswith("--"):
            keys.append(tok[2:].split("=", 1)[0].replace("-", "_"))
    return keys


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def dump_yaml(cfg: Any, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


def require(cond: bool, key: str, expected: str, got: Any) -> None:
    """Raise ConfigError ``key: expected ..., got ...`` unless ``cond``."""
    if not cond:
        raise ConfigError(f"{key}: expected {expected}, got {got!r}")
