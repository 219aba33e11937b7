"""Gradients at initialization, averaged over a fixed number of batches.

One implementation serves SNIP/GraSP scoring, the initial-gradient feature of the IRP score dataset and AutoS
prune-time features. Averaging over a fixed number of batches (instead of summing over the whole training set, as
the AutoSparse reference code did) keeps the gradient's scale independent of the dataset size.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from itertools import islice
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from .families import ModelFamily, get_family


def take_batches(dataloader: Iterable[Mapping[str, Any]] | None, num_batches: int, who: str) -> list[Mapping[str, Any]]:
    """The first ``num_batches`` batches of ``dataloader``; a clear error when there is no data."""
    if dataloader is None:
        raise ValueError(f"{who} needs data: pass a dataloader (an iterable of batch dicts)")
    if num_batches < 1:
        raise ValueError(f"num_batches must be >= 1, got {num_batches}")
    if not isinstance(dataloader, Iterable):
        raise TypeError(f"{who} needs an iterable of batches as its dataloader, got {type(dataloader).__name__}")
    batches = list(islice(iter(dataloader), num_batches))
    if not batches:
        raise ValueError(f"{who} got an empty dataloader")
    return batches


def iter_losses(model: nn.Module, batches: Iterable[Mapping[str, Any]], family: ModelFamily) -> Iterator[torch.Tensor]:
    for batch in batches:
        yield family.loss(model, batch)


def require_grad_only(model: nn.Module, names: Iterable[str]) -> dict[str, nn.Parameter]:
    """Eval mode, every ``.grad`` cleared, and ``requires_grad`` on for the named parameters only; returns them.

    Backward then computes no gradient for any other parameter: for GPT-2 that skips the 38.6M-weight token
    embedding's gradient and its backward (a third of the model's size). The named gradients are unchanged by this
    (each is the same chain of products). The caller restores the model (see ``preserved_model_state``).
    """
    params = dict(model.named_parameters())
    named = {name: params[name] for name in names}
    wanted = {id(p) for p in named.values()}
    model.eval()
    for p in model.parameters():
        p.grad = None
        p.requires_grad_(id(p) in wanted)
    return named


def average_gradients(
    model: nn.Module,
    names: Iterable[str],
    batches: list[Mapping[str, Any]],
    family: ModelFamily | None = None,
) -> dict[str, torch.Tensor]:
    """dL/dw for the named parameters, averaged over ``batches``, in eval mode (dropout off, running BN stats).

    Only the named parameters require gradients during the pass (:func:`require_grad_only`), so no other gradient
    is computed; gradient hooks on the named parameters (mask enforcement) still run. The caller is responsible for
    restoring the model afterwards (see ``preserved_model_state``): every parameter's ``requires_grad`` is changed
    and every ``.grad`` is left ``None`` (the named parameters' gradients are the returned tensors).
    """
    family = family or get_family(model)
    params = require_grad_only(model, names)
    for loss in iter_losses(model, batches, family):
        if loss.requires_grad:  # else no named parameter reaches the loss: their gradients are zero
            (loss / len(batches)).backward()
    grads = {}
    for name, param in params.items():
        # The accumulated gradient is handed over, not copied (a copy is the largest transient for big models),
        # and ``.grad`` is cleared so that nothing else can write into it.
        grads[name] = param.grad.detach() if param.grad is not None else torch.zeros_like(param)
        param.grad = None
    return grads


class _FamilyMethod(nn.Module):
    """One of the family's model-level methods (``loss``, ``synflow_output``) as the ``forward`` of a module whose
    only child is the model, so that ``torch.func.functional_call`` can run it with substituted tensors
    (``"model." + name``)."""

    def __init__(self, model: nn.Module, family: ModelFamily, method: str) -> None:
        super().__init__()
        self.model = model
        self.family = family
        self.method = method

    def forward(self, inputs: Any) -> torch.Tensor:
        return getattr(self.family, self.method)(self.model, inputs)


def _call_with(
    model: nn.Module, family: ModelFamily, method: str, inputs: Any, tensors: Mapping[str, torch.Tensor]
) -> torch.Tensor:
    wrapper = _FamilyMethod(model, family, method)
    return functional_call(wrapper, {f"model.{name}": t for name, t in tensors.items()}, (inputs,))


def loss_with(
    model: nn.Module, family: ModelFamily, batch: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]
) -> torch.Tensor:
    """The family's loss on ``batch`` with the named parameters replaced by ``tensors`` (tied aliases follow).

    The model's own parameters are never written (``torch.func.functional_call`` swaps the tensors in for the call
    and back), so criteria that evaluate the model at other weights (FORCE's masked weights, ProsPr's updated ones)
    need no copy of the model to restore it from.
    """
    return _call_with(model, family, "loss", batch, tensors)


def output_with(
    model: nn.Module, family: ModelFamily, inputs: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]
) -> torch.Tensor:
    """The family's data-free output (``synflow_output``) on ``inputs`` with the named parameters replaced by
    ``tensors`` (tied aliases follow), the model's own never written: NTK-SAP's clean and perturbed passes."""
    return _call_with(model, family, "synflow_output", inputs, tensors)
