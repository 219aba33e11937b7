"""What NTK-SAP draws and runs (Wang, Li & Sun, ICLR 2023, arXiv 2304.02840): standard normal inputs shaped like
an example, weights re-drawn at each tensor's own scale, micro-batches, and the batch-norm statistics of each draw's
random batch (the forward passes substitute weights with :func:`autosparse_hf.gradients.output_with`)."""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from ..families import PrunableParameter


def is_integer(value: Any) -> bool:
    """An integer (numpy's included), not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def resample_stds(params: dict[str, PrunableParameter], alive: dict[str, torch.Tensor]) -> dict[str, float]:
    """Per tensor, the root mean square of the weights ``alive`` keeps; ``1 / sqrt(fan_in)`` where that is 0."""
    stds = {}
    for n, p in params.items():
        kept = p.param.detach().reshape(-1)[alive[n]].double()  # ``alive``: one boolean per weight, flat
        rms = float(kept.pow(2).mean().sqrt()) if kept.numel() else 0.0
        stds[n] = rms if rms > 0.0 and math.isfinite(rms) else 1.0 / math.sqrt(max(p.fan_in, 1))
    return stds


def random_inputs(template: Mapping[str, Any], batch_size: int, generator: torch.Generator) -> dict[str, Any]:
    """Standard normal inputs shaped like ``template``'s first example, ``batch_size`` of them."""
    inputs: dict[str, Any] = {}
    for key, value in template.items():
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            shape = (batch_size, *value.shape[1:])
            inputs[key] = torch.randn(shape, generator=generator, device=generator.device, dtype=value.dtype).to(
                value.device
            )
        elif isinstance(value, torch.Tensor) and value.dim() > 0:
            inputs[key] = value[:1].expand(batch_size, *value.shape[1:])
        else:
            inputs[key] = value
    return inputs


def micro_batches(inputs: dict[str, Any], batch_size: int, size: int) -> list[dict[str, Any]]:
    """``inputs`` split along the batch dimension into pieces of at most ``size`` examples (one piece if it fits)."""
    return (
        [
            {
                k: v[start : start + size] if isinstance(v, torch.Tensor) and v.dim() > 0 else v
                for k, v in inputs.items()
            }
            for start in range(0, batch_size, size)
        ]
        if size < batch_size
        else [inputs]
    )


def calibrate_norm(
    call: Callable[[Any, dict[str, torch.Tensor]], torch.Tensor],
    norms: list[nn.Module],
    weights: dict[str, torch.Tensor],
    inputs: dict[str, Any],
) -> None:
    """Set the batch-norm running statistics to those of ``inputs`` through the network at ``weights`` (``call``:
    inputs and weights to the output; the layers' momentum is 1 while NTK-SAP scores)."""
    for m in norms:
        m.train()
    try:
        with torch.no_grad():
            call(inputs, weights)
    except ValueError as error:
        raise ValueError(
            f"ntksap: calibrating batch norm on the random batch failed ({error}); use a larger batch_size or "
            "calibrate_norm=False"
        ) from error
    finally:
        for m in norms:
            m.eval()
