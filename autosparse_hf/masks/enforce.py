"""Mask enforcement: the only code that writes masked weights and masks gradients.

Pruned weights must stay exactly zero through training with momentum and weight decay. Two operations do it:
mask the gradients before anything reads them (so clipping norms see only existing weights and momentum buffers of
pruned weights stay zero), and multiply the weights by the mask after the optimizer step (so weight decay and any
optimizer arithmetic cannot move a pruned weight). Both run in place, fused over all masked tensors, and allocate
nothing per step.

Where the gradients are masked, and why: ``transformers.Trainer`` (5.x, ``_inner_training_loop``) runs
``backward`` -> ``_clip_grad_norm`` -> ``on_pre_optimizer_step`` -> ``optimizer.step()`` -> ``on_optimizer_step``,
so gradient clipping (and the logged ``grad_norm``) reads the gradients *before* any callback event after backward.
Masking in ``on_pre_optimizer_step`` would clip with a norm that counts pruned weights. The masking therefore runs
in a post-accumulate-grad hook per parameter (``Tensor.register_post_accumulate_grad_hook``): autograd calls it once
the gradient is accumulated into ``param.grad``, and it multiplies ``param.grad`` by the mask in place.

Sharded parameters (``DTensor``: FSDP2's ``fully_shard``, tensor parallelism) get their masks laid out as they are:
each rank keeps the shard of the full mask (which every rank holds, see :func:`broadcast_masks`) that matches its
shard of the parameter, cut locally (a torch whose ``distribute_tensor`` lacks ``src_data_rank`` scatters rank 0's
copy instead: the same mask). FSDP2 runs the sharded parameters' post-accumulate-grad
hooks after its reduce-scatter, so the hook masks each rank's shard of the averaged gradient, still before clipping
and the optimizer (``tests/masks/test_enforce_fsdp.py``, two gloo processes). Scoring itself needs the full model:
prune before sharding.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from functools import partial

import torch
import torch.distributed as dist
from torch import nn

# Optimizers whose update of an element reads only that element's weight, gradient and state, and leaves it at zero
# when all three are zero (SGD with momentum, dampening, Nesterov, weight decay; Adam/AdamW with eps > 0, amsgrad,
# decoupled weight decay; for/foreach/fused kernels alike). Exact types only: a subclass may change the step.
ELEMENTWISE_OPTIMIZERS: tuple[type[torch.optim.Optimizer], ...] = (torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW)


@functools.cache
def _dtensor_api() -> tuple[type, Callable[..., torch.Tensor]] | None:
    """torch's ``DTensor`` class and ``distribute_tensor``, or ``None`` where this torch has none."""
    if not dist.is_available():
        return None
    try:
        from torch.distributed.tensor import DTensor, distribute_tensor
    except ImportError:  # torch < 2.5 keeps them private
        try:
            from torch.distributed._tensor import DTensor, distribute_tensor
        except ImportError:
            return None
    return DTensor, distribute_tensor


def is_sharded(param: torch.Tensor) -> bool:
    """Whether ``param`` is a ``DTensor`` (sharded or replicated over a device mesh: FSDP2, tensor parallelism)."""
    api = _dtensor_api()
    return api is not None and isinstance(param, api[0])


def mask_like(param: torch.Tensor, mask: torch.Tensor, name: str = "") -> torch.Tensor:
    """``mask`` as ``param`` holds values: in its dtype and on its device, and for a ``DTensor`` parameter (FSDP2,
    tensor parallelism) a ``DTensor`` on the same mesh with the same placements, each rank's shard cut from the full
    ``mask`` (every rank must hold the same full mask)."""
    if tuple(mask.shape) != tuple(param.shape):
        raise ValueError(
            f"the mask of {name or 'a parameter'} has shape {tuple(mask.shape)}, the parameter {tuple(param.shape)}"
        )
    if not is_sharded(param):
        return mask.to(device=param.device, dtype=param.dtype)
    distribute_tensor = _dtensor_api()[1]  # type: ignore[index]
    local = mask.to(device=param.to_local().device, dtype=param.dtype)
    try:  # each rank cuts its shard from its own copy, no communication
        return distribute_tensor(local, param.device_mesh, param.placements, src_data_rank=None)
    except TypeError:  # a torch without src_data_rank: rank 0's copy is scattered (the same mask)
        return distribute_tensor(local, param.device_mesh, param.placements)


