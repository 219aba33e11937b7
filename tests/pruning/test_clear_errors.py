"""Bad input to the public API gets an error that names the parameter and the value, never a raw TypeError from
deep inside torch or Python (issue: nothing silently wrong, item 11)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import autosparse_hf as A


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, pixel_values, labels=None):
        out = self.fc(pixel_values)
        loss = nn.functional.cross_entropy(out, labels) if labels is not None else None
        return {"loss": loss, "logits": out}


BATCHES = [{"pixel_values": torch.randn(4, 4), "labels": torch.tensor([0, 1, 2, 0])}]

CASES = {
    "include is not patterns": (lambda: A.prune_at_init(Tiny(), "snip", 0.5, BATCHES, include=5), ValueError, "include"),
    "exclude is not patterns": (lambda: A.prune_at_init(Tiny(), "snip", 0.5, BATCHES, exclude=[1]), ValueError, "exclude"),
    "get_prunable_parameters include": (lambda: A.get_prunable_parameters(Tiny(), include=3.0), ValueError, "include"),
    "dataloader is not iterable": (lambda: A.prune_at_init(Tiny(), "snip", 0.5, 5), TypeError, "dataloader"),
    "synflow rounds as a string": (
        lambda: A.prune_at_init(Tiny(), "synflow", 0.5, BATCHES, criterion_options={"rounds": "10"}), ValueError, "rounds"),
    "scores that are not tensors": (lambda: A.select_masks({"a": "x"}, 0.5), TypeError, "'a'"),
    "recipe epochs as a word": (lambda: A.TrainRecipe(epochs="ten"), ValueError, "epochs"),
    "recipe batch size as a float": (lambda: A.TrainRecipe(batch_size=6.5), ValueError, "batch_size"),
    "recipe negative learning rate": (lambda: A.TrainRecipe(learning_rate=-1.0), ValueError, "learning_rate"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_names_the_parameter(case):
    call, error, name = CASES[case]
    with pytest.raises(error, match=name):
        call()


def test_good_recipes_and_patterns_still_pass():
    assert A.TrainRecipe(epochs=3, learning_rate=0.1).epochs == 3
    params = A.get_prunable_parameters(Tiny(), exclude="fc.weight", include=["fc.bias"])
    assert list(params) == ["fc.bias"]
