"""Ticket reuse: prune a new initialization with the IRP source's ticket at the requested density."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..records.irp_record import load_ticket_source, ticket_metadata
from .base import Criterion, ScoringContext, register_criterion


@register_criterion
@dataclass
class TicketCriterion(Criterion):
    """Scores whose global top-k at sparsity ``s`` is the IRP source's ticket at density ``1 - s``.

    The score of a weight is its survival level in the source run (the cycle after which IRP pruned it) plus a
    tie-break inside a level by the source's initial magnitude, see ``autosparse_hf.tickets``. Names and shapes must
    match the source; a density beyond the source's last cycle is an error. Lottery tickets: Frankle & Carbin 2019
    (arXiv 1803.03635); reuse across initializations as measured for AutoSparse (arXiv 2408.14757).

    Args:
        ticket_source: An IRP run folder (or the ``output_dir`` holding ``irp/``), a score dataset (folder, Parquet or
            Hub id), an ``IRPRecord`` or an ``IRPTicketSource``.
        source: Old name of ``ticket_source``.
    """

    name = "ticket"
    writes_weights = False
    ticket_source: Any = None
    source: Any = None

    def __post_init__(self) -> None:
        given = self.ticket_source if self.ticket_source is not None else self.source
        if given is None:
            raise ValueError("criterion 'ticket' needs ticket_source (an IRP run folder or score dataset)")
        self.ticket_source = load_ticket_source(given)
        self.source = None

    def score(self, context: ScoringContext) -> dict[str, torch.Tensor]:
        source = self.ticket_source
        source.check_compatible(context.params, type(context.model).__name__)
        source.check_density(1.0 - context.sparsity)
        scores = source.scores()
        return {n: scores[n].reshape(p.param.shape).to(p.param.device) for n, p in context.params.items()}

    def metadata(self) -> dict[str, Any]:
        return ticket_metadata(self.ticket_source)
