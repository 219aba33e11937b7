"""Exact top-count selection in linear time: the ``c`` largest entries of a vector, ties to the lowest index.

What keeping the first ``c`` of a stable descending sort keeps, found without sorting: the ``c``-th largest value from
a k-th value search on a sampled bracket, then the position order of the ties at that value. Every selection scope
(``masks.selection``) and every SynFlow round reduce to it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

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


def masked_values(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``torch.masked_select(values, mask)`` (1-D, same shapes): on the CPU through numpy's boolean indexing, which is
    faster than ``masked_select`` single-threaded when a few per cent are selected (a band, the ties)."""
    if values.device.type == "cpu" and values.dtype in _NUMPY_DTYPES and mask.dtype == torch.bool and not values.requires_grad:
        return torch.from_numpy(values.numpy()[mask.numpy()])
    return torch.masked_select(values, mask)


_NUMPY_DTYPES = (torch.float32, torch.float64, torch.int64, torch.int32)


# A second score per entry (a tensor), or a function from positions (int64, ascending) to the second scores there.
TieBreak = torch.Tensor | Callable[[torch.Tensor], torch.Tensor]


def _second_scores(tie_break: TieBreak, positions: torch.Tensor) -> torch.Tensor:
    """The second scores at ``positions`` (read from the tensor, or asked of the function)."""
    if callable(tie_break):
        seconds = tie_break(positions).reshape(-1)
        if seconds.numel() != positions.numel():
            raise ValueError(f"tie_break gave {seconds.numel()} values for {positions.numel()} tied positions")
        return seconds
    return tie_break.reshape(-1).index_select(0, positions.to(tie_break.device))


def _tie_break_on_cpu(tie_break: TieBreak | None, device: torch.device) -> TieBreak | None:
    """``tie_break`` for a selection moved to the CPU from ``device``: a tensor copied, a function asked on its own
    device (the positions it receives go back there, its answer comes to the CPU)."""
    if tie_break is None:
        return None
    if callable(tie_break):
        return lambda positions: tie_break(positions.to(device)).cpu()
    return tie_break.cpu()


def _kth_largest_full(values: torch.Tensor, count: int) -> tuple[torch.Tensor, int, int]:
    """``(t, #values > t, #values == t)`` for ``t`` the ``count``-th largest value, from one k-th value search."""
    threshold = values.kthvalue(values.numel() - count + 1).values
    greater = int(torch.count_nonzero(values > threshold))
    equal = int(torch.count_nonzero(values == threshold))
    return threshold, greater, equal


def _kth_largest(values: torch.Tensor, count: int) -> tuple[torch.Tensor, int, int]:
    """Like :func:`_kth_largest_full`, in a few comparison passes instead of a k-th value search over everything
    (:func:`_bracketed_threshold`; the full search when the bracket misses, which costs one more pass than running
    it directly)."""
    n = values.numel()
    if n < _BRACKET_MIN_SIZE:
        return _kth_largest_full(values, count)
    found = _bracketed_threshold([values], [None], count, n)
    return found if found is not None else _kth_largest_full(values, count)


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


def top_count(values: torch.Tensor, count: int, tie_break: TieBreak | None = None) -> torch.Tensor:
    """Boolean mask of the ``count`` largest entries of the 1-D ``values``; ties go to the lowest index.

    Exactly what keeping the first ``count`` of a stable descending sort keeps, in linear time: every value above
    the ``count``-th largest, then the first of the values equal to it, in index order. ``values`` must be free of
    NaN. Iterative criteria (SynFlow) call it on the scores of the surviving weights only.

    With ``tie_break`` (a second score per entry, same shape), the values tied at the threshold are chosen by it
    (largest first, its own ties in index order) instead of by index: what a stable sort on ``(values, tie_break)``
    keeps, still without sorting. ``tie_break`` may also be a function from positions (int64, ascending) to the
    second scores there: it is called only when ties at the threshold decide what is kept, with the tied positions
    only (no second score the size of ``values`` has to exist).

    Example:
        ```python
        >>> top_count(torch.tensor([1.0, 3.0, 3.0, 2.0]), 2)
        tensor([False,  True,  True, False])
        ```
    """
    if values.device.type not in _SELECTION_DEVICE_TYPES:
        return _top_count(values.cpu(), count, _tie_break_on_cpu(tie_break, values.device)).to(values.device)
    return _top_count(values, count, tie_break)


