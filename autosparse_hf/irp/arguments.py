"""The arguments of ``recipes/irp.py`` beyond ``IRPConfig`` and ``TrainRecipe``: what to prune and where to write.

This module imports nothing heavy, so that the recipe's ``--help`` is fast; ``run_irp`` (``irp/runner.py``) runs it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..hub import check_push_request


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
        check_push_request(
            self.push_to_hub, self.hub_model_id, repo_kind="Hub dataset repo", example="me/lenet-irp-scores"
        )
