"""The feature-column registry: built-in sets only name registered columns, a registered column reaches the rows
of a custom set, constant columns report what rows hold, and chunked rows equal whole-tensor rows bit for bit."""

from __future__ import annotations

import pytest
import torch

from autosparse_hf.features import (
    FEATURE_COLUMNS,
    FEATURE_SETS,
    LayerContext,
    LayerFeatureColumns,
    register_feature_column,
    unit_indices,
)

CUSTOM = "abs_w0_squared"


def _tensor() -> tuple[torch.Tensor, torch.Tensor, LayerContext, dict[str, torch.Tensor]]:
    """A (6, 4, 3, 3) convolution's w0, g0, context and unit columns, with tied |w0| values for the ranks."""
    generator = torch.Generator().manual_seed(0)
    w0 = torch.randn(6, 4, 3, 3, generator=generator).mul_(4).round_().div_(4)
    g0 = torch.randn(6, 4, 3, 3, generator=generator) * 1e-3
    layer = LayerContext("conv.weight", "conv", 36, 6, 1, 0.5, w0.numel(), tuple(w0.shape))
    unit_in, unit_out = unit_indices(layer)
    input_std = torch.rand(4, generator=generator)[unit_in]
    return w0, g0, layer, {"unit_in": unit_in, "unit_out": unit_out, "input_std": input_std}


@pytest.fixture
def custom_set(monkeypatch):
    """A registered ``abs_w0_squared`` column in a ``custom`` set (the default set plus it), removed afterwards."""
    register_feature_column(CUSTOM, lambda s, start, stop, out: torch.square(s.w[start:stop].abs(), out=out))
    monkeypatch.setitem(FEATURE_SETS, "custom", FEATURE_SETS["default"] + (CUSTOM,))
    yield "custom"
    FEATURE_COLUMNS.pop(CUSTOM)


def test_every_feature_set_names_registered_columns():
    for name, columns in FEATURE_SETS.items():
        assert columns, name
        assert set(columns) <= set(FEATURE_COLUMNS), f"{name}: {sorted(set(columns) - set(FEATURE_COLUMNS))}"


def test_registered_column_appears_in_rows(custom_set):
    w0, g0, layer, units = _tensor()
    columns = LayerFeatureColumns(w0, g0, layer, custom_set, units)
    rows = columns.rows(0, columns.n)
    assert rows.shape == (w0.numel(), len(FEATURE_SETS["default"]) + 1)
    assert torch.equal(rows[:, -1], w0.reshape(-1).abs() ** 2)
    default = LayerFeatureColumns(w0, g0, layer, "default", units)
    assert torch.equal(rows[:, :-1], default.rows(0, default.n))


def test_registration_rejects_duplicates_and_unknown_statistics(custom_set):
    with pytest.raises(ValueError, match="already registered"):
        register_feature_column(CUSTOM, lambda s, start, stop, out: None)
    with pytest.raises(ValueError, match="unknown tensor statistic"):
        register_feature_column("needs_nothing_known", lambda s, start, stop, out: None, statistics=("no_such",))
    assert "needs_nothing_known" not in FEATURE_COLUMNS
    # A column reading per-unit statistics needs the unit columns even if it does not say so.
    assert FEATURE_COLUMNS["in_grad_norm_rel"].needs_units


def test_constant_columns_report_row_values():
    w0, g0, layer, units = _tensor()
    columns = LayerFeatureColumns(w0, g0, layer, "default", units)
    rows = columns.rows(0, columns.n)
    constants = columns.constant_values()
    assert list(constants) == ["log_fan_in", "log_fan_out", "relative_depth", "is_conv", "log_numel"]
    for name, value in constants.items():
        column = rows[:, columns.names.index(name)]
        assert torch.equal(column, torch.full_like(column, value)), name
    variable = [n for n in columns.names if not FEATURE_COLUMNS[n].is_constant]
    assert not set(variable) & set(constants)


@pytest.mark.parametrize("chunk_size", [1, 7, 50, 10_000])
def test_chunked_rows_equal_whole_tensor_rows(custom_set, chunk_size):
    w0, g0, layer, units = _tensor()
    columns = LayerFeatureColumns(w0, g0, layer, custom_set, units)
    whole = columns.rows(0, columns.n)
    chunked = torch.cat(list(columns.chunks(chunk_size)))
    assert torch.equal(whole.view(torch.int32), chunked.view(torch.int32))