def _top_count(values: torch.Tensor, count: int, tie_break: TieBreak | None) -> torch.Tensor:
    """:func:`top_count` on the values' own device."""
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
    if tie_break is not None:  # the tied entries (usually few) chosen by the second score, its own ties in index order
        tied = torch.nonzero(values == threshold).squeeze(1)
        seconds = _second_scores(tie_break, tied).to(values.device)
        keep = values > threshold
        keep[tied.index_select(0, torch.nonzero(top_count(seconds, needed)).squeeze(1))] = True
        return keep
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


def top_count_across(
    values: Sequence[torch.Tensor],
    candidates: Sequence[torch.Tensor | None],
    count: int,
    tie_break: Sequence[TieBreak] | None = None,
) -> list[torch.Tensor]:
    """:func:`top_count` over the concatenation of the 1-D ``values`` (one dtype and device) restricted to the
    entries where ``candidates`` is true (``None``: every entry of that tensor), as one boolean mask per tensor,
    without concatenating them.

    The same answer as ``_top_count_among(torch.cat(values), torch.cat(candidates), count, torch.cat(tie_break))``
    (ties: ``tie_break`` when given, then position in the concatenation; a tensor's tie-break may be a function of
    its tied positions, as for :func:`top_count`), found as :func:`_bracketed_threshold` finds a
    threshold: a strided sample of all tensors brackets the ``count``-th largest candidate, one pass per tensor counts
    the candidates above the bracket and gathers those inside it, and the exact threshold is searched among those.
    Transients are one tensor's booleans and the gathered band (a few per cent), not model-sized concatenations:
    what keeps global selection at an IRP cycle boundary near the size of its output masks. Small inputs and a
    bracket that misses (an adversarial order) take the concatenating path, which gives the same answer.

    Values on a device other than the CPU or CUDA (MPS, XLA: no ``kthvalue``, no float64) are selected on the CPU,
    as :func:`top_count` does, and the masks come back to their device.
    """
    device = values[0].device if values else torch.device("cpu")
    if device.type not in _SELECTION_DEVICE_TYPES:
        return _top_count_across_on_cpu(values, candidates, count, tie_break, device)
    return _top_count_across(values, candidates, count, tie_break)


def _top_count_across_on_cpu(
    values: Sequence[torch.Tensor],
    candidates: Sequence[torch.Tensor | None],
    count: int,
    tie_break: Sequence[TieBreak] | None,
    device: torch.device,
) -> list[torch.Tensor]:
    """:func:`top_count_across` of values on ``device`` computed on the CPU, the masks moved back to ``device``."""
    keeps = _top_count_across(
        [v.cpu() for v in values],
        [c.cpu() if c is not None else None for c in candidates],
        count,
        [_tie_break_on_cpu(b, device) for b in tie_break] if tie_break is not None else None,  # type: ignore[misc]
    )
    return [keep.to(device) for keep in keeps]


def _top_count_across(
    values: Sequence[torch.Tensor],
    candidates: Sequence[torch.Tensor | None],
    count: int,
    tie_break: Sequence[TieBreak] | None,
) -> list[torch.Tensor]:
    """:func:`top_count_across` on the values' own device."""
    sizes = [v.numel() for v in values]
    total = sum(sizes)
    n_candidates = sum(int(torch.count_nonzero(c)) if c is not None else n for c, n in zip(candidates, sizes, strict=True))
    device = values[0].device if values else torch.device("cpu")
    if count <= 0 or total == 0:
        return [torch.zeros(n, dtype=torch.bool, device=device) for n in sizes]
    found = None
    if total >= _BRACKET_MIN_SIZE and len(values) > 1 and values[0].is_floating_point() and count < n_candidates:
        found = _bracketed_threshold(values, candidates, count, n_candidates)
    if found is None:
        return _top_count_concatenated(values, candidates, count, tie_break)
    threshold, greater, equal = found
    needed = count - greater
    keeps = []
    remaining = needed
    tied_positions: list[torch.Tensor] = []
    for v, c in zip(values, candidates, strict=True):
        keep = v > threshold if needed < equal else v >= threshold
        if c is not None:
            keep &= c
        if needed < equal and remaining > 0:
            tied = v == threshold
            if c is not None:
                tied &= c
            if tie_break is not None:
                tied_positions.append(torch.nonzero(tied).squeeze(1))
            else:
                n_tied = int(torch.count_nonzero(tied))
                if n_tied <= remaining:
                    keep |= tied
                else:
                    cut = _position_of_nth_true(tied, remaining) + 1
                    keep[:cut] |= tied[:cut]
                remaining -= min(n_tied, remaining)
            del tied
        elif tie_break is not None:
            tied_positions.append(torch.empty(0, dtype=torch.long, device=device))
        keeps.append(keep)
    if tie_break is not None and needed < equal:
        # The tied candidates (usually few) chosen by the second score, its own ties in concatenation order.
        seconds = torch.cat([_second_scores(b, p) for b, p in zip(tie_break, tied_positions, strict=True)])
        chosen = torch.split(top_count(seconds, needed), [p.numel() for p in tied_positions])
        for keep, positions, picked in zip(keeps, tied_positions, chosen, strict=True):
            keep[torch.masked_select(positions, picked)] = True
    return keeps


