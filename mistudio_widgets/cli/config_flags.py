"""Command-line flags generated from the config dataclasses: one flag per field, with the field's name
(``--batch-tokens`` for ``batch_tokens``), its help text, its default and its allowed values taken from
the dataclass, so nothing is written twice. A flag that is not given is absent from the parsed
namespace (the config's default, or a config file's value, applies)."""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import Any, Literal

from ..core.configs import from_dict, parse_grid
from ..core.errors import MistudioError


def no_alias_loader():
    import yaml

    class Loader(yaml.SafeLoader):
        """YAML without anchors and aliases: a config never needs them, and they can expand without bound."""

        def compose_node(self, parent, index):
            if self.check_event(yaml.AliasEvent):
                raise yaml.YAMLError(
                    "aliases (*name) are not allowed in config files (line "
                    f"{self.peek_event().start_mark.line + 1})"
                )
            return super().compose_node(parent, index)

    return Loader


def flag_name(field: str) -> str:
    return "--" + field.replace("_", "-")


def _parse_structured(text: str) -> Any:
    """A list or mapping from the command line: YAML/JSON (``[288, 576]``, ``{3: 8.0}``) or a comma list
    (``288,576``)."""
    import yaml

    try:
        if text.strip()[:1] in ("[", "{"):
            return yaml.load(text, Loader=no_alias_loader())
        return [yaml.load(part, Loader=no_alias_loader()) for part in text.split(",") if part.strip()]
    except (yaml.YAMLError, RecursionError) as exc:
        raise argparse.ArgumentTypeError(f"not a list or mapping: {text!r} ({exc})") from exc


def _parse_mapping(text: str) -> Any:
    """A mapping from the command line: YAML/JSON (``{k: [16, 32]}``) or a grid, ``k: 16, 32; x: 4, 8``."""
    if text.strip()[:1] == "{":
        return _parse_structured(text)
    try:
        return parse_grid(text)
    except MistudioError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _optional(conv):
    def parse(text: str):
        return None if text.strip().lower() in ("", "none", "null") else conv(text)

    parse.__name__ = getattr(conv, "__name__", "value")  # argparse names the type in its errors
    return parse


def _flag_kwargs(hint: Any, default: Any) -> dict[str, Any]:
    """argparse keywords for a field of type ``hint``."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    optional = origin in (typing.Union, types.UnionType) and type(None) in args
    if optional:
        hint = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is bool:
        return {"action": argparse.BooleanOptionalAction}
    if origin is Literal:
        return {"choices": list(args), "type": _optional(str) if optional else str}
    if origin is tuple or hint is tuple:
        return {"nargs": len(args) or "+", "type": args[0] if args else str, "metavar": "V"}
    if origin is dict or hint is dict:
        return {"type": _parse_mapping, "metavar": "'KEY: V, V; KEY: V'"}
    if origin is list or hint is list:
        return {"type": _parse_structured, "metavar": "LIST"}
    conv = hint if hint in (int, float, str) else str
    metavar = {int: "N", float: "X", str: "TEXT"}[conv]
    return {"type": _optional(conv) if optional else conv, "metavar": metavar}


def _default_text(default: Any) -> str:
    if default is None:
        return "empty"
    if isinstance(default, bool):
        return "on" if default else "off"
    if isinstance(default, str) and len(default) > 60:
        return "the built-in text"
    if default == [] or default == {}:
        return "empty"
    return str(default)


def add_config_flags(
    parser: argparse.ArgumentParser,
    cls: type,
    *,
    aliases: dict[str, list[str]] | None = None,
    skip: tuple[str, ...] = (),
    defaults: dict[str, Any] | None = None,
) -> argparse._ArgumentGroup:
    """One flag per field of ``cls`` (except ``skip``), in a group named after the class. ``aliases``:
    extra flag names per field (``{"architecture": ["arch"]}``); ``defaults``: the default a command
    applies instead of the dataclass's (shown in the help; the command passes it to
    :func:`config_from_args`)."""
    aliases, defaults = aliases or {}, defaults or {}
    group = parser.add_argument_group(f"{cls.__name__} settings", (cls.__doc__ or "").strip())
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        default = defaults.get(
            f.name,
            f.default if f.default is not dataclasses.MISSING else f.default_factory(),  # type: ignore[operator]
        )
        text = f"{f.metadata.get('help', '')} (default: {_default_text(default)})".replace("%", "%%")
        names = [flag_name(f.name)] + [flag_name(x) for x in aliases.get(f.name, [])]
        group.add_argument(
            *names,
            dest=f.name,
            default=argparse.SUPPRESS,
            help=text,
            **_flag_kwargs(hints[f.name], default),
        )
    return group


def given(cls: type, a: argparse.Namespace) -> dict[str, Any]:
    """The fields of ``cls`` given as flags."""
    return {f.name: getattr(a, f.name) for f in dataclasses.fields(cls) if hasattr(a, f.name)}


def config_from_args(cls: type, a: argparse.Namespace, base: dict[str, Any] | None = None, **fixed: Any):
    """``cls`` from ``base`` (e.g. a config file, or the command's own defaults), then the flags given,
    then ``fixed`` (values the command sets from its positional arguments)."""
    data = {**(base or {}), **given(cls, a), **fixed}
    try:
        return from_dict(cls, data)
    except TypeError as exc:  # pragma: no cover - from_dict names unknown keys first
        raise MistudioError(f"Bad {cls.__name__} settings: {exc}", "check the flags.") from exc
