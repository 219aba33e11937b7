"""Long scoring shows a progress bar (SynFlow's rounds, AutoS's tensors) and logs its wall time; ``progress`` and
transformers' progress-bar switch silence it."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
import torch
from torch import nn
from transformers.utils import logging as hf_logging

import autosparse_hf as A
from autosparse_hf.criteria import progress
from autosparse_hf.criteria.autos import AutoSCriterion
from autosparse_hf.criteria.synflow import SynFlowCriterion
from autosparse_hf.predictor import AutoSConfig, AutoSModel


def mlp() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    model.example_input_shape = (8,)
    return model


def batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(torch.randn(4, 8), torch.randint(0, 4, (4,)))]


@pytest.fixture
def bars_enabled() -> Iterator[None]:
    """transformers' progress bars on for the test, whatever the environment says; restored afterwards."""
    was = hf_logging.is_progress_bar_enabled()
    hf_logging.enable_progress_bar()
    yield
    if not was:
        hf_logging.disable_progress_bar()


def synflow_stderr(capsys: pytest.CaptureFixture[str], progress: bool | None) -> str:
    capsys.readouterr()
    A.compute_scores(mlp(), SynFlowCriterion(rounds=3, progress=progress), sparsity=0.5)
    return capsys.readouterr().err


def autos_stderr(capsys: pytest.CaptureFixture[str], progress: bool | None) -> str:
    criterion = AutoSCriterion(predictor=AutoSModel(AutoSConfig()), progress=progress)
    capsys.readouterr()
    A.compute_scores(mlp(), criterion, dataloader=batches(), sparsity=0.5)
    return capsys.readouterr().err


@pytest.mark.usefixtures("bars_enabled")
def test_progress_true_shows_the_bar_and_false_hides_it(capsys):
    assert "SynFlow rounds" in synflow_stderr(capsys, True)
    assert "SynFlow rounds" not in synflow_stderr(capsys, False)
    assert "autos tensors" in autos_stderr(capsys, True)
    assert "autos tensors" not in autos_stderr(capsys, False)


@pytest.mark.usefixtures("bars_enabled")
def test_by_default_a_bar_shows_only_for_scoring_longer_than_the_delay(capsys, monkeypatch):
    assert progress.PROGRESS_DELAY_S >= 1.0
    assert "SynFlow rounds" not in synflow_stderr(capsys, None)  # milliseconds: no bar
    monkeypatch.setattr(progress, "PROGRESS_DELAY_S", 0.0)  # as if scoring took longer than the delay
    assert "SynFlow rounds" in synflow_stderr(capsys, None)
    assert "autos tensors" in autos_stderr(capsys, None)


def test_by_default_transformers_progress_switch_silences_the_bar(capsys, monkeypatch):
    monkeypatch.setattr(progress, "PROGRESS_DELAY_S", 0.0)
    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        assert "SynFlow rounds" not in synflow_stderr(capsys, None)
        assert "autos tensors" not in autos_stderr(capsys, None)
        assert "SynFlow rounds" in synflow_stderr(capsys, True)  # an explicit True still shows it
    finally:
        if was:
            hf_logging.enable_progress_bar()


@pytest.mark.usefixtures("bars_enabled")
def test_prune_at_init_passes_the_option_through(capsys):
    capsys.readouterr()
    A.prune_at_init(mlp(), "synflow", 0.5, criterion_options={"rounds": 3, "progress": True})
    assert "SynFlow rounds" in capsys.readouterr().err
    A.prune_at_init(mlp(), "synflow", 0.5, criterion_options={"rounds": 3, "progress": False})
    assert "SynFlow rounds" not in capsys.readouterr().err


def test_wall_time_is_logged(caplog):
    with caplog.at_level(logging.INFO, logger="autosparse_hf.criteria"):
        A.compute_scores(mlp(), SynFlowCriterion(rounds=3, progress=False), sparsity=0.5)
        A.compute_scores(mlp(), AutoSCriterion(predictor=AutoSModel(AutoSConfig()), progress=False),
                         dataloader=batches(), sparsity=0.5)
    assert "synflow: 3 rounds over 192 weights in " in caplog.text and " s (in float32)" in caplog.text
    assert "autos: 2 tensors, 192 weights scored in " in caplog.text
