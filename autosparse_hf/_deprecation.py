"""Old module paths kept for one release after the re-layout: each warns once and forwards to the new home."""

from __future__ import annotations

import importlib
import warnings
from types import ModuleType
from typing import Any


def forward(old: str, new: str) -> tuple[ModuleType, Any]:
    """Warn that ``old`` moved to ``new``; return the new module and a module ``__getattr__`` forwarding to it."""
    warnings.warn(
        f"{old} moved to {new}; the old path will be removed in the next release",
        FutureWarning,
        stacklevel=3,
    )
    module = importlib.import_module(new)

    def __getattr__(name: str) -> Any:
        return getattr(module, name)

    return module, __getattr__
