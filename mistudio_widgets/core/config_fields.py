"""How a configuration dataclass is made: ``@config`` classes whose fields (``opt``) carry a help
text and bounds, are checked when made or replaced, and convert to and from plain dicts."""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from .errors import MistudioError


class ConfigError(MistudioError):
    """A setting has the wrong type or is out of range."""


def _short(v: Any, limit: int = 80) -> str:
    """``repr(v)`` cut to ``limit`` characters (a value may be huge: never echo it whole)."""
    if isinstance(v, (list, tuple, dict, set)) and len(v) > 20:
        return f"<a {type(v).__name__} of {len(v)} items>"
    r = repr(v)
    return r if len(r) <= limit else r[:limit] + "…"


def _check_value(owner: str, name: str, v: Any, hint: Any, lo: Any, hi: Any) -> Any:
    """``v`` checked against its type hint and range (integral floats become ints, lists for tuple
    fields tuples): the value to keep."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    where = f"{owner}.{name}"
    if origin in (typing.Union, types.UnionType):
        if v is None and type(None) in args:
            return v
        hint = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:
        if v not in args:
            raise ConfigError(
                f"{where} is {_short(v)}; it must be one of {', '.join(map(repr, args))}.",
                f"set {name} to one of those.",
            )
        return v
    if hint is bool:
        if not isinstance(v, bool):
            raise ConfigError(
                f"{where} must be true or false (got {_short(v)}).", f"set {name} to true or false."
            )
        return v
    if hint is int:
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        if isinstance(v, bool) or not isinstance(v, int):
            raise ConfigError(
                f"{where} must be a whole number (got {_short(v)}).", f"set {name} to an integer."
            )
    elif hint is float:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ConfigError(f"{where} must be a number (got {_short(v)}).", f"set {name} to a number.")
        v = float(v)
        if not math.isfinite(v):
            raise ConfigError(
                f"{where} must be a finite number (got {_short(v)}).", f"set {name} to a finite number."
            )
    elif hint is str:
        if not isinstance(v, str):
            raise ConfigError(f"{where} must be text (got {_short(v)}).", f"set {name} to a string.")
        return v
    elif origin in (list, dict, tuple) or hint in (list, dict, tuple):
        ok = (list, tuple) if (origin or hint) in (list, tuple) else dict
        if not isinstance(v, ok):
            raise ConfigError(
                f"{where} must be a {(origin or hint).__name__} (got {_short(v)}).",
                f"set {name} to a {(origin or hint).__name__}.",
            )
        return tuple(v) if (origin or hint) is tuple else v  # JSON and YAML give lists: one place fixes it
    if lo is not None and v < lo:
        raise ConfigError(f"{where} must be at least {lo} (got {v}).", f"set {name} to {lo} or more.")
    if hi is not None and v > hi:
        raise ConfigError(f"{where} must be at most {hi} (got {v}).", f"set {name} to {hi} or less.")
    return v


def check_fields(cfg: Any) -> None:
    """Type and range checks of every field (from the type hints and the ``minimum``/``maximum``
    metadata); run whenever a config is made, so widgets, notebooks and the CLI get the same errors."""
    hints = typing.get_type_hints(type(cfg))
    for f in dataclasses.fields(cfg):
        v = _check_value(
            type(cfg).__name__,
            f.name,
            getattr(cfg, f.name),
            hints[f.name],
            f.metadata.get("minimum"),
            f.metadata.get("maximum"),
        )
        object.__setattr__(cfg, f.name, v)


def _post_init(cfg: Any) -> None:
    check_fields(cfg)
    if hasattr(cfg, "check_more"):  # checks across fields, after each field's own
        cfg.check_more()


if TYPE_CHECKING:  # the type checker reads a config class as the dataclass it is
    from dataclasses import dataclass as config
else:

    def config(cls: type[T]) -> type[T]:
        """``@dataclass`` whose instances check their fields when made (and when ``dataclasses.replace``d)."""
        cls.__post_init__ = _post_init
        return dataclass(cls)


def opt(default: Any, help: str, **kw: Any) -> Any:
    """A dataclass field with a help text; a list or dict default is copied per instance. Optional
    metadata: ``minimum``/``maximum`` (checked), ``label`` (the form's name for it, when the field's own
    name reads badly) and ``when`` ({other field: values}: the setting only matters for those values, so
    forms show it only then)."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


T = TypeVar("T")


def from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """Build a config from a mapping, naming unknown keys and the valid ones."""
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - names)
    if unknown:
        raise MistudioError(
            f"{cls.__name__} has no setting {', '.join(unknown)}.",
            f"use one of: {', '.join(sorted(names))}.",
        )
    return cls(**data)


def to_dict(cfg: Any, *, secret: tuple[str, ...] = ("token", "api_key")) -> dict[str, Any]:
    """A JSON-able dict of a config, without secrets (never written to the workspace)."""
    return {k: v for k, v in dataclasses.asdict(cfg).items() if k not in secret}


def field_help(cls: type) -> dict[str, str]:
    return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(cls)}
