"""One pruning round's scores ``|g| * w`` computed on the CPU as they are read, never stored, and the survivors the
round removes (the selection of :mod:`autosparse_hf.masks.removal`, on scores made chunk by chunk)."""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from . import removal
from .removal import (
    EMPTY_POSITIONS,
    FLOAT_OF,
    UNSIGNED_OF,
    Bound,
    bounded_flags,
    check_count,
    every_survivor,
    sample_brackets,
    sampling,
    split_lowest,
)

# Entries per chunk of ProductRound's pass: the chunk's scores and flags stay in the core's cache.
_CHUNK = 1 << 17


def _map(fn: Any, items: Sequence[int]) -> list[Any]:
    """``[fn(i) for i in items]``, on as many threads as torch computes with (numpy releases the GIL in the passes)."""
    threads = min(torch.get_num_threads(), len(items))
    if threads <= 1:
        return [fn(i) for i in items]
    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(fn, items))


class ProductRound:
    """One round's scores ``|g| * w`` on the CPU, never stored: read in chunks that stay in the core's cache.

    ``w`` holds the weights' magnitudes with the pruned ones at ``-0.0``, so a pruned weight scores ``-0.0`` (or NaN
    for a non-finite gradient, which the maxima show) and a survivor ``|g| * w == |w * g|`` exactly.

    Args:
        grads: Flat gradients, numpy float32 or float64 (one dtype), one per tensor.
        weights: Flat weights, same dtype and sizes.

    Example:
        ```python
        >>> scores = ProductRound([np.array([1.0, -2.0, 3.0, 4.0])], [np.array([0.5, 0.5, -0.0, 1.0])])
        >>> scores.select([3], 1)  # scores 0.5, 1.0, (pruned), 4.0
        ([array([0])], [array([0.5])])
        >>> scores.maxima, scores.values(0, np.array([3]))
        ([4.0], array([4.]))
        ```
    """

    def __init__(self, grads: Sequence[np.ndarray], weights: Sequence[np.ndarray]) -> None:
        self.grads, self.weights = list(grads), list(weights)
        self.sizes = [g.size for g in self.grads]
        dtype = self.grads[0].dtype if self.grads else np.dtype(np.float32)
        self.unsigned = UNSIGNED_OF[dtype.type]
        # Per tensor (NaN-propagating; -inf for an empty tensor), known after a pass.
        self.maxima: list[float] | None = None
        self._longest = min(max(self.sizes, default=0), _CHUNK)
        self._scratch = threading.local()  # per thread: a chunk's scores and flags

    @property
    def finite(self) -> bool:
        """Whether every score (and so every gradient) is finite; computes the maxima if no pass has."""
        if self.maxima is None:
            self.maxima = [self._pass(i, None, True)[2] for i in range(len(self.grads))]
        return all(m < math.inf for m in self.maxima)  # False for NaN; -inf: an empty tensor

    def values(self, index: int, positions: np.ndarray | slice) -> np.ndarray:
        """The scores of tensor ``index`` at ``positions``: the same arithmetic as the pass."""
        scores = np.abs(self.grads[index][positions])
        with np.errstate(invalid="ignore", over="ignore"):  # -0.0 * inf and overflows: NaN and inf, reported
            return np.multiply(scores, self.weights[index][positions], out=scores)

    def dense(self, index: int) -> np.ndarray:
        """The scores of tensor ``index``, all of them (a new array)."""
        return self.values(index, slice(None))

    def _pass(self, index: int, bound: Bound | None, maximum: bool) -> tuple[np.ndarray, np.ndarray, float]:
        """One read of tensor ``index``: its maximum (when asked) and the positions and keys of the survivors leaving
        no later than ``bound`` (local ``cut``; none when ``bound`` is ``None``), chunk by chunk. Stops early at a
        non-finite maximum."""
        grad, weight = self.grads[index], self.weights[index]
        if not hasattr(self._scratch, "scores"):
            self._scratch.scores = np.empty(self._longest, dtype=grad.dtype)
            self._scratch.flags = np.empty(self._longest, dtype=bool)
        buffer, flags = self._scratch.scores, self._scratch.flags
        positions: list[np.ndarray] = []
        keys: list[np.ndarray] = []
        peak = -math.inf
        key = self.unsigned(bound.key) if bound is not None else None
        cut = bound.cut if bound is not None else 0
        # -0.0 * inf and overflows give NaN and inf: they show in the maximum and are reported, not warned about.
        with np.errstate(invalid="ignore", over="ignore"):
            for start in range(0, grad.size, _CHUNK):
                stop = min(start + _CHUNK, grad.size)
                scores = buffer[: stop - start]
                np.abs(grad[start:stop], out=scores)
                np.multiply(scores, weight[start:stop], out=scores)
                if maximum:
                    top = float(scores.max())
                    if not top < math.inf:  # NaN or infinite
                        return EMPTY_POSITIONS, np.empty(0, dtype=self.unsigned), top
                    peak = max(peak, top)
                if key is not None:
                    bits = scores.view(self.unsigned)
                    chosen = np.flatnonzero(bounded_flags(bits, key, cut - start, flags))
                    if chosen.size:
                        keys.append(bits[chosen])
                        positions.append(np.add(chosen, start, out=chosen))
        if not positions:
            return EMPTY_POSITIONS, np.empty(0, dtype=self.unsigned), peak
        return np.concatenate(positions), np.concatenate(keys), peak

    def select(
        self, alive: Sequence[int], count: int | Sequence[int]
    ) -> tuple[list[np.ndarray], list[np.ndarray]] | None:
        """The survivors to remove, per tensor: positions (ascending) and scores. The ``count`` lowest of all tensors
        together (an int) or ``count[i]`` of tensor ``i`` (a sequence), ties removing the last in (tensor, position)
        order. ``None`` if a score is not finite (see :attr:`maxima`, known after the call)."""
        n = len(self.grads)
        per_tensor = not isinstance(count, int)
        counts = list(count) if per_tensor else [count]  # type: ignore[arg-type]
        groups = [[i] for i in range(n)] if per_tensor else [list(range(n))]
        # Brackets first, from strided samples (their scores computed as the pass computes them).
        bounds: list[list[Bound | None]] = []
        offsets = [0] * n  # each tensor's offset in its group's concatenation
        for c, group in zip(counts, groups, strict=True):
            total_alive = check_count([alive[i] for i in group], c)
            sizes = [self.sizes[i] for i in group]
            stride, starts, group_offsets = sampling(sizes)
            for i, o in zip(group, group_offsets, strict=True):
                offsets[i] = o
            brackets: list[Bound | None] = [None]
            if 0 < c < total_alive and sum(sizes) >= removal._BRACKET_MIN_SIZE:
                samples = [self.values(i, slice(s, None, stride)) for i, s in zip(group, starts, strict=True)]
                keys = np.concatenate(samples).view(self.unsigned)
                places = np.concatenate(
                    [np.arange(o + s, o + m, stride) for o, s, m in zip(group_offsets, starts, sizes, strict=True)]
                )
                brackets = sample_brackets(keys, places, sum(sizes), c)
            bounds.append(brackets)
        # One pass per tensor: maxima (unless known) and candidates under the tightest bracket.
        if self.maxima is not None and not self.finite:
            return None
        known = self.maxima is not None
        every = every_survivor(self.unsigned)
        first: list[Bound | None] = [None] * n
        for c, brackets, group in zip(counts, bounds, groups, strict=True):
            for i in group:
                if c and alive[i]:
                    bound = brackets[0] if brackets[0] is not None else every
                    first[i] = Bound(bound.key, bound.cut - offsets[i])
        found: list[tuple[np.ndarray, np.ndarray]] = []
        maxima = []
        for positions, keys, peak in _map(lambda i: self._pass(i, first[i], not known), range(n)):
            maxima.append(peak)
            found.append((positions, keys))
        if not known:
            self.maxima = maxima
            if not self.finite:
                return None
        removed: list[np.ndarray] = [EMPTY_POSITIONS] * n
        values = [np.empty(0, dtype=FLOAT_OF[self.unsigned])] * n
        for c, brackets, group in zip(counts, bounds, groups, strict=True):
            if c == 0:
                continue
            part = [found[i] for i in group]
            for bound in brackets[1:]:  # the bracket fell short: a wider one (the last: every survivor)
                if sum(p.size for p, _ in part) > c:
                    break
                key, cut = bound if bound is not None else every
                part = [self._pass(i, Bound(key, cut - offsets[i]), False)[:2] if alive[i] else found[i] for i in group]
            for i, positions, keys in zip(group, *split_lowest(part, c), strict=True):
                removed[i], values[i] = positions, keys.view(FLOAT_OF[self.unsigned])
        return removed, values
