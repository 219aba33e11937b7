"""The zero invariant under real optimizers, through ``transformers.Trainer`` with ``PaICallback``.

After every optimizer step, every pruned weight is exactly 0 and so is every per-element optimizer state entry at a
pruned position (SGD momentum, Adam/AdamW moments), for SGD with momentum and weight decay, Adam (amsgrad), AdamW and
an optimizer that mixes the elements of a row (state-free: only the weights are checked). Gradient clipping is on, so
the gradients must already be masked when the Trainer clips (before ``on_pre_optimizer_step``). The same runs go
through the callback as it is wired (weights re-zeroed after every step) and with the optimizer passed to
``MaskEnforcer.zero_weights``, which skips the re-zeroing for the elementwise optimizers once their state is zeroed
(the checks then see what the optimizer step alone left).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from datasets import Dataset
from torch import nn
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.modeling_outputs import SequenceClassifierOutput

from autosparse_hf import MaskEnforcer, MaskSet, PaICallback
from autosparse_hf.masks.enforce import keeps_pruned_entries_zero

STEPS = 5


class RowMixingSGD(torch.optim.Optimizer):
    """``p -= lr * (mean of the row's gradient + gradient)``: every element's update depends on its whole row."""

    def __init__(self, params, lr: float = 0.1) -> None:  # noqa: ANN001
        super().__init__(params, {"lr": lr})

    @torch.no_grad()
    def step(self, closure=None):  # noqa: ANN001, ANN201
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                mixed = p.grad.mean(dim=1, keepdim=True) if p.grad.dim() == 2 else 0.0
                p.sub_(group["lr"] * (mixed + p.grad))


OPTIMIZERS = {
    "sgd_momentum_wd": lambda params: torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=0.05),
    "adam_amsgrad": lambda params: torch.optim.Adam(params, lr=0.01, weight_decay=0.01, amsgrad=True),
    "adamw": lambda params: torch.optim.AdamW(params, lr=0.01, weight_decay=0.1),
    "row_mixing": lambda params: RowMixingSGD(params, lr=0.1),
}
ELEMENTWISE = {"sgd_momentum_wd", "adam_amsgrad", "adamw"}


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc1 = nn.Linear(12, 24)
        self.fc2 = nn.Linear(24, 16)
        self.fc3 = nn.Linear(16, 3)

    def forward(self, pixel_values, labels=None):  # noqa: ANN001, ANN201
        hidden = torch.relu(self.fc2(torch.relu(self.fc1(pixel_values))))
        logits = self.fc3(hidden)
        loss = nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=logits)


def dataset() -> Dataset:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((80, 12)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 0.5).astype(np.int64)
    return Dataset.from_dict({"pixel_values": x, "labels": y}).with_format("torch")


def pruned_entries(
    optimizer: torch.optim.Optimizer, param: torch.Tensor, mask: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Every per-element state tensor of ``param`` at its pruned positions (the optimizer may be wrapped)."""
    while not isinstance(optimizer, torch.optim.Optimizer) or hasattr(optimizer, "optimizer"):
        optimizer = optimizer.optimizer
    state = optimizer.state.get(param, {})
    return {k: v[~mask] for k, v in state.items() if isinstance(v, torch.Tensor) and v.shape == param.shape}


class ZeroInvariantChecker(TrainerCallback):
    """Asserts the invariant at every step; runs before ``PaICallback`` (callbacks run in the order given)."""

    def __init__(self, pai: PaICallback, expect_state: bool) -> None:
        self.pai = pai
        self.expect_state = expect_state
        self.checked_steps = 0
        self.moved_by_step = 0
        self.skipped_steps = 0

    def _named(self, model: nn.Module) -> dict[str, torch.Tensor]:
        params = dict(model.named_parameters())
        return {name: params[name] for name in self.pai.masks}

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):  # noqa: ANN001, ANN201
        # After backward and after the Trainer's gradient clipping: the clipping already saw masked gradients.
        for name, param in self._named(model).items():
            assert param.grad is not None
            assert not param.grad[~self.pai.masks[name]].any(), name

    def on_optimizer_step(self, args, state, control, model=None, **kwargs):  # noqa: ANN001, ANN201
        # Before PaICallback re-zeroes (it comes after this callback): what the step itself did to pruned weights.
        self.skipped_steps += self.pai.enforcer.skips_zero_weights
        self.moved_by_step += sum(int(p[~self.pai.masks[n]].ne(0).sum()) for n, p in self._named(model).items())

    def on_step_end(self, args, state, control, model=None, optimizer=None, **kwargs):  # noqa: ANN001, ANN201
        for name, param in self._named(model).items():
            mask = self.pai.masks[name]
            assert torch.equal(param[~mask], torch.zeros_like(param[~mask])), (name, state.global_step)
            entries = pruned_entries(optimizer, param, mask)
            if self.expect_state:
                assert entries, name  # the optimizer keeps per-element state, and it is checked
            for key, values in entries.items():
                assert torch.equal(values, torch.zeros_like(values)), (name, key, state.global_step)
            assert bool(param[mask].ne(0).any()), name  # kept weights are alive
        self.checked_steps += 1


class OptimizerAwarePaI(PaICallback):
    """``PaICallback`` handing the optimizer to ``MaskEnforcer.zero_weights`` (which may then skip the multiply)."""

    def on_optimizer_step(self, args, state, control, optimizer=None, **kwargs):  # noqa: ANN001, ANN201
        if self.enforcer is not None:
            self.enforcer.zero_weights(optimizer)


