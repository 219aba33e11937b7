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


def average_gradients(
    model: nn.Module,
    names: Iterable[str],
    batches: list[Mapping[str, Any]],
    family: ModelFamily | None = None,
) -> dict[str, torch.Tensor]:
    """dL/dw for the named parameters, averaged over ``batches``, in eval mode (dropout off, running BN stats).

    The caller is responsible for restoring the model afterwards (see ``preserved_model_state``); the named
    parameters' ``.grad`` is left ``None`` (their gradients are the returned tensors), other parameters keep theirs.
    """
    family = family or get_family(model)
    names = list(names)
    params = dict(model.named_parameters())
    model.eval()
    for p in model.parameters():
        p.grad = None
    for name in names:
        params[name].requires_grad_(True)
    for loss in iter_losses(model, batches, family):
        (loss / len(batches)).backward()
    grads = {}
    for name in names:
        param = params[name]
        # The accumulated gradient is handed over, not copied (a copy is the largest transient for big models),
        # and ``.grad`` is cleared so that nothing else can write into it.
        grads[name] = param.grad.detach() if param.grad is not None else torch.zeros_like(param)
        param.grad = None
    return grads
