"""NTK-SAP's record of its rounds (Wang, Li & Sun, ICLR 2023, arXiv 2304.02840): the survivors' largest saliency of
a round, and the float64 scores written once from what each round removed (see
:class:`autosparse_hf.criteria.ntksap.NTKSAPCriterion`)."""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from ..families import PrunableParameter
from .buffers import chunks


def survivor_peak(saliency: dict[str, torch.Tensor], alive: dict[str, torch.Tensor], k: int) -> float:
    """The largest saliency of a surviving weight (0.0 when there is none); a non-finite one is an error.

    ``saliency`` holds non-negative values (flat, or shaped like the weights); only the entries ``alive`` marks are
    read (the others are the record of earlier rounds). Read chunk by chunk, so the temporaries stay small on large
    tensors; a NaN survivor propagates through the maximum.
    """
    peak = 0.0
    for n, g in saliency.items():
        values, survivors = g.reshape(-1), alive[n]
        for part in chunks(values.numel()):
            top = float(torch.where(survivors[part], values[part], values.new_zeros(())).max())
            if not math.isfinite(top):
                raise ValueError(f"ntksap: non-finite saliencies in round {k} for {n!r}")
            peak = max(peak, top)
    return peak


def encode_scores(
    params: Mapping[str, PrunableParameter],
    removed_saliency: dict[str, torch.Tensor],
    removed_round: dict[str, torch.Tensor],
    last_saliency: dict[str, torch.Tensor],
    alive: Mapping[str, torch.Tensor],
    peaks: list[float],
    rounds: int,
) -> dict[str, torch.Tensor]:
    """The float64 scores: a weight removed in round ``r`` scores ``(r - 1) + 0.5 s_r / peak_r``, a survivor
    ``rounds + s / peak`` (its last saliency, the last round's peak), one pruned before scoring -1; float64 arithmetic
    on the saliencies, in that order, written chunk by chunk (each record is released once its scores exist)."""
    device = next(iter(removed_saliency.values())).device if removed_saliency else torch.device("cpu")
    scales = torch.tensor(peaks, dtype=torch.float64, device=device)
    result = {}
    for n in params:
        record, at, kept = removed_saliency.pop(n), removed_round.pop(n), alive[n]
        last = last_saliency.pop(n).reshape(-1)
        out = torch.empty(record.numel(), dtype=torch.float64, device=record.device)
        for part in chunks(record.numel()):
            r = at[part].long()
            removed = (r - 1).double() + 0.5 * record[part].double() / scales[r]
            survived = rounds + last[part].double() / peaks[-1]
            torch.where(kept[part], survived, torch.where(r > 0, removed, -1.0), out=out[part])
            del r, removed, survived
        result[n] = out.view(params[n].param.shape)
    return result
