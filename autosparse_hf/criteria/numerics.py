"""Numerics of a signal pushed through a whole network (SynFlow's all-ones input through ``|w|``).

Products of ``|w|`` along a deep network's paths outgrow float32, and saturating activations turn an overflow into
NaN. :class:`SignalNumerics` computes a pass in the model's own dtype while it is finite, then in float64, then in
float64 with module outputs rescaled by powers of two; :func:`nonfinite_error` names the module where a value still
fails. Used by ``criteria/synflow.py``.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import torch
from torch import nn

from .base import ScoringContext

logger = logging.getLogger(__name__)

# In the last tier, a module output whose largest magnitude exceeds this is scaled down by a power of two.
RESCALE_ABOVE = 2.0**64


class SignalNumerics:
    """The numeric tier a signal pass computes in: the model's own dtype (0), float64 (1), float64 with every
    module's output kept under ``RESCALE_ABOVE`` by powers of two (2). A tier, once reached, holds until
    :meth:`close`.

    Example:
        ```python
        >>> numerics = SignalNumerics(model)
        >>> while not finite(one_pass()):
        ...     if not numerics.escalate(k):
        ...         raise nonfinite_error(...)
        >>> numerics.close()  # the model's dtypes and forward hooks as they were
        ```
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.level = 0
        self.steps = [(dtype_name(float_dtype(model)), 1)]  # (what the rounds are computed in, from which round)
        self._stack = ExitStack()

    @property
    def description(self) -> str:
        """For the log: ``"float32"``, ``"float32, float64 from round 2"``, ..."""
        return self.steps[0][0] + "".join(f", {tier} from round {k}" for tier, k in self.steps[1:])

    def escalate(self, k: int) -> bool:
        """Move to the next tier (``False`` when there is none); ``k`` is the round, for the log."""
        if self.level == 0 and self.steps[0][0] != "float64":
            logger.info("synflow: the signal overflowed %s in round %d; computing in float64 from there on",
                        self.steps[0][0], k)
            self._stack.enter_context(_as_float64(self.model))
            self.level, tier = 1, "float64"
        elif self.level < 2:
            logger.warning(
                "synflow: the signal overflowed float64 in round %d; module outputs above 2**64 are scaled down from "
                "there on, so the scores approximate SynFlow's (exactly only in bias-free ReLU chains)", k,
            )
            self._stack.enter_context(_rescaled_outputs(self.model))
            self.level, tier = 2, "float64 rescaled per module"
        else:
            return False
        self.steps.append((tier, k))
        return True

    def close(self) -> None:
        self._stack.close()


def dtype_name(dtype: torch.dtype) -> str:
    """``"float32"`` for ``torch.float32`` (for the log)."""
    return str(dtype).removeprefix("torch.")


def float_dtype(model: nn.Module) -> torch.dtype:
    """The model's floating dtype for SynFlow's tiers: float64 only when every floating parameter is."""
    narrower = sorted({p.dtype for p in model.parameters() if p.is_floating_point()} - {torch.float64}, key=str)
    return narrower[0] if narrower else torch.float64


def like_model(inputs: dict[str, Any], model: nn.Module) -> dict[str, Any]:
    """Floating inputs in the dtype of the model's first floating parameter (float64 after an escalation)."""
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), None)
    return {k: v.to(dtype) if dtype is not None and isinstance(v, torch.Tensor) and v.is_floating_point() else v
            for k, v in inputs.items()}


@contextmanager
def _as_float64(model: nn.Module) -> Iterator[None]:
    """The model's floating parameters and buffers in float64 (the same ``Parameter`` objects), cast back on exit.

    float32 to float64 is exact, so the weights SynFlow has pruned so far carry over unchanged; on exit the values
    go back to their dtype (``compute_scores`` restores the originals anyway) and gradients are cleared.
    """
    tensors = [t for t in itertools.chain(model.parameters(), model.buffers())
               if t.is_floating_point() and t.dtype != torch.float64]
    dtypes = [t.dtype for t in tensors]
    for tensor in tensors:
        if isinstance(tensor, nn.Parameter):
            tensor.grad = None
        tensor.data = tensor.data.to(torch.float64)
    try:
        yield
    finally:
        for tensor, dtype in zip(tensors, dtypes, strict=True):
            if isinstance(tensor, nn.Parameter):
                tensor.grad = None
            tensor.data = tensor.data.to(dtype)


