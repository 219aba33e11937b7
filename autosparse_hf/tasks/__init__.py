"""Built-in offline tasks, small reference models and shipped metrics.

Everything here works without the Hugging Face Hub: the data ships inside installed packages or is generated
locally ([`load_task`]), the models are built from code ([`build_model`]) and the accuracy metric is an ``evaluate``
script inside this package ([`load_metric`]).

Example:
    ```python
    >>> from transformers import Trainer, TrainingArguments
    >>> from autosparse_hf.tasks import build_model, compute_metrics_for_classification, load_task
    >>> task = load_task("mnist", seed=0)
    >>> model = build_model("lenet300100", "mnist", seed=0)
    >>> trainer = Trainer(model=model, args=TrainingArguments("out", num_train_epochs=1),
    ...                   train_dataset=task["train"], eval_dataset=task["test"],
    ...                   compute_metrics=compute_metrics_for_classification)
    ```
"""

from .datasets import TaskInfo, list_tasks, load_task, task_info
from .metrics import compute_metrics_for_classification, list_metrics, load_metric
from .models import LeNet300100, SmallConvNet, build_model, list_models

__all__ = [
    "LeNet300100",
    "SmallConvNet",
    "TaskInfo",
    "build_model",
    "compute_metrics_for_classification",
    "list_metrics",
    "list_models",
    "list_tasks",
    "load_metric",
    "load_task",
    "task_info",
]
