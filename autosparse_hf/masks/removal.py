"""Which survivors a pruning round removes, read from scores whose sign bit marks the weights already pruned.

Iterative criteria (SynFlow) score every weight of a tensor each round, the pruned ones included, and hold a pruned
weight at ``-0.0``: a survivor's score ``|g| * w`` (``w = |w0| >= +0.0``) is ``>= +0.0`` and a pruned weight's is
exactly ``-0.0``. Read as unsigned integers of the same width, the bit patterns of non-negative floats sort as the
floats do, and ``-0.0`` (only the sign bit set) sorts above all of them; so one unsigned comparison, ``bits <= hi``
with ``hi`` below the sign bit, selects "a survivor scoring at most ``hi``" without a mask or a list of the
survivors, and nothing has to be compacted from round to round.

A round removes the ``count`` lowest-scoring survivors, ties removing the *last* in (tensor, position) order: exactly
what :func:`autosparse_hf.masks.topk.top_count` on the concatenated survivors does not keep (it keeps ties at the
lowest index), so a round keeps what ``select_masks(scores, ..., existing=survivors)`` keeps. In other words the
survivors leave in the order (score ascending, position in the concatenation descending). A strided sample of the
scores brackets the ``count``-th of that order from above by a (key, position) pair, so that a bracket can end inside
a block of equal scores (timm's zero-initialized blocks, quantized weights); one pass lists the survivors before the
bracket in that order (a few per cent), and the exact threshold and its ties are found among those only. If the
bracket falls short (an adversarial order of the scores), a wider one is tried, then every survivor: the answer
never depends on the sample.

Two forms, the same answer:

- :func:`lowest_alive` reads scores that are already stored (any device; torch there, numpy on the CPU).
- :class:`autosparse_hf.masks.product_round.ProductRound` computes ``|g| * w`` itself on the CPU, in cache-sized
  chunks, from the gradients and the weights, and never stores it: one read of each, and the score's maximum (to
  check it is finite) in the same pass.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch

from .topk import prime_at_least

# Below this many entries in all, every survivor is a candidate (no bracket).
_BRACKET_MIN_SIZE = 1 << 13
# Entries sampled (every p-th, p prime) to bracket the threshold: one in _BRACKET_EVERY, at least _BRACKET_SAMPLE_MIN
# and at most _BRACKET_SAMPLE; the bracket holds ~ this many standard deviations of the rank; when it falls short, a
# wider one (rank x 2, 4x the margin), then every survivor.
_BRACKET_EVERY = 256
_BRACKET_SAMPLE_MIN = 1 << 10
_BRACKET_SAMPLE = 1 << 15
_BRACKET_SIGMAS = 4.0
_WIDER = ((1.0, 1.0), (2.0, 4.0))
# Whether stored scores on the CPU are read through numpy (tests switch it off to run the torch path on the CPU).
NUMPY_ON_CPU = True

UNSIGNED_OF = {torch.float32: np.uint32, torch.float64: np.uint64, np.float32: np.uint32, np.float64: np.uint64}
FLOAT_OF = {np.uint32: np.float32, np.uint64: np.float64}
_SIGNED = {torch.float32: torch.int32, torch.float64: torch.int64}
EMPTY_POSITIONS = np.empty(0, dtype=np.int64)


class Bound(NamedTuple):
    """The survivors that leave no later than (``key``, ``cut``) in the removal order: a key below ``key``, or equal
    to it at a position (in the concatenation) of at least ``cut``."""

    key: int
    cut: int


def _pruned_key(unsigned: type) -> int:
    """The key of ``-0.0`` (only the sign bit set): above every survivor's key."""
    return 1 << (8 * np.dtype(unsigned).itemsize - 1)


def every_survivor(unsigned: type) -> Bound:
    return Bound(_pruned_key(unsigned) - 1, 0)