def _rescale_output(module: nn.Module, args: Any, output: Any) -> Any:  # noqa: ARG001  (forward-hook signature)
    """Forward hook: ``output`` scaled by a power of two into [0.5, 1) when its peak exceeds ``RESCALE_ABOVE``.

    A power of two changes no mantissa, so a positively homogeneous chain (linear, convolution, ReLU, pooling) keeps
    its scores' ranking exactly; the factor is a constant of the pass, not differentiated.
    """
    if not isinstance(output, torch.Tensor) or not output.is_floating_point() or output.numel() == 0:
        return None
    peak = float(output.detach().abs().amax())
    if not RESCALE_ABOVE < peak < math.inf:
        return None
    return output * 2.0 ** -math.frexp(peak)[1]


@contextmanager
def _rescaled_outputs(model: nn.Module) -> Iterator[None]:
    """:func:`_rescale_output` on every module (leaves and blocks, so residual sums are bounded too)."""
    handles = [module.register_forward_hook(_rescale_output) for module in model.modules()]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def check_finite_weights(params: dict[str, Any]) -> None:
    """No tier can score a network whose weights are not finite: name the first such parameter."""
    for name, p in params.items():
        # The sum is NaN or infinite if a weight is; a sum that overflows is checked entry by entry.
        weight = p.param.detach()
        if not math.isfinite(float(weight.sum())) and not bool(torch.isfinite(weight).all()):
            raise ValueError(f"synflow: parameter {name!r} holds NaN or infinite values; nothing can be scored")


def nonfinite_error(
    context: ScoringContext, inputs: dict[str, torch.Tensor], survivors: dict[str, torch.Tensor], k: int, tiers: str
) -> ValueError:
    """The error for a round that is not finite in the last tier, naming where the first non-finite value arises."""
    where = locate_nonfinite(context, inputs)
    if where is None:
        bad = next((n for n, s in survivors.items() if not bool(torch.isfinite(s).all())), "?")
        where = f"the score |w * dR/dw| of parameter {bad!r} overflows"
    return ValueError(
        f"synflow: round {k} is not finite even in float64 with every module's output rescaled (computed in {tiers}): "
        f"{where}"
    )


def locate_nonfinite(context: ScoringContext, inputs: dict[str, torch.Tensor]) -> str | None:
    """Run one more pass with hooks on every module: the first module (in execution order) whose output is not
    finite, else the first (in backward order) at whose output the gradient is not; ``None`` if neither."""
    model = context.model
    names = {module: name or type(model).__name__ for name, module in model.named_modules()}
    forward_bad: list[str] = []
    backward_bad: list[str] = []

    def describe(module: nn.Module, verb: str, tensor: torch.Tensor) -> str:
        kind = "NaN" if bool(torch.isnan(tensor).any()) else "infinite"
        return f"module {names[module]!r} ({type(module).__name__}) {verb} {kind} values"

    def check_gradient(module: nn.Module, grad: torch.Tensor) -> None:
        if not backward_bad and not bool(torch.isfinite(grad).all()):
            # The first non-finite gradient met going backwards arose in the modules that consume this output.
            backward_bad.append(describe(module, "gets from the modules after it a gradient with", grad))

    def hook(module: nn.Module, args: Any, output: Any) -> None:  # noqa: ARG001
        if not isinstance(output, torch.Tensor) or not output.is_floating_point():
            return
        if not forward_bad and not bool(torch.isfinite(output).all()):
            forward_bad.append(describe(module, "outputs", output))
        if output.requires_grad:
            output.register_hook(lambda grad, module=module: check_gradient(module, grad))

    handles = [module.register_forward_hook(hook) for module in model.modules()]
    try:
        for p in context.params.values():
            p.param.grad = None
        output = context.family.synflow_output(model, like_model(inputs, model))
        if output.requires_grad:
            output.sum().backward()
    finally:
        for handle in handles:
            handle.remove()
    if forward_bad:
        return f"in the forward pass, {forward_bad[0]}"
    if backward_bad:
        return f"in the backward pass, {backward_bad[0]}"
    return None