def _foreach_mul_(tensors: list[torch.Tensor], factors: list[torch.Tensor]) -> None:
    """``torch._foreach_mul_(tensors, factors)``, sharded and plain tensors in separate calls (a ``DTensor`` list
    cannot take plain tensors)."""
    sharded = [is_sharded(t) for t in tensors]
    for kind in (False, True):
        pairs = [(t, f) for t, f, s in zip(tensors, factors, sharded, strict=True) if s is kind]
        if pairs:
            torch._foreach_mul_([t for t, _ in pairs], [f for _, f in pairs])


@torch.no_grad()
def zero_pruned_weights(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> None:
    """Multiply each masked parameter of ``model`` by its mask, in place (sharded parameters by their shard)."""
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        param = params[name]
        param.mul_(mask_like(param, mask, name))


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


def base_optimizer(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """The optimizer under wrappers that keep the real one in ``.optimizer`` (accelerate's ``AcceleratedOptimizer``)."""
    for _ in range(8):  # wrappers nest a few levels at most
        if type(optimizer) in ELEMENTWISE_OPTIMIZERS or not isinstance(
            getattr(optimizer, "optimizer", None), torch.optim.Optimizer
        ):
            break
        optimizer = optimizer.optimizer
    return optimizer


def keeps_pruned_entries_zero(optimizer: torch.optim.Optimizer, params: list[torch.Tensor]) -> bool:
    """Whether a step of ``optimizer`` provably leaves every element with zero weight, gradient and state at zero.

    True for the exact types in ``ELEMENTWISE_OPTIMIZERS`` that manage all of ``params`` (Adam and AdamW only with
    ``eps > 0``: with ``eps = 0`` a zero moment divides by zero). Anything else (other optimizers, subclasses, an
    optimizer mixing elements of a matrix such as Shampoo or a row-normalized update) is not assumed safe.
    """
    optimizer = base_optimizer(optimizer)
    if type(optimizer) not in ELEMENTWISE_OPTIMIZERS:
        return False
    if any(float(group.get("eps", 1.0)) <= 0.0 for group in optimizer.param_groups):
        return False
    managed = {id(p) for group in optimizer.param_groups for p in group["params"]}
    return all(id(p) in managed for p in params)


def _mask_grad_in_place(param: torch.Tensor, mask: torch.Tensor) -> None:
    # Runs inside backward, after autograd accumulated this micro-batch's gradient into param.grad. Under DDP the
    # C++ reducer reads param.grad in its own hook, which autograd calls after this one (whichever was registered
    # first), so the all-reduce already sums masked gradients (tests/masks/test_enforce_ddp.py, two gloo processes); with the Python reducer (compiled DDP) its hook was registered first and all-reduces
    # before this mask, which is just as correct: every rank holds the same mask (broadcast_masks), and the
    # all-reduced gradient of a pruned weight is masked here, before clipping and the optimizer read it.
    param.grad.mul_(mask)


class MaskEnforcer:
    """Keeps a model's pruned weights at zero during training, allocating nothing per step.

    With ``gradient_hooks=True`` (the default) a post-accumulate-grad hook on every masked parameter multiplies
    ``param.grad`` by the mask in place as soon as backward has accumulated it, before anything reads it: gradient
    clipping norms, the optimizer and (see ``_mask_grad_in_place``) DDP. :meth:`zero_weights` after each optimizer
    step then undoes anything the optimizer did to pruned weights (weight decay, stale momentum), in one fused
    multiply over all masked tensors. Without hooks, call :meth:`mask_gradients` after backward and before gradient
    clipping and ``optimizer.step()`` (``PaICallback`` and ``IRPCallback`` call both methods through the Trainer's
    ``on_pre_optimizer_step`` / ``on_optimizer_step``, which is after clipping: there the hooks are what keeps the
    clipping norm exact, and ``mask_gradients`` has nothing left to do). Call :meth:`remove` to take the hooks off.

    Masks are stored in each parameter's dtype: an in-place multiply by a same-dtype mask (``torch._foreach_mul_``)
    measured faster than a bool ``masked_fill_`` or a bool multiply (``benchmarks/results/relayout_perf_notes.md``).

    Args:
        model: The model whose parameters are masked.
        masks: Boolean keep-masks by parameter name.
        gradient_hooks: Mask gradients in backward hooks (else call :meth:`mask_gradients` yourself).

    Example:
        ```python
        >>> enforcer = MaskEnforcer(model, masks)
        >>> loss.backward(); torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        >>> optimizer.step(); enforcer.zero_weights(optimizer)
        ```
    """

    def __init__(self, model: nn.Module, masks: Mapping[str, torch.Tensor], gradient_hooks: bool = True) -> None:
        params = dict(model.named_parameters())
        self._params: list[nn.Parameter] = [params[name] for name in masks]
        self._masks: list[torch.Tensor] = [
            mask_like(param, mask, name) for param, (name, mask) in zip(self._params, masks.items(), strict=True)
        ]
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        if gradient_hooks:
            for param, mask in self.pairs:
                if param.requires_grad:  # a frozen parameter gets no gradient (and torch refuses hooks on it)
                    hook = partial(_mask_grad_in_place, mask=mask)
                    self._handles.append(param.register_post_accumulate_grad_hook(hook))
        self._hooked = gradient_hooks
        self._grads_masked = False  # mask_gradients ran since the last zero_weights (the no-hook path)
        self._settled_optimizer: torch.optim.Optimizer | None = None

    @property
    def pairs(self) -> list[tuple[nn.Parameter, torch.Tensor]]:
        """``(parameter, mask in the parameter's dtype)`` for every masked parameter."""
        return list(zip(self._params, self._masks, strict=True))

    @property
    def uses_hooks(self) -> bool:
        """Whether gradient hooks are installed (``gradient_hooks=True`` and not :meth:`remove`-d)."""
        return self._hooked

    @property
    def skips_zero_weights(self) -> bool:
        """Whether :meth:`zero_weights` skips its multiply for the optimizer it was last given (see there)."""
        return self._settled_optimizer is not None

    @torch.no_grad()
    def mask_gradients(self) -> None:
        """Multiply every existing gradient by its mask, in place (a no-op while the hooks do it in backward)."""
        self._grads_masked = True
        if self._hooked:
            return
        pairs = [(p.grad, m) for p, m in zip(self._params, self._masks, strict=True) if p.grad is not None]
        if pairs:
            _foreach_mul_([g for g, _ in pairs], [m for _, m in pairs])

    @torch.no_grad()
    def zero_weights(self, optimizer: torch.optim.Optimizer | None = None) -> None:
        """Multiply every masked weight by its mask, in place, after an optimizer step.

        Args:
            optimizer: The optimizer that just stepped, optional. When it is one of ``ELEMENTWISE_OPTIMIZERS``
                (:func:`keeps_pruned_entries_zero`), the first call also zeroes its state (momentum, Adam moments)
                at pruned positions, and later calls skip the multiply while gradients are masked (by the hooks, or
                :meth:`mask_gradients` since the last call): a pruned weight with zero weight, gradient and state is
                then provably left at zero by the step, so the multiply would change nothing.
        """
        grads_masked = self._grads_masked or self.uses_hooks
        self._grads_masked = False
        if optimizer is not None and optimizer is self._settled_optimizer and grads_masked:
            return
        _foreach_mul_(self._params, self._masks)
        if optimizer is None or not keeps_pruned_entries_zero(optimizer, self._params):
            self._settled_optimizer = None
            return
        self._zero_optimizer_state(base_optimizer(optimizer))
        self._settled_optimizer = optimizer if grads_masked else None

    @torch.no_grad()
    def _zero_optimizer_state(self, optimizer: torch.optim.Optimizer) -> None:
        """Zero the per-element state (tensors shaped like the parameter) of ``optimizer`` at pruned positions."""
        for param, mask in self.pairs:
            for value in optimizer.state.get(param, {}).values():
                if isinstance(value, torch.Tensor) and value.shape == param.shape:
                    value.mul_(mask.to(device=value.device, dtype=value.dtype))

    def remove(self) -> None:
        """Remove the gradient hooks (the model trains densely again from here on)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._hooked = False
        self._settled_optimizer = None
