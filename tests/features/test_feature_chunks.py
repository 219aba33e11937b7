"""Chunked AutoS scoring: feature rows in chunks equal the whole-tensor matrix bit for bit, the radix-sorted ranks
equal a stable float sort, prefetching changes nothing, and the memory savings do not leak into the model."""

from __future__ import annotations

import math

import pytest
import torch
from autos_utils import FEATURE_NUM_BATCHES, small_mlp, synthetic_batches
from torch import nn

from autosparse_hf import compute_initial_features, compute_scores, get_prunable_parameters
from autosparse_hf.criteria.autos import AutoSCriterion
from autosparse_hf.features import (
    FEATURE_SETS,
    LayerFeatureColumns,
    _rank01,
    iter_feature_columns,
    iter_feature_matrices,
    layer_feature_matrix,
)
from autosparse_hf.gradients import average_gradients
from autosparse_hf.predictor import AutoSConfig, AutoSModel


class SmallConv(nn.Module):
    """A convolution (unit features over channels and kernels) and a linear layer, 3x8x8 inputs."""

    example_input_shape = (3, 8, 8)

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.fc = nn.Linear(6 * 8 * 8, 10)

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None):  # noqa: ANN201
        from transformers.modeling_outputs import SequenceClassifierOutput

        logits = self.fc(torch.relu(self.conv(pixel_values)).flatten(1))
        loss = nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=logits)


def _conv_batches(n: int = 2) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(3)
    return [{"pixel_values": torch.randn(4, 3, 8, 8, generator=g), "labels": torch.randint(0, 10, (4,), generator=g)}
            for _ in range(n)]


@pytest.fixture(scope="module")
def conv_features():
    torch.manual_seed(0)
    return compute_initial_features(SmallConv(), _conv_batches(), 2)


def _columns(features, index: int, feature_set: str = "default") -> LayerFeatureColumns:
    layer = features.layers[index]
    return LayerFeatureColumns(
        features.weights[layer.name], features.gradients[layer.name], layer, feature_set,
        features.unit_columns(layer.name),
    )


@pytest.mark.parametrize("feature_set", sorted(FEATURE_SETS))
@pytest.mark.parametrize("chunk_size", [1, 7, 100, 10**6])
def test_chunks_are_bit_identical_to_the_whole_matrix(conv_features, feature_set, chunk_size):
    for layer, columns in iter_feature_columns(conv_features, feature_set):
        whole = layer_feature_matrix(
            conv_features.weights[layer.name], conv_features.gradients[layer.name], layer, feature_set,
            conv_features.unit_columns(layer.name),
        )
        parts = list(columns.chunks(chunk_size))
        assert all(p.shape[0] <= chunk_size for p in parts)
        assert torch.equal(torch.cat(parts), whole)


def test_prefetch_yields_the_same_rows_in_the_same_order(conv_features):
    plain = [(layer.name, m) for layer, m in iter_feature_matrices(conv_features)]
    fetched = [(layer.name, torch.cat(list(c.chunks(50)))) for layer, c in iter_feature_columns(conv_features,
                                                                                                 prefetch=True)]
    assert [n for n, _ in plain] == [n for n, _ in fetched]
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(plain, fetched, strict=True))
    layers = [layer.name for layer, _ in iter_feature_columns(conv_features, prefetch=True)]
    assert layers == [layer.name for layer in conv_features.layers]


def test_rows_write_into_a_reused_buffer_and_leave_extra_columns(conv_features):
    columns = _columns(conv_features, 0)
    f = len(FEATURE_SETS["default"])
    buffer = torch.full((64, f + 1), 7.0)
    view = columns.rows(10, 30, out=buffer)
    assert torch.equal(view, columns.rows(10, 30)) and view.shape == (20, f)
    assert torch.equal(buffer[:20, :f], columns.rows(10, 30))
    assert torch.all(buffer[:, f] == 7.0) and torch.all(buffer[20:, :f] == 7.0)
    with pytest.raises(ValueError, match="out must be float32 with >= 20 rows"):
        columns.rows(0, 20, out=torch.empty(10, f))
    with pytest.raises(ValueError, match="chunk_size must be >= 1"):
        next(_columns(conv_features, 0, "paper").chunks(0))


def test_unit_features_without_unit_columns_fail_clearly(conv_features):
    layer = conv_features.layers[0]
    with pytest.raises(ValueError, match="needs the unit columns"):
        LayerFeatureColumns(conv_features.weights[layer.name], conv_features.gradients[layer.name], layer, "default",
                            None)


def test_radix_rank_equals_stable_float_sort_with_ties_and_zeros():
    values = torch.tensor([0.5, 0.0, 0.25, 0.5, 1e-30, 0.0, 3.0, 0.25, -0.0]).abs()
    expected = torch.empty(values.numel())
    expected[torch.sort(values, stable=True).indices] = torch.arange(values.numel(), dtype=torch.float32) / 8
    assert torch.equal(_rank01(values), expected)
    # Ties keep position order: the two 0.5s at positions 0 and 3 get ranks in that order.
    rank = _rank01(values)
    assert rank[0] < rank[3] and rank[1] < rank[5] < rank[8]
    big = torch.randn(100_000).abs()
    reference = torch.empty(big.numel())
    reference[torch.sort(big, stable=True).indices] = torch.arange(big.numel(), dtype=torch.float32) / (big.numel() - 1)
    assert torch.equal(_rank01(big), reference)
    signed = torch.tensor([0.3, -1.0, 0.2])  # negative values take the float path
    assert torch.equal(_rank01(signed), torch.tensor([1.0, 0.0, 0.5]))


