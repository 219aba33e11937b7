"""``ticket``: the per-tensor densities of an IRP run's ticket at the target density.

For a new initialization of the same architecture, an IRP run's layer budgets transfer (METHOD notes, section 6):
any criterion ranking inside them came close to the lottery ticket at 99%. Lottery tickets: arXiv 1803.03635.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from ..families import PrunableParameter
from ..records.irp_record import load_ticket_source, ticket_metadata
from .base import Allocation, LayerBudgets, register_allocation


@register_allocation
@dataclass
class TicketAllocation(Allocation):
    """Kept weights per tensor of the IRP source's ticket at density ``1 - sparsity``.

    Args:
        ticket_source: An IRP run folder (or the ``output_dir`` holding ``irp/``), a score dataset (folder, Parquet,
            Hub id), an ``IRPRecord`` or an ``IRPTicketSource``. Names and shapes must match the model.
    """

    name: ClassVar[str] = "ticket"
    ticket_source: Any = None

    def __post_init__(self) -> None:
        if self.ticket_source is None:
            raise ValueError('budgets="ticket" needs ticket_source (an IRP run folder or score dataset)')
        self.source = load_ticket_source(self.ticket_source)

    def allocate(self, params: dict[str, PrunableParameter], sparsity: float, model_class: str = "model") -> LayerBudgets:
        self.source.check_compatible(params, model_class)
        return LayerBudgets("counts", self.source.layer_counts(1.0 - sparsity), ticket_metadata(self.source))
