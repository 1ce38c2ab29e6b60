"""Lazy public names for package ``__init__`` modules: ``import seo_dist.checkpoint`` stays cheap (no torch,
no DeepSpeed) until a name is used, which keeps ``seo-dist verify`` and ``seo-dist ls`` fast."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_getattr(package: str, public: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` that imports ``public[name]`` (a module path) on first use of ``name``."""

    def __getattr__(name: str) -> Any:
        if name in public:
            return getattr(importlib.import_module(public[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
