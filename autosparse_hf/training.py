"""One fixed training recipe, so that every pruned network is trained identically.

Honest comparison of pruning criteria (AutoSparse, arXiv 2408.14757, section 4 of our METHOD notes) needs one recipe
for every method; this module turns a :class:`TrainRecipe` into ``TrainingArguments`` and runs the ``Trainer``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from datasets import DatasetDict
    from torch import nn
    from transformers import TrainerCallback, TrainingArguments

# torch and transformers are imported where used: TrainRecipe is a recipe argument, and --help must stay fast.


def world_size() -> int:
    """Processes started by the launcher (from its environment: creating accelerate's PartialState before
    ``TrainingArguments`` decides between CPU and GPU would set up the process group the wrong way on CPU)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


@dataclass
class TrainRecipe:
    """Hyperparameters of the training recipe shared by every method in a comparison."""

    epochs: float = field(default=10.0, metadata={"help": "Training epochs (for IRP: epochs per cycle)."})
    batch_size: int = field(default=64, metadata={"help": "Training batch size per device."})
    eval_batch_size: int = field(default=512, metadata={"help": "Evaluation batch size per device."})
    learning_rate: float = field(default=0.05, metadata={"help": "Peak learning rate."})
    momentum: float = field(default=0.9, metadata={"help": "SGD momentum."})
    weight_decay: float = field(default=1e-4, metadata={"help": "Weight decay (not on biases and norms)."})
    lr_scheduler_type: str = field(default="cosine", metadata={"help": "transformers learning-rate schedule."})
    warmup_ratio: float = field(default=0.0, metadata={"help": "Fraction of steps for linear warm-up."})

    def __post_init__(self) -> None:
        # Checked when the recipe is made (a YAML typo fails here, not after the first cell has trained).
        for name in ("epochs", "learning_rate", "momentum", "weight_decay", "warmup_ratio"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value or value < 0:
                raise ValueError(f"TrainRecipe.{name} must be a number >= 0, got {value!r}")
        if self.epochs <= 0:
            raise ValueError(f"TrainRecipe.epochs must be > 0, got {self.epochs!r}")
        for name in ("batch_size", "eval_batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"TrainRecipe.{name} must be an integer >= 1, got {value!r}")

    def training_arguments(self, output_dir: str, seed: int, **overrides: Any) -> TrainingArguments:
        """``TrainingArguments`` for this recipe (SGD with momentum, no checkpoints, no reporting)."""
        import torch
        from transformers import TrainingArguments

        kwargs: dict[str, Any] = dict(
            output_dir=output_dir,
            num_train_epochs=self.epochs,
            per_device_train_batch_size=self.batch_size,
            per_device_eval_batch_size=self.eval_batch_size,
            learning_rate=self.learning_rate,
            optim="sgd",
            optim_args=f"momentum={self.momentum}",
            weight_decay=self.weight_decay,
            lr_scheduler_type=self.lr_scheduler_type,
            warmup_steps=self.warmup_ratio,
            seed=seed,
            data_seed=seed,
            save_strategy="no",
            eval_strategy="no",
            report_to=[],
            logging_strategy="epoch",
            disable_tqdm=True,
            # Classification losses are already means; averaging tokens across ranks would rescale them under DDP.
            average_tokens_across_devices=False,
            dataloader_num_workers=0,
            dataloader_pin_memory=torch.cuda.is_available(),
        )
        if world_size() > 1 and not torch.cuda.is_available():
            # `accelerate launch --multi_gpu` on a machine without GPUs starts the processes, but the Trainer joins
            # them (DDP over gloo) only when told to use the CPU; otherwise every process trains alone on all data.
            kwargs["use_cpu"] = True
        kwargs.update(overrides)
        return TrainingArguments(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def train_and_evaluate(
    model: nn.Module,
    dataset: DatasetDict,
    recipe: TrainRecipe,
    *,
    output_dir: str,
    seed: int,
    callbacks: Sequence[TrainerCallback] = (),
    eval_split: str = "test",
    **argument_overrides: Any,
) -> dict[str, float]:
    """Train ``model`` on ``dataset["train"]`` with ``recipe`` and return the final metrics on ``eval_split``.

    The metrics are those of the final epoch (never the best epoch on the test set).
    """
    from transformers import PrinterCallback, Trainer

    from .tasks import compute_metrics_for_classification

    trainer = Trainer(
        model=model,
        args=recipe.training_arguments(output_dir, seed, **argument_overrides),
        train_dataset=dataset["train"],
        eval_dataset=dataset[eval_split],
        compute_metrics=compute_metrics_for_classification,
        callbacks=list(callbacks),
    )
    trainer.remove_callback(PrinterCallback)  # grids print their own tables; per-epoch log lines are noise there
    trainer.train()
    metrics = trainer.evaluate()
    return {k.removeprefix("eval_"): float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