def test_views_without_copy_and_without_second_snapshot():
    model = small_mlp(0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    features = compute_initial_features(model, synthetic_batches(0), FEATURE_NUM_BATCHES, copy_weights=False)
    params = get_prunable_parameters(model)
    for name, p in params.items():
        assert features.weights[name].data_ptr() == p.param.data_ptr()  # a view, no copy
    copied = compute_initial_features(model, synthetic_batches(0), FEATURE_NUM_BATCHES)
    for name, p in params.items():
        assert copied.weights[name].data_ptr() != p.param.data_ptr()
        assert torch.equal(copied.weights[name], features.weights[name])
        assert torch.equal(copied.gradients[name], features.gradients[name])
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())
    assert all(p.grad is None for p in model.parameters())


def test_average_gradients_hands_over_the_gradient_and_clears_grad():
    model = small_mlp(0)
    names = ["fc1.weight", "fc2.weight"]
    grads = average_gradients(model, names, synthetic_batches(0)[:1])
    params = dict(model.named_parameters())
    assert all(params[n].grad is None for n in names)
    assert params["fc3.weight"].grad is None  # not asked for: not computed (its requires_grad is off during the pass)
    assert all(torch.count_nonzero(grads[n]) > 0 for n in names)


@pytest.mark.parametrize("target", ["survival", "membership"])
def test_criterion_scores_do_not_depend_on_chunking_or_prefetch(target):
    torch.manual_seed(1)
    loss = "mse" if target == "survival" else "bce"
    predictor = AutoSModel(AutoSConfig(target=target, loss=loss, feature_num_batches=FEATURE_NUM_BATCHES))
    model = small_mlp(0)
    batches = synthetic_batches(0)
    runs = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # prefetching needs two threads (the suite runs single-threaded)
    try:
        for batch_size, prefetch in [(65536, False), (65536, True), (333, False), (333, True), (1, True)]:
            criterion = AutoSCriterion(predictor=predictor, batch_size=batch_size, prefetch=prefetch)
            runs[batch_size, prefetch] = compute_scores(model, criterion, dataloader=batches, sparsity=0.9)
            assert torch.get_num_threads() == 2  # the prediction's thread budget is given back
    finally:
        torch.set_num_threads(threads)
    reference = runs[65536, False]
    for scores in runs.values():
        # The feature rows are bit-identical (test above); chunk sizes and the prediction's thread count (one less
        # while prefetching) only change how the matrix multiplications are blocked: equal to float32 rounding.
        assert all(torch.allclose(scores[n], reference[n], atol=1e-6, rtol=1e-5) for n in reference)
    # The chunked path scores what the predictor says for the whole-tensor feature rows.
    features = compute_initial_features(model, batches, FEATURE_NUM_BATCHES)
    for layer, matrix in iter_feature_matrices(features):
        if target == "membership":
            matrix = torch.cat([matrix, torch.full((matrix.shape[0], 1), math.log(0.1))], 1)
        assert torch.allclose(reference[layer.name].reshape(-1), predictor.predict(matrix), atol=1e-6)


def test_folded_first_layer_equals_predict_for_constant_columns():
    torch.manual_seed(4)
    model = AutoSModel(AutoSConfig(target="membership", loss="bce"))
    f = model.config.num_inputs
    model.set_feature_statistics(torch.linspace(-1.0, 1.0, f), torch.linspace(0.5, 3.0, f))
    rows = torch.randn(500, f)
    constants = {3: 0.7, 7: -1.25, f - 1: math.log(0.05)}
    for j, v in constants.items():
        rows[:, j] = v
    columns, weight_t, bias = model.fold_inputs(constants)
    assert columns == [j for j in range(f) if j not in constants]
    torch.testing.assert_close(model.predict_folded(rows[:, columns], weight_t, bias), model.predict(rows),
                               rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="only the mlp architecture folds"):
        AutoSModel(AutoSConfig(architecture="paper_fc")).fold_inputs({})


def test_rows_of_a_subset_of_columns(conv_features):
    columns = _columns(conv_features, 1)
    names = list(FEATURE_SETS["default"])
    pick = ["rank_abs_w0g0", "w0_over_std", "out_grad_norm_rel"]
    whole = columns.rows(0, 50)
    assert torch.equal(columns.rows(0, 50, names=pick), whole[:, [names.index(n) for n in pick]])
    constants = columns.constant_values()
    assert set(constants) == {"log_fan_in", "log_fan_out", "relative_depth", "is_conv", "log_numel"}
    for n, v in constants.items():
        assert torch.all(whole[:, names.index(n)] == v)
    with pytest.raises(ValueError, match="not in this feature set"):
        columns.rows(0, 5, names=["pixels"])
