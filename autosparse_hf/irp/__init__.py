"""Iterative rewind pruning (IRP) as a Trainer callback, and its density schedules."""

from .callback import IRPCallback
from .config import SCHEDULES, IRPConfig
from .schedule import kept_counts

__all__ = ["SCHEDULES", "IRPCallback", "IRPConfig", "kept_counts"]
