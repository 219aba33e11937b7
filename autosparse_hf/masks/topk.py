"""Exact top-count selection in linear time: the ``c`` largest entries of a vector, ties to the lowest index.

What keeping the first ``c`` of a stable descending sort keeps, found without sorting: the ``c``-th largest value from
a k-th value search on a sampled bracket, then the position order of the ties at that value. Every selection scope
(``masks.selection``) and every SynFlow round reduce to it.
"""

from __future__ import annotations

import math

import torch

# Below this many values one k-th value search over all of them is as fast as bracketing it first.
_BRACKET_MIN_SIZE = 1 << 16
# Values sampled to bracket the k-th largest; the bracket holds ~ this many standard deviations of the sample rank.
_BRACKET_SAMPLE = 1 << 14
_BRACKET_SIGMAS = 6.0
# Ties at the threshold are counted in blocks of this many entries to find where the kept ones end.
_TIE_BLOCK = 1 << 12
# Devices selection runs on; scores elsewhere (e.g. MPS, whose k-th value support varies) are selected on the CPU.
_SELECTION_DEVICE_TYPES = ("cpu", "cuda")


def prime_at_least(n: int) -> int:
    """The smallest prime ``>= n`` (1 for ``n <= 1``): a sampling stride that aliases with no row length."""
    if n <= 2:
        return max(n, 1)
    while any(n % d == 0 for d in range(2, math.isqrt(n) + 1)):
        n += 1
    return n


def _kth_largest_full(values: torch.Tensor, count: int) -> tuple[torch.Tensor, int, int]:
    """``(t, #values > t, #values == t)`` for ``t`` the ``count``-th largest value, from one k-th value search."""
    threshold = values.kthvalue(values.numel() - count + 1).values
    greater = int(torch.count_nonzero(values > threshold))
    equal = int(torch.count_nonzero(values == threshold))
    return threshold, greater, equal


