"""The value types of config fields, as pydantic reads them from YAML, and their range rules.

Scalars are strict: a bool is not an int, ``"5"`` is not an int and ``1`` is not ``true``. The one
exception is a float: an int is accepted, and so is a numeric string, because PyYAML reads ``3e-4``
(no dot) as the string ``"3e-4"``. NaN and infinity are rejected. Ranges are ``annotated_types``
constraints (``Annotated[int, Ge(1)]``), which pydantic enforces when a config is loaded and
:func:`range_problems` enforces on a config built in Python (a section's ``validate()``, and
``CheckpointConfig``'s constructor, as checkpoint managers take it on its own).
"""

from __future__ import annotations

import dataclasses
import operator
import types
import typing
from collections.abc import Callable
from typing import Annotated, Any

from annotated_types import Ge, Gt, Le, Lt, MinLen
from pydantic import AllowInfNan, BeforeValidator, Strict


def _number_from_yaml(value: Any) -> Any:
    """``"3e-4"`` -> ``0.0003``; anything else is left for the strict float check to accept or reject."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


STRICT_KEYS = {"extra": "forbid"}
"""pydantic config of every section (``__pydantic_config__``): an unknown key is an error."""

Int = Annotated[int, Strict()]
Bool = Annotated[bool, Strict()]
Str = Annotated[str, Strict()]
Float = Annotated[float, BeforeValidator(_number_from_yaml), Strict(), AllowInfNan(False)]

# pydantic's error type for a failed bound -> how the bound reads in a message
BOUND_ERRORS = {"greater_than_equal": ">=", "greater_than": ">", "less_than_equal": "<=", "less_than": "<"}
BOUNDS: dict[type, tuple[str, str, Callable[[Any, Any], bool]]] = {
    Ge: ("ge", ">=", operator.ge),
    Gt: ("gt", ">", operator.gt),
    Le: ("le", "<=", operator.le),
    Lt: ("lt", "<", operator.lt),
}


def bound_message(key: str, op: str, bound: Any, value: Any) -> str:
    return f"{key} must be {op} {bound}, got {value!r}"


def hint_constraints(hint: Any) -> tuple[Any, ...]:
    """``(Ge(2), ...)`` of an ``Annotated`` type (``X | None`` too); empty for a plain type."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    return typing.get_args(hint)[1:] if typing.get_origin(hint) is Annotated else ()


def _constraints(cls: type) -> dict[str, tuple[Any, ...]]:
    """``{field: (Ge(2), ...)}`` read from the field types of a config dataclass."""
    hints = typing.get_type_hints(cls, include_extras=True)
    return {f.name: found for f in dataclasses.fields(cls) if (found := hint_constraints(hints[f.name]))}


def range_problems(config: object, section: str, spelled: dict[str, str] | None = None) -> list[str]:
    """Every field of ``config`` outside its ``Ge``/``Gt``/``Le``/``Lt``/``MinLen`` bounds, one message each.

    ``spelled`` maps a field to the alias the caller used for it, so that the message names what they wrote.
    """
    problems = []
    for name, constraints in _constraints(type(config)).items():
        value = getattr(config, name)
        if value is None:
            continue
        key = f"{section}.{(spelled or {}).get(name, name)}"
        for c in constraints:
            if isinstance(c, MinLen) and len(value) < c.min_length:
                problems.append(f"{key} must not be empty, got {value!r}")
            elif type(c) in BOUNDS:
                attr, op, holds = BOUNDS[type(c)]
                if not holds(value, getattr(c, attr)):
                    problems.append(bound_message(key, op, getattr(c, attr), value))
    return problems
