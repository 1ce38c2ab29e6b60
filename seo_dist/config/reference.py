"""The README's config reference: a Markdown table of every key with its type, default and meaning."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import json
import textwrap
import typing
from typing import Any

from seo_dist.config.problems import type_name
from seo_dist.config.scalars import BOUNDS, hint_constraints
from seo_dist.config.sections import SECTIONS

DEEPSPEED_ROW = (
    "| `deepspeed` | mapping or path | `{}` | A standard DeepSpeed config, inline or a JSON file "
    "(relative to the YAML). Batch sizes are derived from `train`; `--set deepspeed.a.b=v` reaches inside. |"
)


def field_docs(cls: type) -> dict[str, str]:
    """The docstring under each dataclass field (read from the source, so the README can quote it)."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs = {}
    for node, nxt in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant):
            docs[node.target.id] = " ".join(str(nxt.value.value).split())  # type: ignore[union-attr]
    return docs


def _limits(hint: Any) -> list[str]:
    """``['>= 2']`` for ``Annotated[int, Ge(2)]``: the range a field's type allows."""
    limits = []
    for constraint in hint_constraints(hint):
        if type(constraint) in BOUNDS:
            attr, op, _ = BOUNDS[type(constraint)]
            limits.append(f"{op} {getattr(constraint, attr)}")
    return limits


def _type_cell(hint: Any) -> str:
    """``int``, ``int, >= 2``, ``'stop' / 'skip'``."""
    return ", ".join([type_name(hint).replace(" | ", " / "), *_limits(hint)])


def reference_markdown() -> str:
    """A Markdown table of every config key with its type (and range), default and meaning."""
    rows = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for section, cls in SECTIONS.items():
        rows.extend(_section_rows(section, cls))
    rows.append(DEEPSPEED_ROW)
    return "\n".join(rows)


def _section_rows(prefix: str, cls: type) -> list[str]:
    """One row per field of the dataclass ``cls``; a nested section (``experiment.mlflow``) gives its fields' rows."""
    docs = field_docs(cls)
    hints = typing.get_type_hints(cls, include_extras=True)
    rows = []
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            rows.extend(_section_rows(f"{prefix}.{f.name}", hints[f.name]))
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[operator]
        doc = docs.get(f.name, "").replace("``", "`")
        rows.append(f"| `{prefix}.{f.name}` | {_type_cell(hints[f.name])} | `{json.dumps(default)}` | {doc} |")
    return rows
