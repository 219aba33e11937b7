"""Criterion ``autos`` and ``AutoSCallback``: exact pruning with a trained predictor, the same features as training."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from autos_utils import (
    FEATURE_NUM_BATCHES,
    NUM_WEIGHTS,
    small_mlp,
    synthetic_batches,
    synthetic_run,
)
from torch import nn
from transformers import Trainer, TrainingArguments

from autosparse_hf import AutoSCallback, compute_scores, get_criterion, get_prunable_parameters, prune_at_init
from autosparse_hf.predictor import AutoSConfig, AutoSModel
from autosparse_hf.predictor.data import score_table
from autosparse_hf.tasks import LeNet300100, load_task

SPARSITY = 0.9


def _predictor(feature_set: str = "default", seed: int = 0) -> AutoSModel:
    """An untrained but deterministic predictor with non-trivial standardization (enough to test the plumbing)."""
    torch.manual_seed(seed)
    model = AutoSModel(AutoSConfig(feature_set=feature_set, feature_num_batches=FEATURE_NUM_BATCHES))
    f = model.config.num_features
    model.set_feature_statistics(torch.linspace(-0.5, 0.5, f), torch.linspace(0.5, 2.0, f))
    return model


@pytest.fixture(scope="module")
def predictor_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("autos")
    _predictor().save_pretrained(folder)
    return folder


def _prunable_count(model: nn.Module) -> int:
    return sum(p.param.numel() for p in get_prunable_parameters(model).values())


@pytest.mark.parametrize("source", ["folder", "instance"])
def test_prune_at_init_keeps_exactly_k(source, predictor_folder):
    predictor = str(predictor_folder) if source == "folder" else AutoSModel.from_pretrained(predictor_folder)
    model = small_mlp(0)
    batches = synthetic_batches(0)
    scores = compute_scores(model, "autos", dataloader=batches, predictor=predictor)
    masks = prune_at_init(model, "autos", SPARSITY, batches, criterion_options={"predictor": predictor})
    n = _prunable_count(model)
    assert masks.numel == n == NUM_WEIGHTS
    assert masks.num_kept == round((1 - SPARSITY) * n)
    # The batches the predictor's features average over, not prune_at_init's num_batches (1).
    assert masks.metadata["num_batches"] == FEATURE_NUM_BATCHES != 1
    kept = torch.cat([scores[k][masks[k]] for k in masks])
    dropped = torch.cat([scores[k][~masks[k]] for k in masks])
    assert kept.min() >= dropped.max()  # the global top-k of the predicted scores
    for name, p in get_prunable_parameters(model).items():
        assert p.param[~masks[name]].eq(0).all()
        assert p.param[masks[name]].ne(0).all()


def test_prune_time_scores_equal_predictions_on_training_rows(predictor_folder):
    """AutoS at prune time scores each weight exactly as the predictor scores that weight's score-dataset row."""
    model, batches, _, dataset, _ = synthetic_run(seed=2)
    predictor = AutoSModel.from_pretrained(predictor_folder)
    # fold=False scores with predict itself: bit for bit; the default folds constant inputs into the first layer,
    # equal to float32 rounding.
    exact = compute_scores(model, "autos", dataloader=batches, predictor=predictor, fold=False)
    folded = compute_scores(model, "autos", dataloader=batches, predictor=predictor)
    table = score_table(dataset, "default")
    from_rows = predictor.predict(table.features).numpy()
    index = np.asarray(dataset["index"])
    for name, tensor in exact.items():
        rows = np.nonzero(table.param_name == name)[0]
        assert np.array_equal(tensor.reshape(-1).numpy()[index[rows]], from_rows[rows]), name
        np.testing.assert_allclose(
            folded[name].reshape(-1).numpy()[index[rows]], from_rows[rows], rtol=1e-5, atol=1e-6, err_msg=name
        )


def test_criterion_is_side_effect_free(predictor_folder):
    model = small_mlp(0)
    model.train()
    model.fc3.weight.requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    compute_scores(model, "autos", dataloader=synthetic_batches(0), predictor=str(predictor_folder))
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in model.parameters())
    assert model.training and not model.fc3.weight.requires_grad and model.fc1.weight.requires_grad
    assert torch.equal(rng, torch.get_rng_state())


def test_criterion_errors(predictor_folder):
    with pytest.raises(ValueError, match="predictor"):
        get_criterion("autos")
    with pytest.raises(ValueError, match="predictor"):
        prune_at_init(small_mlp(0), "autos", SPARSITY, synthetic_batches(0))

    class NormOnly(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.norm = nn.LayerNorm(4)

        def forward(self, pixel_values, labels=None):
            return self.norm(pixel_values)

    with pytest.raises(ValueError, match="NormOnly"):
        prune_at_init(
            NormOnly(), "autos", SPARSITY, synthetic_batches(0), criterion_options={"predictor": predictor_folder}
        )
    # A gradient-using predictor without data: a clear error, not a crash inside feature extraction.
    assert get_criterion("autos", predictor=predictor_folder).needs_data
    with pytest.raises(ValueError, match="needs data"):
        prune_at_init(small_mlp(0), "autos", SPARSITY, None, criterion_options={"predictor": predictor_folder})


def test_weight_only_predictor_needs_no_data():
    predictor = _predictor("weight")
    criterion = get_criterion("autos", predictor=predictor)
    assert criterion.needs_data is False
    model = small_mlp(0)
    scores = compute_scores(model, criterion)
    # One feature (w0), so the score of a weight is a function of its value: equal weights, equal scores.
    w = model.fc2.weight.detach().reshape(-1)
    expected = predictor.predict(w[:, None])
    torch.testing.assert_close(scores["fc2.weight"].reshape(-1), expected, rtol=1e-5, atol=1e-6)  # folded
    exact = compute_scores(model, get_criterion("autos", predictor=predictor, fold=False))
    assert torch.equal(exact["fc2.weight"].reshape(-1), expected)
    masks = prune_at_init(model, "autos", SPARSITY, None, criterion_options={"predictor": predictor})
    assert masks.num_kept == round((1 - SPARSITY) * NUM_WEIGHTS)


def test_autos_callback_in_trainer(predictor_folder, tmp_path):
    task = load_task("digits", seed=0)
    train = task["train"].select(range(128))
    torch.manual_seed(0)
    model = LeNet300100(input_shape=(1, 8, 8))
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    callback = AutoSCallback(predictor=str(predictor_folder), sparsity=SPARSITY)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)
    args = TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=6,
        per_device_train_batch_size=32,
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        logging_steps=3,
        disable_tqdm=True,
        seed=0,
    )
    trainer = Trainer(model=model, args=args, train_dataset=train, callbacks=[callback], optimizers=(optimizer, None))
    trainer.train()
    n = _prunable_count(model)
    assert n == 64 * 300 + 300 * 100 + 100 * 10
    masks = callback.masks
    assert masks is not None and masks.num_kept == round((1 - SPARSITY) * n)
    assert masks.metadata["criterion"] == "autos"
    for name, p in get_prunable_parameters(model).items():
        assert p.param[~masks[name]].eq(0).all(), name  # exactly zero after momentum and weight decay
        kept = masks[name]
        assert not torch.equal(p.param[kept], initial[name][kept]), name  # and the kept weights did train
    assert any(entry.get("sparsity") == pytest.approx(SPARSITY, abs=1e-6) for entry in trainer.state.log_history)