def _kth_largest(values: torch.Tensor, count: int) -> tuple[torch.Tensor, int, int]:
    """Like :func:`_kth_largest_full`, in a few comparison passes instead of a k-th value search over everything.

    A strided sample brackets the ``count``-th largest value between two sample values ``lo <= hi``; one pass counts
    the values above ``hi`` and collects those inside ``[lo, hi]`` (a few per cent of them), and the k-th value
    search runs on those only. The answer is exact whatever the sample: when the bracket misses (adversarial order),
    the full search runs instead, which costs one more pass than running it directly.
    """
    n = values.numel()
    if n < _BRACKET_MIN_SIZE:
        return _kth_largest_full(values, count)
    # A prime stride: a stride that divides a row length would sample a few columns only (GPT-2's 2304-wide rows).
    sample = torch.sort(values[:: prime_at_least(max(n // _BRACKET_SAMPLE, 1))], descending=True).values
    s = sample.numel()
    position = count / n * s
    margin = _BRACKET_SIGMAS * math.sqrt(position * (1.0 - position / s)) + 4.0
    upper, lower = int(position - margin), int(math.ceil(position + margin))
    above_hi = values > sample[upper] if upper >= 0 else torch.zeros_like(values, dtype=torch.bool)
    n_above = int(torch.count_nonzero(above_hi))
    if n_above >= count:
        return _kth_largest_full(values, count)
    band_mask = values >= sample[lower] if lower < s else torch.ones_like(values, dtype=torch.bool)
    band_mask ^= above_hi  # above_hi is a subset of band_mask: what is left lies in [lo, hi]
    if lower < s and upper >= 0 and bool(sample[lower] == sample[upper]):
        # The bracket is one value (the threshold sits inside a run of ties, e.g. exact zeros): no search needed.
        n_band = int(torch.count_nonzero(band_mask))
        if n_above + n_band < count:
            return _kth_largest_full(values, count)
        return sample[upper].clone(), n_above, n_band
    band = torch.masked_select(values, band_mask)
    if n_above + band.numel() < count:
        return _kth_largest_full(values, count)
    threshold, greater, equal = _kth_largest_full(band, count - n_above)
    return threshold, n_above + greater, equal


def _position_of_nth_true(mask: torch.Tensor, nth: int) -> int:
    """Index of the ``nth`` (1-based) true entry of the 1-D ``mask``, by bisection on counts instead of a listing.

    Each step counts the true entries of one half of the remaining range (a fast reduction), so the whole search
    reads about ``len(mask)`` entries once, and lists positions only inside a final block.
    """
    low, high = 0, mask.numel()
    while high - low > _TIE_BLOCK:
        middle = (low + high) // 2
        in_lower_half = int(torch.count_nonzero(mask[low:middle]))
        if in_lower_half >= nth:
            high = middle
        else:
            nth -= in_lower_half
            low = middle
    inside = torch.nonzero(mask[low:high]).squeeze(1)
    return low + int(inside[nth - 1])


def top_count(values: torch.Tensor, count: int, tie_break: torch.Tensor | None = None) -> torch.Tensor:
    """Boolean mask of the ``count`` largest entries of the 1-D ``values``; ties go to the lowest index.

    Exactly what keeping the first ``count`` of a stable descending sort keeps, in linear time: every value above
    the ``count``-th largest, then the first of the values equal to it, in index order. ``values`` must be free of
    NaN. Iterative criteria (SynFlow) call it on the scores of the surviving weights only.

    With ``tie_break`` (a second score per entry, same shape), the values tied at the threshold are chosen by it
    (largest first, its own ties in index order) instead of by index: what a stable sort on ``(values, tie_break)``
    keeps, still without sorting.

    Example:
        ```python
        >>> top_count(torch.tensor([1.0, 3.0, 3.0, 2.0]), 2)
        tensor([False,  True,  True, False])
        ```
    """
    if values.device.type not in _SELECTION_DEVICE_TYPES:
        return top_count(values.cpu(), count).to(values.device)
    n = values.numel()
    if count <= 0:
        return torch.zeros(n, dtype=torch.bool, device=values.device)
    if count >= n:
        return torch.ones(n, dtype=torch.bool, device=values.device)
    if values.dtype not in (torch.float32, torch.float64):
        values = values.to(torch.float64)  # exact for every float and integer score type torch kthvalue lacks
    threshold, greater, equal = _kth_largest(values, count)
    needed = count - greater
    if needed == equal:
        return values >= threshold
    if tie_break is not None:
        tied = values == threshold
        return (values > threshold) | _top_count_among(tie_break.reshape(-1).to(values.device), tied, needed)
    # The first `needed` ties (in index order) end at `cut`: keep >= threshold before it, > threshold from it on.
    cut = _position_of_nth_true(values == threshold, needed) + 1
    keep = torch.empty(n, dtype=torch.bool, device=values.device)
    torch.ge(values[:cut], threshold, out=keep[:cut])
    torch.gt(values[cut:], threshold, out=keep[cut:])
    return keep


def _top_count_among(
    values: torch.Tensor, candidates: torch.Tensor | None, count: int, tie_break: torch.Tensor | None = None
) -> torch.Tensor:
    """:func:`top_count` over the entries where ``candidates`` is true (``None``: all); the others are never kept.

    The non-candidates are set to ``-inf`` in one copy of ``values`` (finite scores rank above them) rather than the
    candidates gathered: a gather lists their positions as int64 and copies their scores (and tie-breaks), about
    three times the bytes at an IRP cycle boundary, where nearly every weight is a candidate. Should a candidate
    itself score ``-inf`` and be needed, the gathered form answers instead (the same answer, by construction).
    """
    if candidates is None:
        return top_count(values, count, tie_break)
    if count <= 0:
        return torch.zeros_like(candidates)
    if values.is_floating_point():
        keep = top_count(torch.where(candidates, values, -math.inf), count, tie_break)
        if int(torch.count_nonzero(keep & candidates)) == count:
            return keep
        del keep
    index = torch.nonzero(candidates).squeeze(1)
    inner_break = tie_break.index_select(0, index) if tie_break is not None else None
    kept = torch.masked_select(index, top_count(values.index_select(0, index), count, inner_break))
    return torch.zeros_like(candidates).index_fill_(0, kept, True)
