"""Snapshots of a model's mutable state, so that scoring code can promise to leave the model as it found it."""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn


def snapshot_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """A detached copy of every parameter and buffer (``state_dict`` entries).

    A tensor listed under several names (tied weights: GPT-2's ``lm_head.weight`` is ``transformer.wte.weight``) is
    copied once and the copy listed under each name: on GPT-2 small a second copy would be 154 MB more at every
    IRP run and every SynFlow scoring, for nothing.
    """
    copies: dict[int, torch.Tensor] = {}
    snapshot = {}
    for key, value in model.state_dict(keep_vars=True).items():
        if id(value) not in copies:
            copies[id(value)] = value.detach().clone()
        snapshot[key] = copies[id(value)]
    return snapshot


@torch.no_grad()
def restore_state(model: nn.Module, snapshot: dict[str, torch.Tensor]) -> None:
    """Copy ``snapshot`` back into the model's own tensors, in place (optimizers keep their references)."""
    current = model.state_dict(keep_vars=True)
    missing = sorted(set(current) - set(snapshot))
    if missing:
        raise ValueError(f"snapshot lacks {missing}")
    for key, value in snapshot.items():
        current[key].data.copy_(value)


@contextmanager
def preserved_model_state(model: nn.Module, weights: bool = True) -> Iterator[None]:
    """Restore weights, buffers, gradients, ``requires_grad``, train/eval modes and RNG states on exit.

    Criteria may change any of these while scoring (SynFlow replaces weights by their absolute values, SNIP calls
    backward, data loaders draw random numbers); a criterion is only a score, so none of that may leak out.
    ``weights=False`` restores everything but the parameters' values, for code that never writes them (SNIP, GraSP,
    the ``torch.func`` criteria): the model's largest copy is then not made (one model's size less at peak).
    """
    if weights:
        state = snapshot_state(model)
    else:
        parameters = {id(p) for p in model.parameters()}
        state = {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items() if id(v) not in parameters}
    grads = {n: (p.grad.detach().clone() if p.grad is not None else None) for n, p in model.named_parameters()}
    requires_grad = {n: p.requires_grad for n, p in model.named_parameters()}
    modes = {n: m.training for n, m in model.named_modules()}
    cpu_rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    py_rng = random.getstate()
    np_rng = np.random.get_state()
    try:
        yield
    finally:
        if weights:
            restore_state(model, state)
        else:
            current = model.state_dict(keep_vars=True)
            with torch.no_grad():
                for key, value in state.items():
                    current[key].data.copy_(value)
        for name, param in model.named_parameters():
            param.requires_grad_(requires_grad[name])
            saved = grads[name]
            param.grad = saved if saved is None else saved.clone()
        for name, module in model.named_modules():
            module.training = modes[name]
        torch.set_rng_state(cpu_rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)
        random.setstate(py_rng)
        np.random.set_state(np_rng)


LOW_PRECISION: tuple[torch.dtype, ...] = (torch.float16, torch.bfloat16)


@contextmanager
def float32_scoring(model: nn.Module) -> Iterator[None]:
    """Compute in float32 on a half-precision model: its fp16/bf16 parameters and buffers are upcast in place (the
    same ``Parameter`` objects, so optimizers keep their references) and cast back on exit.

    Scores of fp16/bf16 weights are then exactly the scores of their float32 copy: products through the network
    (SynFlow) do not overflow fp16's 65504, small gradients do not flush to zero, and float32 data feeds the model.
    Use it inside ``preserved_model_state``, which restores the values afterwards.
    """
    params = [(p, p.dtype) for p in model.parameters() if p.dtype in LOW_PRECISION]
    buffers = [(b, b.dtype) for b in model.buffers() if b.dtype in LOW_PRECISION]
    if not params and not buffers:
        yield
        return
    for tensor, _ in params + buffers:
        tensor.data = tensor.data.float()
    try:
        yield
    finally:
        for tensor, dtype in params + buffers:
            tensor.data = tensor.data.to(dtype)
            if isinstance(tensor, nn.Parameter) and tensor.grad is not None:
                tensor.grad = tensor.grad.to(dtype)


