"""Configuration of iterative rewind pruning (IRP), the data generator of AutoSparse."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

SCHEDULES: tuple[str, ...] = ("equal_count", "geometric", "custom")


@dataclass
class IRPConfig:
    """How iterative rewind pruning runs (AutoSparse, arXiv 2408.14757; lottery tickets, arXiv 1803.03635).

    Each cycle trains the masked network for one full schedule, scores the trained weights with ``criterion``,
    removes the next share of weights and rewinds the whole training state (all parameters and buffers, optimizer
    state, learning-rate schedule) to ``rewind_step``.
    """

    cycles: int = field(default=20, metadata={"help": "Pruning cycles E (paper: 20)."})
    final_sparsity: float = field(default=0.99, metadata={"help": "Sparsity after the last cycle (paper: 0.99)."})
    schedule: str = field(
        default="equal_count",
        metadata={
            "help": "equal_count: remove (1 - d_final) / E of the original weights per cycle (paper); "
            "geometric: keep d_final ** (1 / E) of the survivors per cycle; custom: the densities list."
        },
    )
    densities: list[float] = field(
        default_factory=list,
        metadata={
            "help": "Density after each cycle, strictly decreasing in (0, 1) (e.g. to hit benchmark densities "
            "exactly); when given, it sets cycles, final_sparsity and schedule='custom'."
        },
    )
    criterion: str = field(
        default="magnitude",
        metadata={"help": "Criterion scoring the trained weights (magnitude; snip as in the paper's main dataset)."},
    )
    criterion_num_batches: int = field(default=1, metadata={"help": "Batches for a data-dependent criterion."})
    scope: str = field(default="global", metadata={"help": "global (paper), uniform or erk."})
    min_density: float = field(default=0.0, metadata={"help": "Minimum density per tensor when pruning."})
    rewind_step: int = field(
        default=0,
        metadata={
            "help": "0 rewinds to initialization; k > 0 rewinds weights and buffers to optimizer step k (late "
            "rewinding, arXiv 1912.05671) with a fresh optimizer and the schedule resumed at step k, as open_lth does."
        },
    )
    feature_num_batches: int = field(default=4, metadata={"help": "Batches averaged for the initial gradient g0."})
    train_final_ticket: bool = field(
        default=True,
        metadata={"help": "Train and evaluate the final mask too (one more cycle), completing the IRP curve."},
    )
    evaluate_cycles: bool = field(
        default=True, metadata={"help": "Evaluate every trained ticket on the Trainer's eval set before rewinding."}
    )
    include: list[str] = field(default_factory=list, metadata={"help": "Extra parameter-name patterns to prune."})
    exclude: list[str] = field(default_factory=list, metadata={"help": "Parameter-name patterns never pruned."})

    def __post_init__(self) -> None:
        # A YAML scalar is one pattern, never a sequence of one-character patterns.
        self.include = [self.include] if isinstance(self.include, str) else list(self.include)
        self.exclude = [self.exclude] if isinstance(self.exclude, str) else list(self.exclude)
        for name, minimum in (("cycles", 1), ("rewind_step", 0), ("feature_num_batches", 1), ("criterion_num_batches", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
        if self.densities:
            if self.schedule not in ("equal_count", "custom"):
                # equal_count is the default, so it cannot tell a user's choice; anything else would be overridden.
                raise ValueError(f"densities set the schedule (custom); schedule={self.schedule!r} contradicts them")
            values = [float(d) for d in self.densities]
            if not all(0.0 < d < 1.0 for d in values) or any(b >= a for a, b in zip(values, values[1:], strict=False)):
                raise ValueError(f"densities must be strictly decreasing values in (0, 1), got {self.densities!r}")
            self.densities = values
            self.cycles, self.final_sparsity, self.schedule = len(values), 1.0 - values[-1], "custom"
        elif self.schedule == "custom":
            raise ValueError("schedule='custom' needs the densities list")
        if not isinstance(self.cycles, int) or self.cycles < 1:
            raise ValueError(f"cycles must be an integer >= 1, got {self.cycles!r}")
        if not 0.0 < float(self.final_sparsity) < 1.0:
            raise ValueError(f"final_sparsity must be in (0, 1), got {self.final_sparsity!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.rewind_step < 0:
            raise ValueError(f"rewind_step must be >= 0, got {self.rewind_step}")
        if self.feature_num_batches < 1 or self.criterion_num_batches < 1:
            raise ValueError("feature_num_batches and criterion_num_batches must be >= 1")
        from ..criteria import get_criterion
        from ..masks import SCORE_SCOPES

        get_criterion(self.criterion)  # unknown names fail here, listing the known ones
        if self.scope not in SCORE_SCOPES:
            raise ValueError(f"scope must be one of {SCORE_SCOPES}, got {self.scope!r}")

    @property
    def training_cycles(self) -> int:
        """Trainer cycles: one per pruning cycle, plus one for the final ticket when it is trained."""
        return self.cycles + (1 if self.train_final_ticket else 0)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
