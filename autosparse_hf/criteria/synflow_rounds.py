"""SynFlow's rounds (Tanaka et al. 2020, arXiv 2006.05467): one round's scores ``|w| * |dR/dw|`` read from the
weights and their gradients, and the record of which weights each round removed, from which the final float64
scores are written once (see :class:`autosparse_hf.criteria.synflow.SynFlowCriterion`)."""

from __future__ import annotations

import math
import mmap
from typing import Any

import numpy as np
import torch

from ..masks import removal
from ..masks.product_round import ProductRound
from ..masks.removal import lowest_alive

# What a round removes from a tensor: flat positions (ascending) and their scores.
Removed = tuple[np.ndarray, np.ndarray]


class RoundScores:
    """One round's scores ``|w| * |dR/dw|``, read from the weights and their gradients.

    The weights are ``|w|`` with the pruned ones at ``-0.0``, so a survivor scores ``|w * dR/dw|`` exactly (rounding
    is symmetric) and a pruned weight ``-0.0``. On the CPU (every tensor in one dtype) the scores are computed
    chunk by chunk as they are read and never stored (:class:`autosparse_hf.masks.product_round.ProductRound`);
    elsewhere they are computed in place in the gradients and read there
    (:func:`autosparse_hf.masks.removal.lowest_alive`).
    """

    def __init__(self, params: dict[str, Any]) -> None:
        self.names = list(params)
        weights = [p.param.detach() for p in params.values()]
        grads = [
            p.param.grad if p.param.grad is not None else torch.zeros_like(w)
            for p, w in zip(params.values(), weights, strict=True)
        ]
        self.devices = [w.device for w in weights]
        self.product: ProductRound | None = None
        self.flat: list[torch.Tensor] = []
        self._maxima: list[float] = []
        if removal.NUMPY_ON_CPU and all(d.type == "cpu" for d in self.devices) and len({w.dtype for w in weights}) == 1:
            self.product = ProductRound(
                [g.detach().contiguous().numpy().reshape(-1) for g in grads],
                [w.contiguous().numpy().reshape(-1) for w in weights],
            )
        else:
            self.flat = [g.abs_().mul_(w).reshape(-1) for g, w in zip(grads, weights, strict=True)]
            self._maxima = [float(f.max()) if f.numel() else -math.inf for f in self.flat]

    @property
    def maxima(self) -> list[float]:
        """Each tensor's largest score (NaN-propagating; -inf for an empty tensor)."""
        if self.product is not None:
            if self.product.maxima is None:
                self.product.finite  # noqa: B018  (computes the maxima: one read of every tensor)
            return self.product.maxima or []
        return self._maxima

    @property
    def finite(self) -> bool:
        """Whether every score (and so every gradient) is finite."""
        return all(m < math.inf for m in self.maxima)  # False for NaN

    @property
    def peak(self) -> float:
        """The largest score (0.0 when there is none)."""
        return max((m for m in self.maxima if m > -math.inf), default=0.0)

    def lowest(self, alive: dict[str, int], count: int | dict[str, int]) -> dict[str, Removed] | None:
        """The survivors to remove, per tensor (positions, ascending, and their scores): the ``count`` lowest of all
        tensors, or ``count[name]`` of each (see :func:`autosparse_hf.masks.removal.lowest_alive`); ``None`` when
        a score is not finite."""
        counts = [count[n] for n in self.names] if isinstance(count, dict) else count
        alive_list = [alive[n] for n in self.names]
        if self.product is not None:
            chosen = self.product.select(alive_list, counts)
            if chosen is None:
                return None
            return {n: (p, v) for n, p, v in zip(self.names, *chosen, strict=True)}
        if not self.finite:
            return None
        if isinstance(counts, int):
            # Several float dtypes are compared in float64 (exact, order-preserving).
            flat = self.flat if len({f.dtype for f in self.flat}) == 1 else [f.double() for f in self.flat]
            positions, values = lowest_alive(flat, alive_list, counts)
            return {n: (p, v) for n, p, v in zip(self.names, positions, values, strict=True)}
        result = {}
        for n, f, a, c in zip(self.names, self.flat, alive_list, counts, strict=True):
            positions, values = lowest_alive([f], [a], c)
            result[n] = (positions[0], values[0])
        return result

    def values(self, index: int, positions: np.ndarray) -> torch.Tensor:
        """The scores of tensor ``index`` at ``positions`` (on its device)."""
        if self.product is not None:
            return torch.from_numpy(self.product.values(index, positions))
        return self.flat[index][torch.from_numpy(positions).to(self.devices[index])]

    def release(self, index: int) -> None:
        """Drop what is held of tensor ``index``'s gradient (its scores are not read again)."""
        if self.product is not None:  # (a new empty array: a slice would keep the gradient's memory)
            self.product.grads[index] = np.empty(0, dtype=self.product.grads[index].dtype)
        else:
            self.flat[index] = self.flat[index].new_empty(0)

    def dense(self) -> dict[str, torch.Tensor]:
        """Every score, flat, per tensor."""
        if self.product is not None:
            return {n: torch.from_numpy(self.product.dense(i)) for i, n in enumerate(self.names)}
        return dict(zip(self.names, self.flat, strict=True))


