"""IRP density schedules (``kept_counts``) and ``IRPConfig`` validation."""

from __future__ import annotations

import math

import pytest

from autosparse_hf.criteria import list_criteria
from autosparse_hf.irp import SCHEDULES, IRPConfig, kept_counts

SIZES = [1, 7, 100, 50_200, 266_610, 11_173_962]


def _check_common(counts: list[int], total: int, cycles: int, final_sparsity: float) -> None:
    assert len(counts) == cycles + 1
    assert all(isinstance(c, int) for c in counts)
    assert counts[0] == total
    assert counts[-1] == max(1, round((1 - final_sparsity) * total))
    assert all(b <= a for a, b in zip(counts, counts[1:], strict=False)), counts


@pytest.mark.parametrize("total", SIZES)
@pytest.mark.parametrize("cycles,final_sparsity", [(1, 0.5), (3, 0.9), (20, 0.99), (40, 0.99), (7, 0.3)])
def test_equal_count_removes_equal_counts(total: int, cycles: int, final_sparsity: float) -> None:
    counts = kept_counts(total, cycles, final_sparsity, "equal_count")
    _check_common(counts, total, cycles, final_sparsity)
    removed = [a - b for a, b in zip(counts, counts[1:], strict=False)]
    assert max(removed) - min(removed) <= 1, removed
    # Density after cycle c is 1 - c (1 - d_final) / E, up to rounding to whole weights.
    final = counts[-1]
    for c, kept in enumerate(counts):
        assert abs(kept - (total - c * (total - final) / cycles)) <= 0.5 + 1e-9


def test_equal_count_paper_setting_exact() -> None:
    # 20 cycles to 1% of 10,000 weights: 495 weights removed every cycle.
    counts = kept_counts(10_000, 20, 0.99, "equal_count")
    assert counts == [10_000 - 495 * c for c in range(21)]
    assert counts[-1] == 100


@pytest.mark.parametrize("total", SIZES[2:])
@pytest.mark.parametrize("cycles,final_sparsity", [(1, 0.5), (3, 0.9), (20, 0.99), (40, 0.99)])
def test_geometric_keeps_a_constant_fraction(total: int, cycles: int, final_sparsity: float) -> None:
    counts = kept_counts(total, cycles, final_sparsity, "geometric")
    _check_common(counts, total, cycles, final_sparsity)
    ratio = (1 - final_sparsity) ** (1 / cycles)
    for c, kept in enumerate(counts):
        assert abs(kept - total * ratio**c) <= 0.5 + 1e-9 or c == cycles
    # Every cycle keeps the same fraction of the survivors (large enough counts make rounding negligible).
    for a, b in zip(counts, counts[1:], strict=False):
        if b >= 1000:
            assert b / a == pytest.approx(ratio, rel=2e-3)


def test_geometric_is_not_the_reference_precedence_bug() -> None:
    # The reference code computed `s ** 1/E` = (s ** 1) / E: 0.01 / 20 = 0.05% density after the first cycle.
    counts = kept_counts(1_000_000, 20, 0.99, "geometric")
    first_density = counts[1] / counts[0]
    assert first_density == pytest.approx(0.01 ** (1 / 20), abs=1e-6)  # about 79.4%
    assert first_density > 0.75
    assert not math.isclose(first_density, 0.01 / 20, rel_tol=0.5)


def test_schedules_differ_in_the_middle_and_agree_at_the_ends() -> None:
    eq = kept_counts(50_200, 3, 0.9, "equal_count")
    geo = kept_counts(50_200, 3, 0.9, "geometric")
    assert eq == [50_200, 35_140, 20_080, 5_020]
    assert geo[0] == eq[0] and geo[-1] == eq[-1]
    assert geo[1] == round(50_200 * 0.1 ** (1 / 3)) and geo[2] == round(50_200 * 0.1 ** (2 / 3))


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_final_count_never_zero(schedule: str) -> None:
    # 1% of 10 weights rounds to 0; a ticket without weights is no network, and selection cannot keep none.
    counts = kept_counts(10, 3, 0.99, schedule, [0.5, 0.1, 0.01] if schedule == "custom" else None)
    assert counts[-1] == 1
    assert all(b <= a for a, b in zip(counts, counts[1:], strict=False))


