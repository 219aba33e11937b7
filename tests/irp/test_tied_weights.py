"""Tied weights (one Parameter under two names, as GPT-2's ``lm_head`` and ``wte``): copied once, saved, resumed."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel, Trainer
from transformers.modeling_outputs import SequenceClassifierOutput

from autosparse_hf import IRPCallback, IRPConfig
from autosparse_hf.state import restore_state, snapshot_state
from tests.irp_utils import training_args


class TiedNet(nn.Module):
    """64 -> 32 -> (a) 32 -> (b, the same weight as a) 32 -> 10."""

    example_input_shape = (1, 8, 8)

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(64, 32)
        self.a = nn.Linear(32, 32)
        self.b = nn.Linear(32, 32)
        self.b.weight = self.a.weight
        self.head = nn.Linear(32, 10)

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None) -> SequenceClassifierOutput:
        h = torch.relu(self.fc1(pixel_values.flatten(1)))
        logits = self.head(torch.relu(self.b(torch.relu(self.a(h)))))
        loss = nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=logits)


def tied_net() -> TiedNet:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return TiedNet()


def test_a_snapshot_copies_a_tied_weight_once_and_restores_both_names():
    model = tied_net()
    snapshot = snapshot_state(model)
    assert snapshot["a.weight"] is snapshot["b.weight"]
    assert len({id(v) for v in snapshot.values()}) == len(snapshot) - 1
    before = model.a.weight.detach().clone()
    with torch.no_grad():
        model.a.weight.mul_(3.0)
    restore_state(model, snapshot)
    assert torch.equal(model.a.weight, before) and model.b.weight is model.a.weight


def tiny_gpt2() -> nn.Module:
    config = GPT2Config(vocab_size=64, n_positions=16, n_embd=16, n_layer=1, n_head=2)  # lm_head tied to wte
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return GPT2LMHeadModel(config)


def run_lm_irp(output_dir: Path, resume_from_checkpoint: str | None = None, **overrides: Any) -> IRPCallback:
    ids = torch.randint(0, 64, (64, 8), generator=torch.Generator().manual_seed(0)).tolist()
    data = Dataset.from_dict({"input_ids": ids, "labels": ids}).with_format("torch")
    config = IRPConfig(cycles=2, final_sparsity=0.5, evaluate_cycles=False)
    irp = IRPCallback(config, model_name="tiny-gpt2", task_name="random", run_id="fixed")
    args = training_args(output_dir, num_train_epochs=config.training_cycles, per_device_train_batch_size=8, **overrides)
    Trainer(model=tiny_gpt2(), args=args, train_dataset=data, callbacks=[irp]).train(
        resume_from_checkpoint=resume_from_checkpoint
    )
    return irp


def test_irp_on_tied_weights_checkpoints_and_resumes_to_the_uninterrupted_result(tmp_path):
    model = tiny_gpt2()
    assert model.lm_head.weight is model.transformer.wte.weight
    reference = run_lm_irp(tmp_path / "reference")
    # Every epoch (one cycle) is checkpointed: the snapshot's one copy of the tied weight, listed under both names,
    # must be written (safetensors refuses tensors that share memory) and read back.
    run_lm_irp(tmp_path / "saved", save_strategy="epoch")
    shutil.copytree(tmp_path / "saved" / "checkpoint-8", tmp_path / "resumed" / "checkpoint-8")
    resumed = run_lm_irp(tmp_path / "resumed", resume_from_checkpoint=str(tmp_path / "resumed" / "checkpoint-8"))
    assert resumed.record is not None and resumed.record.finished
    assert set(resumed.cycle_pruned) == set(reference.cycle_pruned)
    for name, pruned_at in reference.cycle_pruned.items():
        assert torch.equal(resumed.cycle_pruned[name], pruned_at), name
    # The record's w0 is the initial snapshot's own tensors (one copy of the initial weights through the run), in
    # the uninterrupted and in the resumed run alike, and it holds the initial weights.
    initial = dict(tiny_gpt2().named_parameters())
    for run in (reference, resumed):
        assert run.record is not None and run.init_snapshot is not None
        for name, w0 in run.record.features.weights.items():
            assert w0 is run.init_snapshot[name], name
            assert torch.equal(w0, initial[name].detach()), name