class Survivors:
    """SynFlow's record of the rounds: how many weights of each tensor survive, and which weights each round removed
    with their scores in that round.

    Which weights survive is not stored: a removed weight is held at ``-0.0`` in the model (see
    :class:`RoundScores`). A round's removed positions are kept as 16-bit offsets within blocks of 65536 weights
    (two bytes per removed weight, and a count per block), their scores in the round's dtype, appended per tensor to
    memory reserved for all its weights (:class:`_Reserved`: only what is written is resident, and it is all returned
    when the tensor's scores are written); the survivors of the last round are recorded the same way. The float64
    scores are written once, by :meth:`result`: a weight removed in round ``r`` scores ``r - 1 + 0.5 * s / peak_r``, a
    survivor ``rounds + s / peak``, a weight pruned before scoring -1.
    """

    def __init__(self, params: dict[str, Any], pruned: dict[str, torch.Tensor] | None, rounds: int) -> None:
        self.params = params
        self.rounds = rounds
        self.alive: dict[str, int] = {}
        self.offsets: dict[str, _Reserved] = {}
        self.values: dict[str, dict[np.dtype, _Reserved]] = {n: {} for n in params}
        # Per tensor and round that removed some: (round, where its offsets start, where its values start, how many,
        # the count per block (None: one block), the values' dtype); round 0: the last round's survivors.
        self.rounds_of: dict[str, list[tuple[int, int, int, int, tuple[int, ...] | None, np.dtype]]] = {n: [] for n in params}
        self.peaks: dict[int, float] = {}
        for n, p in params.items():
            self.alive[n] = p.param.numel()
            self.offsets[n] = _Reserved(np.uint16, p.param.numel())
            if pruned is not None:
                gone = pruned[n].reshape(p.param.shape).to(p.param.device)
                with torch.no_grad():
                    p.param.masked_fill_(gone, -0.0)
                self.alive[n] -= int(gone.sum())

    def _record(self, n: str, k: int, positions: np.ndarray, values: np.ndarray) -> None:
        """Append round ``k``'s ``positions`` (ascending) of tensor ``n`` and their scores ``values``."""
        numel = self.params[n].param.numel()
        # Ascending positions: the count per block of 65536 from where each block starts among them.
        blocks = (numel + 0xFFFF) >> 16
        # (as Python ints: small arrays kept for the whole scoring would pin the C heap between the rounds' transients)
        counts = tuple(np.diff(np.searchsorted(positions, np.arange(blocks + 1) << 16)).tolist()) if blocks > 1 else None
        start = self.offsets[n].append(positions.astype(np.uint16))  # the low 16 bits
        reserved = self.values[n].get(values.dtype)
        if reserved is None:
            reserved = self.values[n][values.dtype] = _Reserved(values.dtype, numel)
        self.rounds_of[n].append((k, start, reserved.append(values), positions.size, counts, values.dtype))

    def remove(self, k: int, removed: dict[str, Removed], peak: float) -> None:
        """Round ``k`` removes the weights at ``removed[name][0]`` (flat positions, ascending), which scored
        ``removed[name][1]`` in it."""
        self.peaks[k] = peak
        for n, (positions, values) in removed.items():
            if positions.size:
                self.alive[n] -= positions.size
                self._record(n, k, positions, values)
                _hold_at_negative_zero(self.params[n].param, positions)

    def finish(self, scores: RoundScores, peak: float) -> None:
        """The last round's survivors and their scores in it; each tensor's gradient is released once read."""
        self.peaks[0] = peak
        for i, (n, p) in enumerate(self.params.items()):
            weight = p.param.detach().reshape(-1)
            positions = torch.nonzero(~torch.signbit(weight)).squeeze(1).cpu().numpy()
            if positions.size:
                self._record(n, 0, positions, scores.values(i, positions).cpu().numpy())
            scores.release(i)
            p.param.grad = None

    def result(self) -> dict[str, torch.Tensor]:
        """The float64 scores, tensor by tensor (each tensor's record is released once its scores are written)."""
        result = {}
        for n, p in self.params.items():
            device = p.param.device
            out = torch.full((p.param.numel(),), -1.0, dtype=torch.float64, device=device)
            offsets, reserved = self.offsets.pop(n), self.values.pop(n)
            for k, start, at, size, counts, dtype in self.rounds_of.pop(n):
                positions = offsets.array[start : start + size].astype(np.int64)
                if counts is not None:  # the block of each position, from the count per block
                    positions |= np.repeat(np.arange(len(counts), dtype=np.int64), counts) << 16
                values = torch.from_numpy(reserved[dtype].array[at : at + size]).to(device).double()
                # The same float64 operations as scoring always did, with the round's peak as a Python float.
                if k == 0:
                    _write(out, positions, self.rounds + values / self.peaks[0])
                else:
                    _write(out, positions, (k - 1) + 0.5 * values / self.peaks[k])
                del values
            offsets.close()
            for memory in reserved.values():
                memory.close()
            result[n] = out.reshape(p.param.shape)
        return result


