"""Run IRP on a built-in or Hub task with one call: what ``recipes/irp.py`` and the notebooks use."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from transformers import Trainer

from ..checkpoints import broadcast_path, last_complete_checkpoint, remove_stale_temporaries
from ..records import RUN_DIR, is_complete_run
from ..training import TrainRecipe, world_size
from .arguments import IRPRunArguments
from .callback import IRPCallback
from .checkpoint import is_complete
from .config import IRPConfig

logger = logging.getLogger(__name__)


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