def train(optimizer_name: str, pai: PaICallback, tmp_path, accumulation: int = 1) -> ZeroInvariantChecker:  # noqa: ANN001
    model = MLP()
    optimizer = OPTIMIZERS[optimizer_name](model.parameters())
    checker = ZeroInvariantChecker(pai, expect_state=optimizer_name in ELEMENTWISE)
    args = TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=STEPS,
        per_device_train_batch_size=8,
        gradient_accumulation_steps=accumulation,
        max_grad_norm=0.05,  # clipping active at every step
        logging_strategy="no",
        save_strategy="no",
        use_cpu=True,
        report_to=[],
        disable_tqdm=True,
        seed=0,
    )
    trainer = Trainer(
        model=model, args=args, train_dataset=dataset(), callbacks=[checker, pai], optimizers=(optimizer, None)
    )
    trainer.train()
    assert checker.checked_steps == STEPS
    return checker


@pytest.mark.parametrize("optimizer_name", list(OPTIMIZERS))
def test_pruned_weights_and_state_stay_zero_through_the_trainer(optimizer_name, tmp_path):
    pai = PaICallback(criterion="magnitude", sparsity=0.75)
    checker = train(optimizer_name, pai, tmp_path)
    assert pai.masks.sparsity == pytest.approx(0.75, abs=0.01)
    # The callback passes the optimizer: elementwise optimizers skip the multiply after the first step (provably
    # nothing to undo), the row-mixing one gets it every step.
    assert checker.skipped_steps == (STEPS - 1 if optimizer_name in ELEMENTWISE else 0)
    assert (checker.moved_by_step > 0) == (optimizer_name not in ELEMENTWISE)


@pytest.mark.parametrize("optimizer_name", list(OPTIMIZERS))
def test_skipping_the_weight_multiply_is_exact_for_elementwise_optimizers(optimizer_name, tmp_path):
    pai = OptimizerAwarePaI(criterion="magnitude", sparsity=0.75)
    checker = train(optimizer_name, pai, tmp_path)
    if optimizer_name in ELEMENTWISE:
        assert checker.skipped_steps == STEPS - 1  # every step after the first skips the multiply ...
        assert checker.moved_by_step == 0  # ... and the step alone leaves pruned weights at exactly 0
    else:
        assert checker.skipped_steps == 0
        assert checker.moved_by_step > 0  # the row-mixing step moves them: the multiply is what restores them


def test_gradient_accumulation_masks_every_micro_batch(tmp_path):
    train("sgd_momentum_wd", PaICallback(criterion="magnitude", sparsity=0.75), tmp_path, accumulation=3)


def test_stale_state_is_zeroed_once_then_the_multiply_is_skipped():
    """Masks put in force on an optimizer that already has momentum (IRP's later cycles)."""
    model = MLP()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=0.05)
    x, y = torch.randn(16, 12), torch.randint(0, 3, (16,))
    for _ in range(2):  # dense steps: momentum everywhere
        optimizer.zero_grad()
        model(x, y).loss.backward()
        optimizer.step()
    g = torch.Generator().manual_seed(0)
    masks = MaskSet(
        {n: torch.rand(p.shape, generator=g) < 0.3 for n, p in model.named_parameters() if n.endswith("weight")}
    )
    masks.apply(model)
    for gradient_hooks in (True, False):
        enforcer = MaskEnforcer(model, masks, gradient_hooks=gradient_hooks)
        params = dict(model.named_parameters())
        for step in range(4):
            optimizer.zero_grad()
            model(x, y).loss.backward()
            enforcer.mask_gradients()
            optimizer.step()
            moved = sum(int(params[n][~m].ne(0).sum()) for n, m in masks.items())
            if step == 0 and gradient_hooks:
                assert moved > 0  # stale momentum moved pruned weights in the first step
            if step >= 1:
                assert moved == 0  # state zeroed by the first zero_weights(optimizer): nothing moves any more
            enforcer.zero_weights(optimizer)
            for name, mask in masks.items():
                assert not params[name][~mask].any()
                assert not optimizer.state[params[name]]["momentum_buffer"][~mask].any()
        enforcer.remove()


def test_which_optimizers_are_trusted_to_keep_zeros():
    model = MLP()
    params = [p for n, p in model.named_parameters() if n.endswith("weight")]
    assert keeps_pruned_entries_zero(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), params)
    assert keeps_pruned_entries_zero(torch.optim.AdamW(model.parameters()), params)
    assert not keeps_pruned_entries_zero(torch.optim.Adam(model.parameters(), eps=0.0), params)  # 0/0 at a zero
    assert not keeps_pruned_entries_zero(RowMixingSGD(model.parameters()), params)
    assert not keeps_pruned_entries_zero(torch.optim.SGD(params[:1], lr=0.1), params)  # does not manage them all

    class TweakedSGD(torch.optim.SGD):
        pass

    assert not keeps_pruned_entries_zero(TweakedSGD(model.parameters(), lr=0.1), params)


def test_no_tensor_is_allocated_per_step_by_the_hooks():
    """The gradient hook works in place: ``param.grad`` keeps its storage through masking."""
    model = MLP()
    masks = MaskSet({n: torch.rand(p.shape) < 0.5 for n, p in model.named_parameters() if n.endswith("weight")})
    enforcer = MaskEnforcer(model, masks)
    x, y = torch.randn(4, 12), torch.randint(0, 3, (4,))
    model(x, y).loss.backward()
    pointers = {n: p.grad.data_ptr() for n, p in model.named_parameters()}
    model(x, y).loss.backward()  # accumulates into the same storage, then masks it there
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        assert params[name].grad.data_ptr() == pointers[name]
        assert not params[name].grad[~mask].any()
    enforcer.remove()