def _write(out: torch.Tensor, positions: np.ndarray, values: torch.Tensor) -> None:
    """``out[positions] = values`` (numpy's indexing on the CPU)."""
    if out.device.type == "cpu":
        out.numpy()[positions] = values.numpy()
    else:
        out[torch.from_numpy(positions).to(out.device)] = values


class _Reserved:
    """An array that grows by appending, in memory reserved up front for ``capacity`` entries (an anonymous memory
    map): only the pages written are resident, nothing is copied to grow, and :meth:`close` returns all of it to the
    system at once (small arrays kept for the whole scoring would otherwise pin the allocator's heap between the large
    transient ones of every round)."""

    def __init__(self, dtype: Any, capacity: int) -> None:
        self.dtype = np.dtype(dtype)
        self._map = mmap.mmap(-1, max(capacity, 1) * self.dtype.itemsize)
        self._all = np.frombuffer(self._map, dtype=self.dtype)
        self.used = 0

    @property
    def array(self) -> np.ndarray:
        return self._all[: self.used]

    def append(self, values: np.ndarray) -> int:
        """Append ``values``; returns where they start."""
        start, self.used = self.used, self.used + values.size
        self._all[start : self.used] = values
        return start

    def close(self) -> None:
        del self._all
        try:
            self._map.close()
        except BufferError:  # a view is still alive: the map closes when the last one goes
            pass


def _hold_at_negative_zero(param: torch.Tensor, positions: np.ndarray) -> None:
    """Set the weights at flat (row-major) ``positions`` of ``param`` to ``-0.0``, in place, whatever its strides."""
    if param.is_contiguous() and param.device.type == "cpu":
        param.detach().numpy().reshape(-1)[positions] = -0.0
        return
    with torch.no_grad():
        if param.is_contiguous():
            param.view(-1)[torch.from_numpy(positions).to(param.device)] = -0.0
        else:
            param[torch.unravel_index(torch.from_numpy(positions).to(param.device), param.shape)] = -0.0
