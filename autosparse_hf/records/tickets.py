"""Reuse one IRP run on new initializations (load one with ``records.load_ticket_source``): its ticket mask, or its per-layer densities.

For a new initialization of the same architecture, what one IRP run found transfers as *structure*: which input
units and which layers keep weights. Reusing the source ticket's mask, or only its per-layer densities with another
criterion ranking inside each layer, was the one robust gain over SNIP at the highest sparsity in our reference
runs (see the project's METHOD notes, section 6; AutoSparse, arXiv 2408.14757; lottery tickets, arXiv 1803.03635).

Densities between two IRP cycles are resolved deterministically: the source mask after the last cycle whose
density is at least the requested one is thinned by removing first the weights the next cycle pruned, smallest
source initial magnitude ``|w0|`` first (magnitude IRP prunes small weights), ties by parameter order and position.
Every requested density in ``[d_final, 1]`` therefore has exactly one ticket, and tickets are nested.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..families import PrunableParameter
from ..masks import select_masks


@dataclass
class IRPTicketSource:
    """The survival record of one IRP run: per tensor, the cycle after which each weight was pruned.

    Attributes:
        cycle_pruned: ``cycles + 1`` for weights that survived every cycle.
        w0: The source's initial weights (for the deterministic order between cycles).
        shapes: Tensor shapes of the source (``None`` entries when the source did not record them).
        cycles: Number of pruning cycles.
        run_id / origin: Identity of the source run and where it was loaded from.
    """

    cycle_pruned: dict[str, torch.Tensor]
    w0: dict[str, torch.Tensor]
    shapes: dict[str, tuple[int, ...] | None]
    cycles: int
    run_id: str = ""
    origin: str = ""
    _scores: dict[str, torch.Tensor] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        # A run folder's record reaches here without passing the score dataset's checks; a NaN |w0| would sort as
        # the largest magnitude and a stray level would move weights between tickets, so the source checks itself.
        where = self.origin or "the IRP ticket source"
        if self.cycles < 1:
            raise ValueError(f"{where}: cycles must be >= 1, got {self.cycles}")
        for name, levels in self.cycle_pruned.items():
            _check_levels(levels, self.cycles, f"{where}: cycle_pruned[{name!r}]")
            w0 = self.w0.get(name)
            if w0 is None:
                raise ValueError(f"{where}: w0 has no tensor {name!r} (cycle_pruned has)")
            if w0.numel() != levels.numel():
                raise ValueError(f"{where}: w0[{name!r}] has {w0.numel()} values, cycle_pruned {levels.numel()}")
            bad = int((~torch.isfinite(w0)).sum())
            if bad:
                raise ValueError(f"{where}: w0[{name!r}] has {bad} non-finite value(s); the source is corrupt")

    @property
    def numel(self) -> int:
        return sum(t.numel() for t in self.cycle_pruned.values())

    @property
    def final_density(self) -> float:
        return sum(int((t > self.cycles).sum()) for t in self.cycle_pruned.values()) / self.numel

    def densities(self) -> list[float]:
        """Global density after each cycle, ``[1, d_1, ..., d_final]``."""
        return [sum(int((t > c).sum()) for t in self.cycle_pruned.values()) / self.numel for c in range(self.cycles + 1)]

    def check_density(self, density: float) -> None:
        lo = self.final_density
        # One weight of slack: requested densities are rounded to whole weights.
        if not lo - 1.0 / self.numel <= density <= 1.0:
            raise ValueError(
                f"requested density {density:.6f} (sparsity {1 - density:.6f}) is outside the IRP source's range "
                f"[{lo:.6f}, 1] ({self.origin}); the source cannot say which weights to keep beyond its last cycle"
            )

    def check_compatible(self, params: dict[str, PrunableParameter], model_class: str = "model") -> None:
        """Raise ``ValueError`` listing every name or shape that differs between the source and the model."""
        problems = [f"not in the source: {n}" for n in params if n not in self.cycle_pruned]
        problems += [f"not in the {model_class}: {n}" for n in self.cycle_pruned if n not in params]
        for name, p in params.items():
            if name not in self.cycle_pruned:
                continue
            shape = self.shapes.get(name)
            if shape is not None and tuple(shape) != tuple(p.param.shape):
                problems.append(f"shape of {name}: source {tuple(shape)} vs {model_class} {tuple(p.param.shape)}")
            elif self.cycle_pruned[name].numel() != p.param.numel():
                problems.append(f"size of {name}: source {self.cycle_pruned[name].numel()} vs {p.param.numel()}")
        if problems:
            raise ValueError(
                f"the IRP source {self.origin} does not match {model_class} (another architecture?):\n  "
                + "\n  ".join(problems)
            )

    def scores(self) -> dict[str, torch.Tensor]:
        """Scores whose global top-k is the ticket at every density: the survival level, then source |w0|."""
        if self._scores is None:
            result = {}
            magnitudes = torch.cat([self.w0[n].reshape(-1).abs().float() for n in self.cycle_pruned])
            # Rank of |w0| over all tensors, scaled into [0, 0.5): orders weights inside one survival level only.
            order = torch.sort(magnitudes, stable=True).indices
            rank = torch.empty_like(magnitudes)
            rank[order] = torch.arange(magnitudes.numel(), dtype=torch.float32)
            rank = 0.5 * rank / max(magnitudes.numel(), 1)
            offset = 0
            for name, levels in self.cycle_pruned.items():
                n = levels.numel()
                result[name] = levels.reshape(-1).double() + rank[offset : offset + n].double()
                offset += n
            self._scores = result
        return self._scores

    def ticket(self, density: float, shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
        """The source ticket at ``density`` as boolean masks shaped like the target's tensors."""
        self.check_density(density)
        scores = {n: s.reshape(shapes[n]) for n, s in self.scores().items()}
        return dict(select_masks(scores, 1.0 - density))

    def layer_counts(self, density: float) -> dict[str, int]:
        """Kept weights per tensor in the source ticket at ``density`` (its layer budgets)."""
        self.check_density(density)
        masks = select_masks(self.scores(), 1.0 - density)
        return {n: int(m.sum()) for n, m in masks.items()}