def zero_initialized_norm_scales(model: nn.Module) -> list[nn.Parameter]:
    """The scale (``weight``) parameters of normalization layers that are entirely zero.

    timm zero-initializes the last normalization scale of every residual block (``zero_init_last``) so that a block
    starts as the identity; transformers models do not. With such a scale every connection of the block is invisible
    to a criterion at initialization (its gradient, and SynFlow's signal, are exactly zero there).
    """
    found = []
    for module in model.modules():
        weight = getattr(module, "weight", None)
        if (
            "norm" in type(module).__name__.lower()
            and isinstance(weight, nn.Parameter)
            and weight.dim() == 1
            and weight.numel() > 0
            and not bool(weight.detach().any())
        ):
            found.append(weight)
    return found


@contextmanager
def revived_zero_norm_scales(model: nn.Module, value: float = 1.0) -> Iterator[int]:
    """Score as if zero-initialized normalization scales were ``value`` (restored on exit); yields how many.

    A zero scale is a training device (each residual block starts as the identity), not a statement that the block's
    connections do not matter; scoring with it would leave every weight of those blocks tied at zero and let the
    tie order decide which layers survive. Use inside ``preserved_model_state``.
    """
    scales = zero_initialized_norm_scales(model)
    saved = [s.detach().clone() for s in scales]
    with torch.no_grad():
        for scale in scales:
            scale.fill_(value)
    try:
        yield len(scales)
    finally:
        with torch.no_grad():
            for scale, old in zip(scales, saved, strict=True):
                scale.copy_(old)


@contextmanager
def revived_zero_weights(
    weights: dict[str, tuple[torch.Tensor, int]], pruned: dict[str, torch.Tensor] | None = None
) -> Iterator[list[str]]:
    """Score all-zero weight tensors as if they had PyTorch's default initialization (restored on exit).

    ``weights`` maps a name to ``(tensor, fan_in)``. A tensor that is entirely zero before any pruning (``pruned``:
    the masks in force, when a tensor is zero because it is pruned it stays zero) is a zero-initialized layer, e.g.
    the classifier head of timm's MLP-Mixer. With it, every gradient upstream of it is zero, so SNIP, GraSP, FORCE
    and SynFlow score the whole network 0 and the tie order picks the mask. Such a tensor is scored as if drawn from
    ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` (``nn.Linear``'s default), from a generator seeded by the tensor's name:
    deterministic, and the global RNG untouched. Yields the names revived. Use inside ``preserved_model_state``.
    """
    import zlib

    revived = []
    for name, (weight, _) in weights.items():
        if weight.numel() == 0 or bool(weight.detach().any()):
            continue
        if pruned is not None and name in pruned and not bool(pruned[name].any()):
            continue
        revived.append(name)
    saved = {name: weights[name][0].detach().clone() for name in revived}
    with torch.no_grad():
        for name in revived:
            weight, fan_in = weights[name]
            bound = 1.0 / max(fan_in, 1) ** 0.5
            generator = torch.Generator().manual_seed(zlib.crc32(name.encode()))
            values = (torch.rand(weight.shape, generator=generator, dtype=torch.float64) * 2 - 1) * bound
            mask = pruned[name].to(weight.device) if pruned is not None and name in pruned else None
            values = values.to(weight.device, weight.dtype)
            weight.copy_(values * mask if mask is not None else values)
    try:
        yield revived
    finally:
        with torch.no_grad():
            for name, old in saved.items():
                weights[name][0].copy_(old)


def batch_norm_layers(model: nn.Module) -> list[nn.Module]:
    """Batch-norm layers (any ``_BatchNorm``, timm's ``BatchNormAct2d`` included) that keep running statistics."""
    return [
        m for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats and m.running_mean is not None
    ]
