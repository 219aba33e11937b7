"""Guards against silent failure: a mask that empties layers, a model that is not at initialization.

One warning per call through the library's logger (``logging.getLogger("autosparse_hf")``), naming the tensors and
the remedy. Layer collapse (a tensor pruned away entirely) cuts the network; METHOD.md, section 6.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from .masks import MaskSet

logger = logging.getLogger(__name__)

# A tensor keeping less than this fraction is reported with the collapse warning (an emptied one always is).
COLLAPSE_DENSITY = 0.001
# More than this share of all scores equal to the score at the threshold is reported (the tie-break then decides).
TIE_SHARE_WARNING = 0.01
# A model whose prunable weights hold more exact zeros than this share is probably not at initialization.
ZERO_SHARE_WARNING = 0.01


def collapsed_tensors(masks: MaskSet, threshold: float = COLLAPSE_DENSITY) -> dict[str, float]:
    """Tensors a mask empties or keeps less than ``threshold`` of, with their densities."""
    return {n: d for n, d in masks.layer_density().items() if d == 0.0 or d < threshold}


def warn_collapsed(masks: MaskSet, min_density: float = 0.0) -> None:
    """Log one warning listing the tensors ``masks`` empties or nearly empties (layer collapse cuts the network)."""
    collapsed = collapsed_tensors(masks)
    if not collapsed:
        return
    listing = ", ".join(f"{n} ({100 * d:.3g}%)" for n, d in list(collapsed.items())[:8])
    more = f" and {len(collapsed) - 8} more" if len(collapsed) > 8 else ""
    hint = "" if min_density else "; min_density (e.g. 0.01) keeps a share of every tensor"
    logger.warning(
        "%s: %d of %d tensors keep less than %.1f%% of their weights: %s%s%s",
        masks.metadata.get("criterion", "pruning"), len(collapsed), len(masks), 100 * COLLAPSE_DENSITY, listing,
        more, hint,
    )


def warn_if_not_at_initialization(params: Mapping[str, Any], model_class: str = "model", who: str = "") -> float:
    """Warn when the prunable weights already hold many exact zeros (a pruned, or trained-and-pruned, model handed to
    pruning at initialization or IRP); returns the share of zeros. ``params``: ``get_prunable_parameters``."""
    total = sum(p.param.numel() for p in params.values())
    zeros = sum(int((p.param.detach() == 0).sum()) for p in params.values())
    share = zeros / total if total else 0.0
    if share > ZERO_SHARE_WARNING:
        logger.warning(
            "%s%s%.1f%% of the prunable weights of %s are exactly zero: is it already pruned? Pruning at "
            "initialization and IRP expect a freshly initialized model",
            who, ": " if who else "", 100 * share, model_class,
        )
    return share


def warn_ties(scores: Mapping[str, Any], masks: MaskSet) -> float:
    """Warn when many scores equal the lowest kept score while some of those weights were pruned: the tie-break
    (``|w0|``), not the criterion, chose between them. Returns the tied share of all scores."""
    kept = [s[masks[n].to(s.device)] for n, s in scores.items() if bool(masks[n].any())]
    if not kept:
        return 0.0
    threshold = min(float(k.min()) for k in kept)
    tied = sum(int((s == threshold).sum()) for s in scores.values())
    tied_kept = sum(int((s[masks[n].to(s.device)] == threshold).sum()) for n, s in scores.items())
    total = sum(s.numel() for s in scores.values())
    share = tied / total if total else 0.0
    if share > TIE_SHARE_WARNING and tied_kept < tied:
        logger.warning(
            "%s: %.1f%% of the scores equal the threshold score %.3g; the criterion cannot tell them apart, so the "
            "initial magnitude |w0| chose which to keep",
            masks.metadata.get("criterion", "pruning"), 100 * share, threshold,
        )
    return share


def warn_if_rotation_leaves_no_complete_checkpoint(args: Any, callback: str) -> None:
    """Warn when ``save_total_limit=1``: the Trainer deletes the previous checkpoint before the callbacks' ``on_save``
    writes their own state into the new one, so a run killed in between has no complete checkpoint to resume from."""
    if getattr(args, "save_strategy", "no") not in ("no", None) and getattr(args, "save_total_limit", None) == 1:
        logger.warning(
            "%s: save_total_limit=1 deletes the previous checkpoint before this callback's state is written into the "
            "new one; a run stopped in that window cannot resume. Use save_total_limit=2 or more.",
            callback,
        )