def test_kept_counts_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="total"):
        kept_counts(0, 3, 0.9, "equal_count")
    with pytest.raises(ValueError, match="unknown schedule 'linear'"):
        kept_counts(100, 3, 0.9, "linear")


def test_custom_densities_are_exact_and_checked() -> None:
    assert kept_counts(1000, 3, 0.99, "custom", [0.5, 0.1, 0.01]) == [1000, 500, 100, 10]
    with pytest.raises(ValueError, match="schedule 'custom' needs 3 densities"):
        kept_counts(1000, 3, 0.99, "custom", [0.5, 0.01])


# ------------------------------------------------------------------------------------------------ IRPConfig


def test_config_densities_set_cycles_and_final_sparsity() -> None:
    config = IRPConfig(densities=[0.5, 0.2, 0.05])
    assert (config.cycles, config.schedule) == (3, "custom")
    assert config.final_sparsity == pytest.approx(0.95)
    assert IRPConfig(**config.to_dict()) == config
    for bad in ([0.5, 0.5], [0.2, 0.5], [1.0, 0.5], [0.5, 0.0]):
        with pytest.raises(ValueError, match="densities must be strictly decreasing values in"):
            IRPConfig(densities=bad)
    with pytest.raises(ValueError, match="schedule='custom' needs the densities list"):
        IRPConfig(schedule="custom")


def test_config_defaults_are_the_paper_setting() -> None:
    config = IRPConfig()
    assert (config.cycles, config.final_sparsity, config.schedule, config.rewind_step) == (20, 0.99, "equal_count", 0)
    assert config.training_cycles == 21
    assert IRPConfig(train_final_ticket=False).training_cycles == 20
    assert IRPConfig(**config.to_dict()) == config


@pytest.mark.parametrize("cycles", [0, -1, 2.5])
def test_config_rejects_bad_cycles(cycles) -> None:  # noqa: ANN001
    with pytest.raises(ValueError, match="cycles must be an integer >= 1"):
        IRPConfig(cycles=cycles)


@pytest.mark.parametrize("final_sparsity", [0, 0.0, 1, 1.0, 1.5, -0.1])
def test_config_rejects_bad_final_sparsity(final_sparsity: float) -> None:
    with pytest.raises(ValueError, match=r"final_sparsity must be in \(0, 1\)"):
        IRPConfig(final_sparsity=final_sparsity)


def test_config_rejects_unknown_schedule() -> None:
    with pytest.raises(ValueError, match="schedule must be one of") as err:
        IRPConfig(schedule="cosine")
    for name in SCHEDULES:
        assert name in str(err.value)


def test_config_rejects_unknown_criterion_listing_known_ones() -> None:
    with pytest.raises(ValueError, match="unknown criterion 'magnitud'") as err:
        IRPConfig(criterion="magnitud")
    for name in list_criteria():
        assert name in str(err.value)
    assert "magnitude" in str(err.value) and "snip" in str(err.value)


def test_config_rejects_negative_rewind_step() -> None:
    with pytest.raises(ValueError, match="rewind_step must be >= 0"):
        IRPConfig(rewind_step=-1)


def test_config_rejects_other_bad_values() -> None:
    with pytest.raises(ValueError, match="num_batches"):
        IRPConfig(feature_num_batches=0)
    with pytest.raises(ValueError, match="num_batches"):
        IRPConfig(criterion_num_batches=0)
    with pytest.raises(ValueError, match="scope must be one of"):
        IRPConfig(scope="layerwise")


def test_config_refuses_bools_for_integers_and_a_schedule_the_densities_would_override() -> None:
    with pytest.raises(ValueError, match="cycles must be an integer >= 1, got True"):
        IRPConfig(cycles=True)
    with pytest.raises(ValueError, match="schedule='geometric' contradicts"):
        IRPConfig(densities=[0.5, 0.2], schedule="geometric")
    assert IRPConfig(densities=[0.5, 0.2]).schedule == "custom"
