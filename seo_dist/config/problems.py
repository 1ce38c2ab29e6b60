"""Config problems as one-line messages that name the dotted key, what was expected and what was given.

pydantic finds the problems (unknown keys, wrong types, values out of range); :func:`describe_errors`
rewords its errors in the project's terms: ``unknown config key 'train.lrr' (did you mean 'train.lr'?)``,
``train.max_steps: expected int, got 'many' (str)``, ``checkpoint.keep_last must be >= 2, got 1``.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from pydantic import ValidationError
from pydantic_core import ErrorDetails

from seo_dist.config.scalars import BOUND_ERRORS, bound_message

Loc = tuple[int | str, ...]


def unknown_key(key: str, name: str, choices: Sequence[str], aliases: Mapping[str, str] | None = None) -> str:
    """``unknown config key 'train.lrr' (did you mean 'train.lr'?)``; ``key`` ends with ``name``.

    ``aliases`` maps names accepted elsewhere (a Python keyword alias) to the key to write instead.
    """
    close = [aliases[name]] if aliases and name in aliases else difflib.get_close_matches(name, list(choices), n=1)
    prefix = key[: len(key) - len(name)]
    hint = f" (did you mean '{prefix}{close[0]}'?)" if close else f" (known keys: {', '.join(sorted(choices))})"
    return f"unknown config key {key!r}{hint}"


def type_name(tp: Any) -> str:
    """How a field type reads in a message or the README: ``int``, ``str or null``, ``'stop' | 'skip'``."""
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        return type_name(typing.get_args(tp)[0])
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(type_name(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def dotted(loc: Sequence[int | str]) -> str:
    """``('checkpoint', 'pinned', 0)`` -> ``checkpoint.pinned[0]``; a key with a newline or tab is quoted, so that
    the message stays one line."""
    key = ""
    for part in loc:
        name = part if isinstance(part, int) or part.isprintable() else repr(part)
        key += f"[{name}]" if isinstance(part, int) else f".{name}" if key else str(name)
    return key


def _type_at(root: type, loc: Loc) -> Any:
    """The annotation of the value at ``loc`` below the dataclass ``root`` (None where the path leaves the schema)."""
    tp: Any = root
    for part in loc:
        if typing.get_origin(tp) is typing.Annotated:
            tp = typing.get_args(tp)[0]
        if typing.get_origin(tp) in (typing.Union, types.UnionType):  # ``X | None``: errors are about X
            tp = next(a for a in typing.get_args(tp) if a is not type(None))
        if isinstance(part, str) and dataclasses.is_dataclass(tp):
            tp = typing.get_type_hints(tp).get(part)
        elif isinstance(part, int) and typing.get_origin(tp) is list:
            tp = typing.get_args(tp)[0]
        else:
            return None
    return tp


def _describe(root: type, err: ErrorDetails) -> str:
    loc: Loc = tuple(err["loc"])
    key, kind, value, ctx = dotted(loc), err["type"], err["input"], err.get("ctx") or {}
    if kind in ("extra_forbidden", "unexpected_keyword_argument"):
        owner = _type_at(root, loc[:-1])
        names = [f.name for f in dataclasses.fields(owner)] if dataclasses.is_dataclass(owner) else []
        plain = ".".join(str(part) for part in loc)  # quoted by unknown_key
        return unknown_key(plain, str(loc[-1]), names, getattr(owner, "KEY_ALIASES", None))
    if kind in ("dataclass_type", "dataclass_exact_type"):
        return f"{key}: expected a mapping, got {value!r}"
    if kind in BOUND_ERRORS:
        op = BOUND_ERRORS[kind]
        return bound_message(key, op, next(iter(ctx.values())), value)
    if kind == "string_too_short":
        return f"{key} must not be empty, got {value!r}"
    if kind == "finite_number":
        return f"{key}: expected a finite number, got {value!r}"
    tp = _type_at(root, loc)
    if kind == "literal_error":
        return f"{key}: expected one of {type_name(tp)}, got {value!r}"
    if kind.endswith(("_type", "_parsing")) and tp is not None:
        return f"{key}: expected {type_name(tp)}, got {value!r} ({type(value).__name__})"
    return f"{key}: {err['msg']}"


def describe_errors(root: type, error: ValidationError) -> list[str]:
    """One message per problem pydantic found while validating the dataclass ``root`` (duplicates dropped)."""
    return list(dict.fromkeys(_describe(root, err) for err in error.errors()))
