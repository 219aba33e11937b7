"""Mask enforcement: the only code that writes masked weights and masks gradients.

Pruned weights must stay exactly zero through training with momentum and weight decay. Two operations do it:
mask the gradients before the optimizer step (so momentum buffers of pruned weights stay zero), and multiply the
weights by the mask after it (so weight decay and any optimizer arithmetic cannot move a pruned weight).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.distributed as dist
from torch import nn


@torch.no_grad()
def zero_pruned_weights(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> None:
    """Multiply each masked parameter of ``model`` by its mask, in place."""
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        param = params[name]
        param.mul_(mask.to(device=param.device, dtype=param.dtype))


def broadcast_masks(masks: Mapping[str, torch.Tensor], src: int = 0) -> dict[str, torch.Tensor]:
    """Make every rank hold rank ``src``'s masks (a no-op outside ``torch.distributed``).

    Data-dependent criteria see different shards on different ranks; broadcasting makes the masks identical.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return dict(masks)
    result = {}
    for name, mask in masks.items():
        # gloo cannot broadcast bool tensors; uint8 goes everywhere.
        buffer = mask.to(torch.uint8).contiguous()
        if dist.get_backend() == "nccl":
            buffer = buffer.cuda()
        dist.broadcast(buffer, src=src)
        result[name] = buffer.to(mask.device).bool()
    return result


class MaskEnforcer:
    """Keeps a model's pruned weights at zero during training.

    With ``gradient_hooks=True`` (the default) a hook on every masked parameter multiplies its gradient by the mask
    during backward, before anything reads it: gradient clipping norms, DDP's all-reduce and the optimizer all see
    only the weights that exist. :meth:`zero_weights` after each optimizer step then undoes anything the optimizer
    did to pruned weights (weight decay, stale momentum). Without hooks, call :meth:`mask_gradients` after backward
    and before ``optimizer.step()`` (``PaICallback`` and ``IRPCallback`` call both methods through the Trainer's
    ``on_pre_optimizer_step`` / ``on_optimizer_step``; with hooks, ``mask_gradients`` has nothing left to do).
    Call :meth:`remove` to take the hooks off.
    """

    def __init__(self, model: nn.Module, masks: Mapping[str, torch.Tensor], gradient_hooks: bool = True) -> None:
        params = dict(model.named_parameters())
        self.pairs: list[tuple[nn.Parameter, torch.Tensor]] = [
            (params[name], mask.to(device=params[name].device, dtype=params[name].dtype))
            for name, mask in masks.items()
        ]
        self._handles = []
        if gradient_hooks:
            for param, mask in self.pairs:
                self._handles.append(param.register_hook(lambda grad, mask=mask: grad * mask))

    @property
    def uses_hooks(self) -> bool:
        return bool(self._handles)

    @torch.no_grad()
    def mask_gradients(self) -> None:
        if self._handles:
            return  # the hooks masked every gradient during backward
        for param, mask in self.pairs:
            if param.grad is not None:
                param.grad.mul_(mask)

    @torch.no_grad()
    def zero_weights(self) -> None:
        for param, mask in self.pairs:
            param.mul_(mask)

    def remove(self) -> None:
        """Remove the gradient hooks (the model trains densely again from here on)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
