"""Configs: dataclasses declared in code, loaded from YAML, overridden with ``--set``, validated.

One style for every config of the project:

1. **Declare** a config as a (possibly frozen) dataclass; the field
   annotations are its types. A section is a field whose type is another
   config dataclass (``optim: OptimConfig``); ``X | None``, ``Literal``,
   ``tuple``/``list`` and nested sections may be combined freely.
2. **Load** it with :func:`load_config` (a YAML file plus ``--set`` overrides)
   or :func:`from_dict` (a nested mapping, e.g. a stored ``config.json``).
   The loader checks keys and types with pydantic: an unknown key
   (``optim.lrr``) or a wrong type (``optim.epochs: ten``) fails at load time
   with the dotted key in the message, not hours into a run. Numbers are not
   guessed from other types (``true`` is no integer, ``2.5`` no integer,
   ``"7"`` no integer), except that a float field accepts an integer. YAML
   is read with ``3e-4`` (no dot) a float, as YAML 1.2 reads it.
3. **Validate** values and relations between fields in one method per
   config, ``validate(self) -> None``, raising
   ``ConfigError(message, key="field")`` with the key relative to that
   config. The loader calls ``validate()`` on every section, innermost
   first, and puts the section's path before the key, so the user reads
   ``optim.lr: must be positive, got 0``. Checks that span sections belong
   to the ``validate()`` of the config holding both and name full keys.
   :func:`positive`, :func:`non_negative` and :func:`in_range` phrase the
   common rules the same way everywhere.
4. **Built in code**: a config that code also constructs directly and that
   must be checked then (e.g. an augmentation stored with teacher logits)
   calls :func:`checked` from ``__post_init__``: the same type check of its
   own fields, then its ``validate()``.

Command-line overrides use the same dotted keys: ``--set optim.lr=3e-4``
(see :func:`hear_ced.common.cli.set_option`).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import ConfigDict, TypeAdapter, ValidationError

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration value is missing, unknown, of the wrong type or out of range.

    ``key`` is the dotted key at fault, relative to the config that raised
    it; :meth:`within` puts a section's path before it.
    """

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(f"{key}: {message}" if key else message)
        self.message = message
        self.key = key

    def within(self, section: str) -> ConfigError:
        """The same error seen from the config that holds ``section``."""
        if not section:
            return self
        return ConfigError(self.message, f"{section}.{self.key}" if self.key else section)


def positive(config: object, *names: str) -> None:
    """For ``validate()``: each named field must be above zero."""
    for name in names:
        if getattr(config, name) <= 0:
            raise ConfigError(f"must be positive, got {getattr(config, name)}", key=name)


def non_negative(config: object, *names: str) -> None:
    """For ``validate()``: no named field may be below zero."""
    for name in names:
        if getattr(config, name) < 0:
            raise ConfigError(f"must not be negative, got {getattr(config, name)}", key=name)


def in_range(config: object, name: str, low: float, high: float) -> None:
    """For ``validate()``: the field lies in [low, high]."""
    value = getattr(config, name)
    if not low <= value <= high:
        raise ConfigError(f"must be in [{low}, {high}], got {value}", key=name)


