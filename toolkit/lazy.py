"""Lazy package exports (PEP 562): a package names its public objects and where they live; a name's
module is imported on first use, so importing the package stays cheap.

In a package ``__init__.py``::

    __all__, __getattr__, __dir__ = lazy_exports(__name__, {"losses": ["SoftDiceLoss"], ...})
"""

from __future__ import annotations

import importlib
import sys
from typing import Any, Callable

__all__ = ["lazy_exports"]


def lazy_exports(package: str, exports: dict[str, list[str]]) -> tuple[list[str], Callable[[str], Any],
                                                                      Callable[[], list[str]]]:
    """``(__all__, __getattr__, __dir__)`` for ``package``; ``exports`` maps a submodule (relative to the
    package, e.g. ``"data.splits"``) to the names it provides. An unknown name raises AttributeError."""
    where = {name: module for module, names in exports.items() for name in names}
    namespace = sys.modules[package].__dict__

    def __getattr__(name: str) -> Any:
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f".{where[name]}", package), name)
        namespace[name] = value  # later look-ups skip this function
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(where))

    return sorted(where), __getattr__, __dir__
