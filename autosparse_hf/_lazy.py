"""Lazy package exports (PEP 562), as ``transformers`` does: a name's module is imported on first access.

``import autosparse_hf`` (and importing a light submodule such as ``autosparse_hf.cli``) then costs almost nothing;
``from autosparse_hf import PruneConfig`` and ``autosparse_hf.PruneConfig`` import what that name needs, once. This
keeps a recipe's ``--help`` from importing torch, timm, datasets or matplotlib.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable, Mapping, Sequence
from typing import Any


def lazy_exports(
    package: str, namespace: dict[str, Any], exports: Mapping[str, Sequence[str]]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for ``package`` whose public names live in submodules.

    Args:
        package: The package's ``__name__``.
        namespace: Its ``globals()``; a name is stored there once imported, so later accesses are plain lookups.
        exports: Submodule (relative to ``package``) -> the public names it defines.

    Other attribute names that are submodules of ``package`` import that submodule (``autosparse_hf.features``).
    """
    where = {name: module for module, names in exports.items() for name in names}

    def __getattr__(name: str) -> Any:
        if name in where:
            value = getattr(importlib.import_module(f"{package}.{where[name]}"), name)
        elif not name.startswith("__") and importlib.util.find_spec(f"{package}.{name}") is not None:
            value = importlib.import_module(f"{package}.{name}")
        else:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(where))

    return __getattr__, __dir__
