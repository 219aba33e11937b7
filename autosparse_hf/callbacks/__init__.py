"""Trainer callbacks that prune at initialization (``PaICallback``, ``AutoSCallback``) and keep masks enforced."""

from .enforcing import MaskEnforcingCallback
from .pai import CHECKPOINT_MASK_DIR, AutoSCallback, PaICallback

__all__ = ["CHECKPOINT_MASK_DIR", "AutoSCallback", "MaskEnforcingCallback", "PaICallback"]
