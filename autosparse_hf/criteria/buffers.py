"""Parameter-sized working tensors: views of one allocation (FORCE's masked weights, ProsPr's trajectory), the
prunable tensors laid out as pieces of flat vectors, and the chunks a float64 encoding is written in."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

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


@dataclass
class FlatLayout:
    """The prunable tensors as consecutive pieces of flat vectors (one global selection reads them in place)."""

    weights: dict[str, torch.Tensor]

    def __post_init__(self) -> None:
        self.names = list(self.weights)
        self.numel = {n: w.numel() for n, w in self.weights.items()}
        self.offsets: dict[str, int] = {}
        offset = 0
        for n in self.names:
            self.offsets[n] = offset
            offset += self.numel[n]
        self.total = offset
        first = next(iter(self.weights.values()), None)
        self.device = first.device if first is not None else torch.device("cpu")

    def view(self, flat: torch.Tensor, name: str) -> torch.Tensor:
        """``name``'s piece of the flat vector ``flat`` (1-D)."""
        offset = self.offsets[name]
        return flat[offset : offset + self.numel[name]]

    def masked(self, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """``w0 * mask`` per tensor, as leaves that take gradients; one flat allocation when the dtypes agree, so the
        buffer goes back to the system when the step drops it."""
        out = flat_empty_like(self.weights)
        for n, w0 in self.weights.items():
            torch.mul(w0, self.view(mask, n).view(w0.shape), out=out[n])
            out[n].requires_grad_(True)
        return out


def step_dtype(steps: int) -> torch.dtype:
    """The smallest integer type that holds step (round) numbers up to ``steps``: a removal record's."""
    return torch.uint8 if steps < 256 else torch.int16 if steps < 2**15 else torch.int32


def record_step(record: torch.Tensor, removed: torch.Tensor, k: int) -> None:
    """Write step ``k`` into the integer ``record`` where ``removed`` (booleans) is true. Each weight is removed once,
    so its entry is still 0 and adding ``k`` there is writing it: a masked fill with a boolean mask is an order of
    magnitude slower on the CPU."""
    record.add_(removed.view(torch.uint8) if record.dtype == torch.uint8 else removed.to(record.dtype), alpha=k)


# Entries per chunk of an encoding written piecewise (its float64 temporaries: 8 MiB each).
FINISH_CHUNK = 1 << 20


def chunks(numel: int) -> list[slice]:
    """Consecutive slices of at most ``FINISH_CHUNK`` entries covering ``range(numel)``."""
    return [slice(start, min(start + FINISH_CHUNK, numel)) for start in range(0, numel, FINISH_CHUNK)]
