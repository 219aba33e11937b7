"""Shared helpers of the AutoS tests: a small MLP, synthetic batches and synthetic surviving-score datasets.

The synthetic IRP "runs" label every weight with a known monotone function of one feature: within each tensor,
``cycle_pruned = 1 + floor(rank(|w0|) * (E + 1))`` (capped at ``E + 1``), so a predictor that learns anything must
rank weights by their within-layer magnitude rank.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from torch import nn
from transformers.modeling_outputs import SequenceClassifierOutput

from autosparse_hf import InitialFeatures, build_score_dataset, compute_initial_features, save_score_dataset

CYCLES = 5
FEATURE_NUM_BATCHES = 2  # deliberately not the library default (4): tests that it travels with the data
IN_FEATURES = 64




class SmallMLP(nn.Module):
    """64 -> 48 -> 24 -> 10 with ReLU: 3,072 + 1,152 + 240 = 4,464 prunable weights."""

    example_input_shape = (IN_FEATURES,)

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(IN_FEATURES, 48)
        self.fc2 = nn.Linear(48, 24)
        self.fc3 = nn.Linear(24, 10)

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None) -> SequenceClassifierOutput:
        hidden = torch.relu(self.fc2(torch.relu(self.fc1(torch.flatten(pixel_values, 1)))))
        logits = self.fc3(hidden)
        loss = nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=logits)


NUM_WEIGHTS = 64 * 48 + 48 * 24 + 24 * 10


def small_mlp(seed: int) -> SmallMLP:
    torch.manual_seed(seed)
    return SmallMLP()


def synthetic_batches(seed: int, n: int = FEATURE_NUM_BATCHES, size: int = 16) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(1000 + seed)
    return [
        {
            "pixel_values": torch.randn(size, IN_FEATURES, generator=g),
            "labels": torch.randint(0, 10, (size,), generator=g),
        }
        for _ in range(n)
    ]


def rank_cycle_pruned(weights: Mapping[str, torch.Tensor], cycles: int = CYCLES) -> dict[str, torch.Tensor]:
    """``1 + floor(rank * (E + 1))`` with ``rank`` the within-tensor rank of ``|w0|`` in [0, 1)."""
    result = {}
    for name, w in weights.items():
        flat = w.reshape(-1).abs()
        rank = torch.argsort(torch.argsort(flat)).float() / flat.numel()
        pruned = (1 + torch.floor(rank * (cycles + 1))).clamp(max=cycles + 1)
        result[name] = pruned.to(torch.int16).reshape(w.shape)
    return result


def run_info(seed: int, cycles: int = CYCLES) -> dict[str, Any]:
    return {
        "config": {"cycles": cycles, "feature_num_batches": FEATURE_NUM_BATCHES},
        "identity": {"run_id": f"run-seed{seed}", "model": "SmallMLP", "task": "synthetic", "seed": seed},
        "feature_num_batches": FEATURE_NUM_BATCHES,
    }


def synthetic_run(seed: int) -> tuple[SmallMLP, list[dict[str, torch.Tensor]], InitialFeatures, Dataset, dict]:
    """A fresh SmallMLP, its feature batches, its initial features and the score dataset of a synthetic IRP run."""
    model = small_mlp(seed)
    batches = synthetic_batches(seed)
    features = compute_initial_features(model, batches, FEATURE_NUM_BATCHES)
    info = run_info(seed)
    dataset = build_score_dataset(features, rank_cycle_pruned(features.weights), info)
    return model, batches, features, dataset, info


def save_synthetic_run(folder: Path, seed: int) -> Path:
    """Write the synthetic run's score dataset like ``IRPCallback`` does (``scores/`` + ``scores.parquet``)."""
    _, _, _, dataset, info = synthetic_run(seed)
    save_score_dataset(dataset, folder, info)
    return folder