def _check_levels(levels: torch.Tensor, cycles: int, where: str) -> None:
    if levels.dtype.is_floating_point or levels.dtype == torch.bool:
        raise ValueError(f"{where} has dtype {levels.dtype}; survival levels are integers")
    bad = (levels < 1) | (levels > cycles + 1)
    if bool(bad.any()):
        first = int(levels.reshape(-1)[bad.reshape(-1)][0])
        raise ValueError(
            f"{where} has {int(bad.sum())} level(s) outside [1, {cycles + 1}] (e.g. {first}); the source is corrupt"
        )


def ticket_source_from_dataset(dataset: Any, origin: str = "") -> IRPTicketSource:
    """The ticket source of a surviving-score ``datasets.Dataset`` holding exactly one IRP run."""
    source = origin or "the score dataset"
    columns = dataset.select_columns(["run_id", "param_name", "index", "numel", "w0", "cycles", "cycle_pruned"])
    table = columns.with_format("numpy")[:]
    run_ids = np.unique(table["run_id"])
    if len(run_ids) != 1:
        raise ValueError(f"{source} holds {len(run_ids)} IRP runs ({list(run_ids)}); a ticket needs exactly one")
    shapes: dict[str, tuple[int, ...] | None] = {}
    try:
        description = json.loads(dataset.info.description or "{}")
        shapes = {layer["name"]: tuple(layer["shape"]) for layer in description.get("layers", [])}
    except (json.JSONDecodeError, KeyError, TypeError):
        shapes = {}
    names = list(dict.fromkeys(table["param_name"].tolist()))
    cycle_pruned, w0 = {}, {}
    for name in names:
        rows = np.nonzero(table["param_name"] == name)[0]
        n = int(table["numel"][rows[0]])
        index = table["index"][rows]
        if len(rows) != n or not np.array_equal(np.sort(index), np.arange(n)):
            raise ValueError(f"{source}: rows of {name} do not cover its {n} weights exactly once (corrupt source)")
        levels = torch.empty(n, dtype=torch.int16)
        levels[torch.from_numpy(index)] = torch.from_numpy(table["cycle_pruned"][rows].astype(np.int16))
        weights = torch.empty(n, dtype=torch.float32)
        weights[torch.from_numpy(index)] = torch.from_numpy(table["w0"][rows].astype(np.float32))
        cycle_pruned[name], w0[name] = levels, weights
        shapes.setdefault(name, None)
    return IRPTicketSource(
        cycle_pruned=cycle_pruned,
        w0=w0,
        shapes=shapes,
        cycles=int(table["cycles"][0]),
        run_id=str(run_ids[0]),
        origin=str(origin),
    )
