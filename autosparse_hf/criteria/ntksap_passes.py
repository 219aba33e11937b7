"""One NTK-SAP draw's mask gradients (Wang, Li & Sun, ICLR 2023, arXiv 2304.02840), one weight set's backward pass
at a time, summed into the survivors' entries of the saliency record.

The objective of a draw is ``S = sum_x ||f(x; A) - f(x; B)||^2`` with ``A = theta * m`` (clean) and ``B = (theta +
dtheta) * m`` (perturbed), and a surviving weight's mask gradient is ``A * dS/dA + B * dS/dB``. Each half needs only
the *other* set's outputs as constants, so the two backward passes run one after the other, each with one graph:

- **one weight set** (when the draw's outputs take no more memory than a weight set, as for every image classifier):
  the clean outputs are computed without a graph and kept, the set is perturbed in place (``A`` becomes ``B``), the
  perturbed pass runs against the kept clean outputs and keeps its own outputs, the set is rebuilt as ``A`` (the
  clean weights re-drawn from the generator state they were first drawn from, or read from the model) and the clean
  pass runs against the kept perturbed outputs. Per micro-batch: three forward passes, two backward passes.
- **two weight sets** (outputs larger than a set: token models with many examples per draw): both sets are held and
  each pass recomputes the other set's outputs without a graph, micro-batch by micro-batch. Per micro-batch: four
  forward passes (the first clean one reused), two backward passes.

Against evaluating both graphs and differentiating once, this costs one (or two) more forward passes per micro-batch
and holds one graph instead of two, and in the first form one weight set instead of two. The two forms compute the
same values; the sums are taken in the same order (all perturbed passes of the draw, then all clean ones).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import nn

from ..families import PrunableParameter
from ..heap import releasing_during_backward
from .ntksap_sampling import calibrate_norm, micro_batches, random_inputs

# One weight set is held when the draw's outputs take at most this many times a weight set's bytes.
ONE_SET_OUTPUT_RATIO = 1.0

# inputs and weights to the output at those weights (the model's own weights are never written)
Call = Callable[[Any, dict[str, torch.Tensor]], torch.Tensor]


@dataclass(frozen=True)
class DrawSettings:
    """What one draw needs from the criterion's options (see :class:`autosparse_hf.criteria.ntksap.NTKSAPCriterion`),
    and the round, for error messages."""

    epsilon: float
    batch_size: int
    micro_batch_size: int
    resample_weights: bool
    round: int


def add_draw(
    call: Call,
    params: dict[str, PrunableParameter],
    survivors: dict[str, torch.Tensor],
    sigma: dict[str, float],
    template: Mapping[str, Any],
    generator: torch.Generator,
    norms: list[nn.Module],
    total: dict[str, torch.Tensor],
    settings: DrawSettings,
) -> int:
    """Draw ``X``, the weights and ``dtheta`` (in the documented order) and add this draw's mask gradients at the
    surviving weights (``survivors``: booleans shaped like each parameter) to ``total`` (shaped likewise); the other
    entries of ``total`` are left as they are. Returns how many weight sets the draw held (1 or 2)."""
    inputs = random_inputs(template, settings.batch_size, generator)
    theta_state = generator.get_state() if settings.resample_weights else None
    weights = {n: _clean(p, survivors[n], sigma.get(n), generator) for n, p in params.items()}
    if norms:
        calibrate_norm(call, norms, weights, inputs)
    chunks = micro_batches(inputs, settings.batch_size, settings.micro_batch_size)
    with torch.no_grad():
        first = call(chunks[0], weights)
    weight_bytes = sum(w.numel() * w.element_size() for w in weights.values())
    one_set = first.numel() * first.element_size() * len(chunks) <= ONE_SET_OUTPUT_RATIO * weight_bytes
    if one_set:
        with torch.no_grad():
            outputs = [first, *(call(chunk, weights) for chunk in chunks[1:])]
        _perturb(weights, survivors, params, generator, settings.epsilon, out=weights)
        _backward(call, chunks, weights, survivors, total, outputs.__getitem__, False, settings.round, keep=outputs)
        after = generator.get_state()
        if theta_state is not None:
            generator.set_state(theta_state)  # the clean weights again, drawn as they were the first time
        with torch.no_grad():
            for n, p in params.items():
                weights[n].copy_(_theta(p, sigma.get(n), generator)).mul_(survivors[n])
        generator.set_state(after)
        _backward(call, chunks, weights, survivors, total, outputs.__getitem__, True, settings.round)
        return 1
    perturbed = _perturb(weights, survivors, params, generator, settings.epsilon)
    clean_outputs = partial(_output_without_graph, call, chunks, weights, first)
    _backward(call, chunks, perturbed, survivors, total, clean_outputs, False, settings.round)
    perturbed_outputs = partial(_output_without_graph, call, chunks, perturbed, None)
    _backward(call, chunks, weights, survivors, total, perturbed_outputs, True, settings.round)
    return 2


def _theta(param: PrunableParameter, sigma: float | None, generator: torch.Generator) -> torch.Tensor:
    """The draw's weights of one tensor: ``N(0, sigma^2)`` from the generator (multi-sampling), else the model's."""
    p = param.param
    if sigma is None:
        return p.detach()
    return torch.randn(p.shape, generator=generator, device=generator.device, dtype=p.dtype).mul_(sigma).to(p.device)


def _clean(param: PrunableParameter, survivors: torch.Tensor, sigma: float | None, g: torch.Generator) -> torch.Tensor:
    """``A = theta * m`` of one tensor (a new tensor; in the draw's storage when the weights are re-drawn)."""
    theta = _theta(param, sigma, g)
    return theta.mul_(survivors) if sigma is not None else theta * survivors


@torch.no_grad()
def _perturb(
    clean: dict[str, torch.Tensor],
    survivors: dict[str, torch.Tensor],
    params: dict[str, PrunableParameter],
    generator: torch.Generator,
    epsilon: float,
    out: dict[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """``B = (theta + dtheta) * m`` from ``A = theta * m``, one ``dtheta`` per tensor in parameter order: in place in
    ``out`` (``A`` itself) or new tensors. At a survivor ``A + dtheta`` is ``theta + dtheta`` exactly."""
    result = {}
    for n, p in params.items():
        delta = (
            torch.randn(p.param.shape, generator=generator, device=generator.device, dtype=p.param.dtype)
            .mul_(epsilon)
            .to(p.param.device)
        )
        target = out[n] if out is not None else delta
        result[n] = target.add_(delta if out is not None else clean[n]).mul_(survivors[n])
    return result


def _output_without_graph(
    call: Call, chunks: list[dict[str, Any]], weights: dict[str, torch.Tensor], first: torch.Tensor | None, j: int
) -> torch.Tensor:
    """Micro-batch ``j``'s output at ``weights``, without a graph (``first``: micro-batch 0's, already computed)."""
    if j == 0 and first is not None:
        return first
    with torch.no_grad():
        return call(chunks[j], weights)


def _backward(
    call: Call,
    chunks: list[dict[str, Any]],
    weights: dict[str, torch.Tensor],
    survivors: dict[str, torch.Tensor],
    total: dict[str, torch.Tensor],
    other_output: Callable[[int], torch.Tensor],
    clean: bool,
    round_: int,
    keep: list[torch.Tensor] | None = None,
) -> None:
    """Half of the mask gradient, micro-batch by micro-batch: ``weights * dS/dweights`` with the other set's outputs
    (``other_output(j)``) held constant, added to ``total`` at the survivors as backward forms each tensor's gradient
    (no set of gradients is held). ``keep``: where to store each micro-batch's output at ``weights``."""
    for leaf in weights.values():
        leaf.requires_grad_(True)

    def fold(name: str, leaf: torch.Tensor) -> None:
        product = leaf.grad.mul_(leaf.detach())
        leaf.grad = None
        # A pruned weight's product is 0 (its weight is) unless its gradient is not finite; its recorded saliency
        # must stay what it was, so only the survivors' entries are added to.
        torch.where(survivors[name], product, product.new_zeros(()), out=product)
        total[name] += product

    leaves = list(weights.values())
    handles = [leaf.register_post_accumulate_grad_hook(partial(fold, n)) for n, leaf in weights.items()]
    try:
        for j, chunk in enumerate(chunks):
            other = other_output(j)
            output = call(chunk, weights)
            # The same difference as evaluating both sets at once: clean minus perturbed.
            difference = output - other if clean else other - output
            del other
            objective = difference.pow(2).sum()
            del difference
            if not math.isfinite(float(objective.detach())):
                raise ValueError(
                    f"ntksap: the output difference is not finite in round {round_} (the random input or weights "
                    "overflow the model); try a smaller epsilon, calibrate_norm=True or resample_weights=False"
                )
            if objective.requires_grad:
                with releasing_during_backward(objective):
                    objective.backward(inputs=leaves)
            del objective
            if keep is not None:
                keep[j] = output.detach()
            del output
    finally:
        for handle in handles:
            handle.remove()
        for leaf in leaves:
            leaf.requires_grad_(False)