def _bracketed_threshold(
    values: Sequence[torch.Tensor], candidates: Sequence[torch.Tensor | None], count: int, n_candidates: int
) -> tuple[torch.Tensor, int, int] | None:
    """``(t, #candidates > t, #candidates == t)`` for ``t`` the ``count``-th largest candidate of the concatenation
    of ``values`` (``candidates``: where each tensor's candidates are, ``None`` for all of it), without sorting or
    concatenating them; ``None`` when the sampled bracket misses (an adversarial order: the caller searches another way).

    A strided sample of the candidates (a prime stride over the concatenation: a stride that divides a row length would
    sample a few columns only, as GPT-2's 2304-wide rows did) brackets ``t`` between two sample values ``lo <= hi``;
    one pass per tensor counts the candidates above ``hi`` and gathers those in ``(lo, hi]`` (a few per cent), and the
    k-th value search runs on those only. The candidates equal to ``lo`` are counted, not gathered, and only when the
    threshold is ``lo`` itself: a bracket that ends on a value held by most entries (the ``-1`` of Iter SNIP's pruned
    weights, exact zeros, a run of ties) costs a count, not a copy of those entries.
    """
    total = sum(v.numel() for v in values)
    stride = prime_at_least(max(total // _BRACKET_SAMPLE, 1))
    samples, offset = [], 0
    for v, c in zip(values, candidates, strict=True):
        start = (-offset) % stride
        picked = v[start::stride]
        samples.append(picked[c[start::stride]] if c is not None else picked)
        offset += v.numel()
    sample = torch.sort(torch.cat(samples) if len(samples) > 1 else samples[0], descending=True).values
    s = sample.numel()
    if s == 0:
        return None
    position = count / n_candidates * s
    margin = _BRACKET_SIGMAS * math.sqrt(position * max(1.0 - position / s, 0.0)) + 4.0
    upper, lower = int(position - margin), int(math.ceil(position + margin))
    if lower >= s:  # the bracket would reach below every sampled candidate: the band would be most of them
        return None
    high = sample[upper] if upper >= 0 else None
    low = sample[lower]
    n_above = 0
    bands = []
    for v, c in zip(values, candidates, strict=True):
        above = v > high if high is not None else torch.zeros_like(v, dtype=torch.bool)
        band = v > low
        band ^= above  # above is a subset of band: what is left lies in (low, high]
        if c is not None:
            above &= c
            band &= c
        n_above += int(torch.count_nonzero(above))
        bands.append(masked_values(v, band))
        del above, band
    if n_above >= count:
        return None
    band_values = torch.cat(bands) if len(bands) > 1 else bands[0]
    n_band = band_values.numel()
    if n_above + n_band >= count:
        threshold, greater, equal = _kth_largest_full(band_values, count - n_above)
        return threshold, n_above + greater, equal
    del bands, band_values
    # The count-th largest is low itself, unless the bracket missed below it.
    n_low = 0
    for v, c in zip(values, candidates, strict=True):
        tied = v == low
        if c is not None:
            tied &= c
        n_low += int(torch.count_nonzero(tied))
        del tied
    return (low.clone(), n_above + n_band, n_low) if n_above + n_band + n_low >= count else None


def _top_count_concatenated(
    values: Sequence[torch.Tensor],
    candidates: Sequence[torch.Tensor | None],
    count: int,
    tie_break: Sequence[TieBreak] | None,
) -> list[torch.Tensor]:
    flat = torch.cat(list(values))
    breaks = None
    if tie_break is not None:  # (every second score: this path concatenates anyway)
        everywhere = [torch.arange(v.numel(), device=v.device) for v in values]
        breaks = torch.cat([_second_scores(b, p) for b, p in zip(tie_break, everywhere, strict=True)])
    if all(c is None for c in candidates):
        chosen = top_count(flat, count, breaks)
    else:
        mask = torch.cat([c if c is not None else torch.ones_like(v, dtype=torch.bool) for c, v in zip(candidates, values, strict=True)])
        chosen = _top_count_among(flat, mask, count, breaks)
    return list(torch.split(chosen, [v.numel() for v in values]))