def to_plain(value: Any) -> Any:
    """Dataclasses -> nested dicts of plain values (JSON/YAML ready)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {k: to_plain(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [to_plain(v) for v in value]
    return value


# Strict: no number from a boolean or a string, no integer from a float. The
# JSON form of a tree lets lists stand for tuples and mappings for sections.
_STRICT = ConfigDict(extra="forbid", strict=True)


@functools.cache
def _loader(cls: type) -> TypeAdapter:
    # Wrapped in a tuple: pydantic takes a config for a container, not for a dataclass.
    return TypeAdapter(tuple[cls], config=_STRICT)


@functools.cache
def _field_checks(cls: type) -> dict[str, TypeAdapter]:
    hints = typing.get_type_hints(cls)
    return {f.name: TypeAdapter(hints[f.name]) for f in dataclasses.fields(cls) if f.init}


def _dotted(prefix: str, loc: Sequence[str | int]) -> str:
    key = prefix
    for part in loc:
        if isinstance(part, int):
            key += f"[{part}]"
        else:
            key = f"{key}.{part}" if key else str(part)
    return key


def _types_in(tp: Any) -> list[Any]:
    """``tp`` and every type inside it (``X | None``, ``list[X]``, ``tuple[X, ...]``)."""
    return [tp, *(inner for arg in typing.get_args(tp) for inner in _types_in(arg))]


def _section(cls: type, loc: Sequence[str | int]) -> type | None:
    """The config class found at ``loc`` below ``cls``, if the path leads to one."""
    for part in (p for p in loc if not isinstance(p, int)):
        hints = typing.get_type_hints(cls) if dataclasses.is_dataclass(cls) else {}
        inside = [t for t in _types_in(hints.get(part)) if dataclasses.is_dataclass(t)]
        if len(inside) != 1:
            return None
        cls = inside[0]
    return cls if dataclasses.is_dataclass(cls) else None


def _describe(value: Any) -> str:
    return f"{type(value).__name__} {value!r}"


def _config_error(problems: list[dict], cls: type, prefix: str) -> ConfigError:
    """One ConfigError naming the dotted key of the first problem (all unknown keys at once)."""
    unknown = [e["loc"] for e in problems if e["type"] == "unexpected_keyword_argument"]
    if unknown:
        names = ", ".join(_dotted(prefix, loc) for loc in unknown)
        section = _section(cls, unknown[0][:-1])
        known = ""
        if section is not None:
            known = f" (known: {', '.join(f.name for f in dataclasses.fields(section))})"
        return ConfigError(f"unknown config key(s): {names}{known}")
    first = problems[0]
    key = _dotted(prefix, first["loc"]) or "config"
    cause = (first.get("ctx") or {}).get("error")
    if isinstance(cause, ConfigError):
        return cause.within(_dotted(prefix, first["loc"]))
    if first["type"] == "value_error":
        return ConfigError(str(cause or first["msg"]), key)
    if first["type"] == "missing":
        if first["loc"] and isinstance(first["loc"][-1], int):
            return ConfigError("too few values", _dotted(prefix, first["loc"][:-1]))
        return ConfigError("required, but not given", key)
    # The checks run on the JSON form of the tree; speak of YAML's lists and mappings.
    message = (
        first["msg"].lower().replace("a valid array", "a list").replace("an object", "a mapping")
    )
    return ConfigError(f"{message}, got {_describe(first['input'])}", key)


def _validate_sections(config: Any, prefix: str = "") -> None:
    """``validate()`` of every section below and of ``config`` itself, innermost first."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        items = value if isinstance(value, list | tuple) else [value]
        for index, item in enumerate(items):
            if dataclasses.is_dataclass(item) and not isinstance(item, type):
                where = f"{f.name}[{index}]" if items is value else f.name
                _validate_sections(item, _dotted(prefix, [where]))
    check = getattr(config, "validate", None)
    if callable(check):
        try:
            check()
        except ConfigError as err:
            raise err.within(prefix) from None


def from_dict(cls: type[T], values: Any, prefix: str = "") -> T:
    """Build config ``cls`` from a nested mapping: keys, types and values checked.

    ``prefix`` is the dotted path of ``values`` within a larger config, for
    the messages.
    """
    if not isinstance(values, dict):
        raise ConfigError(f"expected a mapping, got {_describe(values)}", prefix or None)
    try:
        tree = json.loads(json.dumps([to_plain(values)]))
    except (TypeError, ValueError) as err:
        raise ConfigError(f"holds a value that is not plain data ({err})", prefix or None) from err
    try:
        (config,) = _loader(cls).validate_json(json.dumps(tree))
    except ValidationError as err:
        # Drop the wrapping tuple's index from every location.
        problems = [dict(e, loc=e["loc"][1:]) for e in err.errors()]
        raise _config_error(problems, cls, prefix) from None
    _validate_sections(config, prefix)
    return config


def checked(config: T) -> T:
    """Type-check the fields of a config built in code, then run its ``validate()``.

    For ``__post_init__``; the loader does the same for the configs it builds.
    """
    for name, adapter in _field_checks(type(config)).items():
        try:
            adapter.validate_python(getattr(config, name), strict=True)
        except ValidationError as err:
            raise _config_error(err.errors(), type(config), name) from None
    check = getattr(config, "validate", None)
    if callable(check):
        check()
    return config


class _YamlLoader(yaml.SafeLoader):
    """PyYAML's safe loader, but ``3e-4`` (no dot) is a float, as in YAML 1.2, not a string."""


_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _load_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_YamlLoader)


def set_key(tree: dict, dotted: str, value: Any) -> None:
    """Set ``dotted.key`` in a nested dict, creating the sections on the way."""
    parts = dotted.strip().split(".")
    if not all(parts):
        raise ConfigError(f"{dotted!r}: empty key part")
    node = tree
    for depth, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{'.'.join(parts[: depth + 1])} is a value, not a section")
        node = child
    node[parts[-1]] = value


def apply_override(tree: dict, assignment: str) -> None:
    """Apply one ``dotted.key=value`` to a nested dict; the value is YAML."""
    if "=" not in assignment:
        raise ConfigError(f"override {assignment!r} must look like key.sub=value")
    dotted, raw = assignment.split("=", 1)
    set_key(tree, dotted, _load_yaml(raw) if raw.strip() else None)


def read_yaml(path: str | Path) -> dict:
    """The mapping in a YAML file; a missing file or another top level is a ConfigError."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    loaded = _load_yaml(path.read_text())
    if loaded is not None and not isinstance(loaded, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    return loaded or {}


def load_config(cls: type[T], path: str | Path | None = None, overrides: Sequence[str] = ()) -> T:
    """``cls`` from a YAML file (or its defaults) plus ``key.sub=value`` overrides, validated."""
    tree = read_yaml(path) if path is not None else {}
    for assignment in overrides:
        apply_override(tree, assignment)
    return from_dict(cls, tree)
