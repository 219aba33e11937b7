"""The shared working buffers of FORCE / Iter SNIP (masked weights) and ProsPr (trajectory, adjoint)."""

from __future__ import annotations

import torch

from autosparse_hf.criteria.buffers import FlatLayout, flat_empty_like


def test_tensors_of_one_dtype_are_views_of_one_allocation():
    tensors = {"a": torch.zeros(3, 4), "b": torch.zeros(5), "c": torch.zeros(2, 2, 2)}
    out = flat_empty_like(tensors)
    assert {n: t.shape for n, t in out.items()} == {n: t.shape for n, t in tensors.items()}
    pointers = {t.untyped_storage().data_ptr() for t in out.values()}
    assert len(pointers) == 1
    # Consecutive, non-overlapping pieces in the order given.
    assert [t.storage_offset() for t in out.values()] == [0, 12, 17]


def test_mixed_dtypes_get_separate_tensors_of_their_own_dtype():
    tensors = {"a": torch.zeros(3, dtype=torch.float64), "b": torch.zeros(4, dtype=torch.float32)}
    out = flat_empty_like(tensors)
    assert out["a"].dtype == torch.float64 and out["b"].dtype == torch.float32
    assert out["a"].untyped_storage().data_ptr() != out["b"].untyped_storage().data_ptr()


def test_force_masked_weights_are_w0_times_mask_in_one_buffer_taking_gradients():
    g = torch.Generator().manual_seed(0)
    weights = {"w1": torch.randn(4, 3, generator=g), "w2": torch.randn(6, generator=g)}
    layout = FlatLayout(weights)
    mask = torch.rand(layout.total, generator=g) > 0.5
    masked = layout.masked(mask)
    for n, w in weights.items():
        assert masked[n].requires_grad and masked[n].is_leaf
        assert torch.equal(masked[n].detach(), w * layout.view(mask, n).view(w.shape))
    assert len({t.untyped_storage().data_ptr() for t in masked.values()}) == 1


def test_removal_records_hold_every_step_and_write_it_only_where_removed():
    from autosparse_hf.criteria.buffers import record_step, step_dtype

    assert [step_dtype(s) for s in (1, 255, 256, 2**15 - 1, 2**15)] == [
        torch.uint8, torch.uint8, torch.int16, torch.int16, torch.int32,
    ]  # fmt: skip
    for steps in (60, 300, 40_000):
        record = torch.zeros(6, dtype=step_dtype(steps))
        record_step(record, torch.tensor([True, False, False, True, False, False]), 7)
        record_step(record, torch.tensor([False, False, True, False, False, False]), steps)
        assert record.tolist() == [7, 0, steps, 7, 0, 0], steps
