"""Iterative rewind pruning (IRP) as a Trainer callback, and its density schedules.

Names are imported on first use (see ``autosparse_hf._lazy``): ``IRPConfig`` and the recipe's arguments
(``autosparse_hf.irp.arguments``) do not import torch.
"""

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

_EXPORTS: dict[str, list[str]] = {
    "callback": ["IRPCallback"],
    "config": ["SCHEDULES", "IRPConfig"],
    "schedule": ["kept_counts"],
}

__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)

if TYPE_CHECKING:
    from .callback import IRPCallback
    from .config import SCHEDULES, IRPConfig
    from .schedule import kept_counts

__all__ = ["SCHEDULES", "IRPCallback", "IRPConfig", "kept_counts"]
