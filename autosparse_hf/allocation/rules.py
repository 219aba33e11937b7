"""Allocations that are rules applied to the scores by the selection: ``global``, ``uniform``, ``erk``.

- ``global``: one threshold over all tensors (AutoSparse, arXiv 2408.14757, and SNIP/GraSP/SynFlow as published).
- ``uniform``: every tensor keeps the same fraction.
- ``erk``: Erdos-Renyi-Kernel densities (Evci et al. 2020, "Rigging the lottery", arXiv 1911.11134), density of a
  tensor proportional to ``sum(shape) / prod(shape)``, capped at 1.

Each is an exact divisor rule; selection carries it out so that counts stay exact and monotone under an existing
mask and ``min_density`` (``autosparse_hf.masks.selection``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..families import PrunableParameter
from .base import Allocation, LayerBudgets, register_allocation


@register_allocation
@dataclass
class GlobalAllocation(Allocation):
    """One global threshold on the scores: the scores decide every tensor's budget."""

    name: ClassVar[str] = "global"

    def allocate(self, params: dict[str, PrunableParameter], sparsity: float, model_class: str = "model") -> LayerBudgets:
        return LayerBudgets("global")


@register_allocation
@dataclass
class UniformAllocation(Allocation):
    """The same density in every tensor (largest-remainder exact counts)."""

    name: ClassVar[str] = "uniform"

    def allocate(self, params: dict[str, PrunableParameter], sparsity: float, model_class: str = "model") -> LayerBudgets:
        return LayerBudgets("uniform")


@register_allocation
@dataclass
class ERKAllocation(Allocation):
    """Erdos-Renyi-Kernel densities (arXiv 1911.11134); random pruning in ERK budgets is a strong baseline."""

    name: ClassVar[str] = "erk"

    def allocate(self, params: dict[str, PrunableParameter], sparsity: float, model_class: str = "model") -> LayerBudgets:
        return LayerBudgets("erk")
