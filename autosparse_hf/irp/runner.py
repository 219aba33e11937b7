"""Run IRP on a built-in or Hub task with one call: what ``recipes/irp.py`` and the notebooks use."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import Trainer

from ..checkpoints import broadcast_path, last_complete_checkpoint, remove_stale_temporaries
from ..records import RUN_DIR, is_complete_run
from ..training import TrainRecipe, world_size
from .callback import IRPCallback
from .checkpoint import is_complete
from .config import IRPConfig

logger = logging.getLogger(__name__)


@dataclass
class IRPRunArguments:
    """What to prune and where to write. The ``TrainRecipe`` describes one cycle (``epochs`` = epochs per cycle)."""

    model: str = field(
        default="lenet300100",
        metadata={"help": "Built-in model (lenet300100, convnet), a timm model name, or a transformers config "
                  "(a config.json file or a folder holding one)."},
    )
    task: str = field(default="mnist", metadata={"help": "Built-in task (mnist, mnist1d, digits) or Hub dataset."})
    seed: int = field(default=0, metadata={"help": "Seed of the model initialization and of training."})
    task_seed: int = field(default=0, metadata={"help": "Seed of the train/test split of built-in tasks."})
    output_dir: str = field(default="outputs/irp", metadata={"help": "Run folder (checkpoints and results)."})
    checkpoint_every_cycle: bool = field(
        default=True, metadata={"help": "Save a Trainer checkpoint at every cycle end so a killed run resumes."}
    )
    resume: bool = field(default=True, metadata={"help": "Resume from the last checkpoint in output_dir, if any."})
    push_to_hub: bool = field(
        default=False, metadata={"help": "Push the score dataset to the Hub as hub_model_id (as TrainingArguments does)."}
    )
    hub_model_id: str | None = field(default=None, metadata={"help": "Hub dataset repo of the scores (org/name)."})
    hub_private_repo: bool | None = field(default=None, metadata={"help": "Make the Hub repo private."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Use only this many training examples."})
    disable_tqdm: bool = field(default=False, metadata={"help": "Hide progress bars."})

    def __post_init__(self) -> None:
        # A push is checked now, not after hours of training: the repo id must be given and the Hub reachable.
        if isinstance(self.push_to_hub, str):
            raise ValueError(
                f"push_to_hub is a flag (true/false), got {self.push_to_hub!r}; give the repo as "
                f"hub_model_id={self.push_to_hub!r}"
            )
        if self.push_to_hub:
            if not self.hub_model_id:
                raise ValueError("push_to_hub needs hub_model_id (the Hub dataset repo, e.g. 'me/lenet-irp-scores')")
            from huggingface_hub import constants

            if constants.HF_HUB_OFFLINE:
                raise ConnectionError(
                    f"push_to_hub to {self.hub_model_id!r} was requested but the Hub is offline (HF_HUB_OFFLINE=1); "
                    "nothing was trained; unset push_to_hub or go online"
                )


def run_irp(run: IRPRunArguments, config: IRPConfig, recipe: TrainRecipe) -> IRPCallback:
    """Train with ``IRPCallback`` on ``run.task`` and write the run folder ``{output_dir}/irp``.

    Resumes from the last checkpoint in ``output_dir`` when ``run.resume``. Returns the finished callback.
    """
    from ..tasks import build_model, compute_metrics_for_classification, load_task, task_info

    if float(recipe.epochs) != int(recipe.epochs) or recipe.epochs < 1:
        raise ValueError(f"epochs per cycle must be a whole number >= 1, got {recipe.epochs}")
    if irp_run_complete(run.output_dir):
        # Checked before resuming too: the last checkpoint of a finished run would otherwise be "resumed".
        raise ValueError(f"{run.output_dir} already holds a finished IRP run; choose another output_dir")
    dataset = load_task(run.task, seed=run.task_seed)
    if run.max_train_samples:
        dataset["train"] = dataset["train"].select(range(min(run.max_train_samples, len(dataset["train"]))))
    info = task_info(run.task)
    model = build_model(run.model, info, seed=run.seed)
    irp = IRPCallback(config, model_name=run.model, task_name=run.task, seed=run.seed)
    cycle_args: dict[str, Any] = dict(
        num_train_epochs=config.training_cycles * int(recipe.epochs),
        logging_strategy="no",
        disable_tqdm=run.disable_tqdm,
    )
    if run.checkpoint_every_cycle:
        cycle_args.update(save_strategy="epoch", save_total_limit=2)
        if int(recipe.epochs) > 1:
            # Save at cycle ends only; the cycle length in steps is known once the Trainer has its dataloader.
            cycle_args.update(save_strategy="steps", save_steps=_cycle_steps(dataset, recipe))
    args = recipe.training_arguments(run.output_dir, run.seed, **cycle_args)
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=dataset["train"],
        eval_dataset=dataset["test"],
        compute_metrics=compute_metrics_for_classification,
        callbacks=[irp],
    )
    checkpoint = None
    if run.resume and trainer.is_world_process_zero():
        # Only checkpoints whose IRP state is complete count; a newer one a kill left half-written is removed, and
        # so are the temporary folders of interrupted atomic saves.
        remove_stale_temporaries(run.output_dir)
        checkpoint = last_complete_checkpoint(run.output_dir, is_complete, remove_incomplete=True)
    checkpoint = broadcast_path(checkpoint)  # rank 0's choice on every rank
    if checkpoint is not None:
        logger.info("resuming IRP from %s", checkpoint)
    trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint is not None else None)
    if run.push_to_hub and run.hub_model_id and trainer.is_world_process_zero():
        from ..records.score_io import push_score_dataset

        push_score_dataset(irp.to_dataset(), run.hub_model_id, private=run.hub_private_repo)
    return irp


def irp_run_complete(output_dir: str | Path) -> bool:
    """Whether ``output_dir`` holds a finished IRP run (``IRPRecord.from_pretrained`` can load it)."""
    return is_complete_run(Path(output_dir) / RUN_DIR)




def _cycle_steps(dataset: Any, recipe: TrainRecipe) -> int:
    import math

    per_epoch = math.ceil(len(dataset["train"]) / (recipe.batch_size * world_size()))
    return per_epoch * int(recipe.epochs)