def sampling(sizes: Sequence[int]) -> tuple[int, list[int], list[int]]:
    """A sample of the concatenation of parts of ``sizes`` (one entry in ``_BRACKET_EVERY``, within
    ``_BRACKET_SAMPLE_MIN`` and ``_BRACKET_SAMPLE``), every ``stride``-th: the stride, and each part's first sampled
    position and offset in the concatenation. The stride is prime, so that it does not alias with a tensor's rows (a
    stride that is a multiple of the row length samples one column only)."""
    total = sum(sizes)
    size = min(max(total // _BRACKET_EVERY, _BRACKET_SAMPLE_MIN), _BRACKET_SAMPLE)
    stride = prime_at_least(max(total // size, 1))
    starts, offsets, offset = [], [], 0
    for n in sizes:
        starts.append((-offset) % stride)
        offsets.append(offset)
        offset += n
    return stride, starts, offsets


def sample_brackets(keys: np.ndarray, places: np.ndarray, total: int, count: int) -> list[Bound | None]:
    """Bounds likely at or after the ``count + 1``-th survivor to leave, of ``total`` entries, from a sample of them
    (unsigned ``keys``, pruned entries sorting last, at concatenation positions ``places``), tighter first; ``None``:
    every survivor (always last)."""
    s = keys.size
    if total < _BRACKET_MIN_SIZE or not s:
        return [None]
    # Pruned entries sort last in the sample as among all entries, so the rank is the same among all of them.
    position = (count + 1) / total * s
    sigma = math.sqrt(position * max(1.0 - position / s, 0.0))
    indices = sorted({math.ceil(position * scale + widen * (_BRACKET_SIGMAS * sigma + 4.0)) for scale, widen in _WIDER})
    indices = [i for i in indices if i < s]
    bounds: list[Bound | None] = []
    if indices:
        ordered = np.partition(keys, indices)
        pruned = _pruned_key(keys.dtype.type)
        for i in indices:
            key = ordered[i]
            if int(key) >= pruned:
                break
            # Within equal keys the sample leaves as the survivors do: the latest position first.
            before = int(np.count_nonzero(keys < key))
            tied = np.sort(places[keys == key])[::-1]
            bound = Bound(int(key), int(tied[i - before]))
            if bound not in bounds:
                bounds.append(bound)
    return [*bounds, None]


def lowest_flags(keys_per_part: Sequence[np.ndarray], count: int) -> list[np.ndarray] | None:
    """Of candidate keys (per part, in position order) that hold every survivor leaving no later than the
    ``count + 1``-th, which are the first ``count`` to leave: the lowest keys, ties the last in (part, position)
    order. Per part, booleans; ``None`` when that is all of them."""
    keys = np.concatenate(keys_per_part)
    if count >= keys.size:
        return None
    threshold = np.partition(keys, count)[count]  # the (count + 1)-th smallest: the lowest key that stays
    removed = keys < threshold
    ties = count - int(np.count_nonzero(removed))
    if ties:
        tied = np.flatnonzero(keys == threshold)
        removed[tied[tied.size - ties :]] = True
    return np.split(removed, np.cumsum([k.size for k in keys_per_part[:-1]]))


def split_lowest(
    found: Sequence[tuple[np.ndarray, np.ndarray]], count: int
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The positions and keys of the first ``count`` candidates to leave (see :func:`lowest_flags`)."""
    flags = lowest_flags([k for _, k in found], count)
    if flags is None:
        return [p for p, _ in found], [k for _, k in found]
    return [p[f] for (p, _), f in zip(found, flags, strict=True)], [k[f] for (_, k), f in zip(found, flags, strict=True)]


def check_count(alive: Sequence[int], count: int) -> int:
    total_alive = sum(alive)
    if not 0 <= count <= total_alive:
        raise ValueError(f"cannot remove {count} of {total_alive} survivors")
    return total_alive


def bounded_flags(bits: np.ndarray, key: np.unsignedinteger, cut: int, out: np.ndarray) -> np.ndarray:
    """``bits < key`` before position ``cut``, ``bits <= key`` from it on (numpy, into ``out``)."""
    cut = min(max(cut, 0), bits.size)
    if cut:
        np.less(bits[:cut], key, out=out[:cut])
    if cut < bits.size:
        np.less_equal(bits[cut:], key, out=out[cut : bits.size])
    return out[: bits.size]


# --------------------------------------------------------------------------------------------------------------------
# Stored scores


class _Stored:
    """The bit patterns of one tensor's stored scores: numpy unsigned on the CPU (pruned entries sort above every
    survivor), torch signed elsewhere (pruned entries are the most negative)."""

    def __init__(self, scores: torch.Tensor) -> None:
        self.size = scores.numel()
        self.unsigned = UNSIGNED_OF[scores.dtype]
        self.numpy = NUMPY_ON_CPU and scores.device.type == "cpu"
        self.bits = scores.numpy().view(self.unsigned) if self.numpy else scores.view(_SIGNED[scores.dtype])

    def sample(self, start: int, stride: int) -> np.ndarray:
        part = self.bits[start::stride]
        return part.copy() if self.numpy else part.cpu().numpy().view(self.unsigned)

    def candidates(self, key: int, cut: int, buffer: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """Flat positions (ascending) and keys of the survivors leaving no later than (``key``, local ``cut``)."""
        if self.numpy:
            out = buffer if buffer is not None and buffer.size >= self.size else np.empty(self.size, dtype=bool)
            positions = np.flatnonzero(bounded_flags(self.bits, self.unsigned(key), cut, out))
            return positions, self.bits[positions]
        cut = min(max(cut, 0), self.size)
        chosen = self.bits >= 0
        chosen[:cut] &= self.bits[:cut] < key
        chosen[cut:] &= self.bits[cut:] <= key
        positions = torch.nonzero(chosen).squeeze(1)
        return positions.cpu().numpy(), self.bits[positions].cpu().numpy().view(self.unsigned)


def lowest_alive(
    scores: Sequence[torch.Tensor], alive: Sequence[int], count: int, buffer: np.ndarray | None = None
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Flat positions of the ``count`` lowest-scoring survivors of ``scores``, per tensor, ascending, and their scores.

    Survivors hold scores ``>= +0.0``, pruned entries exactly ``-0.0`` (the sign bit marks them). Ties at the
    threshold remove the last survivors in (tensor, position) order, so what stays is what keeping
    ``sum(alive) - count`` survivors with :func:`top_count` (ties to the lowest index) on their concatenation keeps.

    Args:
        scores: 1-D tensors of one float dtype (float32 or float64) and device, finite, survivors ``>= +0.0``.
        alive: The number of survivors (entries with the sign bit clear) of each tensor.
        count: Survivors to remove, ``0 <= count <= sum(alive)``.
        buffer: Optional scratch booleans, at least as long as the longest tensor (saves an allocation per call).

    Returns:
        Per tensor, the positions (int64 numpy) and the scores there (numpy, the scores' dtype).

    Example:
        ```python
        >>> lowest_alive([torch.tensor([0.5, -0.0, 0.0, 2.0])], [3], 2)
        ([array([0, 2])], [array([0.5, 0. ], dtype=float32)])
        ```
    """
    total_alive = check_count(alive, count)
    parts = [_Stored(s) for s in scores]
    unsigned = parts[0].unsigned if parts else np.uint32
    if count == 0:
        return [EMPTY_POSITIONS for _ in scores], [np.empty(0, dtype=FLOAT_OF[unsigned]) for _ in scores]
    sizes = [p.size for p in parts]
    stride, starts, offsets = sampling(sizes)
    bounds: list[Bound | None] = [None]
    if count < total_alive:
        keys = np.concatenate([p.sample(start, stride) for p, start in zip(parts, starts, strict=True)])
        places = np.concatenate([np.arange(o + s, o + n, stride) for o, s, n in zip(offsets, starts, sizes, strict=True)])
        bounds = sample_brackets(keys, places, sum(sizes), count)
    empty = (EMPTY_POSITIONS, np.empty(0, dtype=unsigned))
    for bound in bounds:  # the first bracket that holds more than `count` survivors (the last holds them all)
        key, cut = bound if bound is not None else every_survivor(unsigned)
        found = [
            p.candidates(key, cut - o, buffer) if a else empty for p, a, o in zip(parts, alive, offsets, strict=True)
        ]
        if bound is None or sum(p.size for p, _ in found) > count:
            break
    positions, keys = split_lowest(found, count)
    return positions, [k.view(FLOAT_OF[unsigned]) for k in keys]
