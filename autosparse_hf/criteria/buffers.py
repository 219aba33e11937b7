"""Parameter-sized working tensors as views of one allocation (FORCE's masked weights, ProsPr's trajectory)."""

from __future__ import annotations

from collections.abc import Mapping

import torch


def flat_empty_like(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Uninitialized tensors shaped like ``tensors``, as views of one flat buffer when they share dtype and device.

    Parameter-sized vectors that live across passes (the trajectory's weights, the adjoint) are then one large
    allocation, which the allocator maps and hands back whole, instead of dozens of mid-sized blocks scattered
    between the activations that each pass frees (a fragmented heap the process cannot shrink: peak memory).
    """
    kinds = {(t.dtype, t.device) for t in tensors.values()}
    if len(kinds) != 1:
        return {n: torch.empty_like(t) for n, t in tensors.items()}
    dtype, device = kinds.pop()
    buffer = torch.empty(sum(t.numel() for t in tensors.values()), dtype=dtype, device=device)
    out, offset = {}, 0
    for n, t in tensors.items():
        out[n] = buffer[offset : offset + t.numel()].view(t.shape)
        offset += t.numel()
    return out
