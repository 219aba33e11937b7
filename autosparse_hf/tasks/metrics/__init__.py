"""Evaluation metrics shipped with autosparse_hf, loaded through ``evaluate`` without the Hub.

Each metric is an ``evaluate`` metric script in its own folder (``<name>/<name>.py``), the layout of the Hub's
metric repositories; [`load_metric`] hands ``evaluate.load`` the local path, which evaluate resolves without any
network access.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import evaluate
import numpy as np
from transformers import EvalPrediction

__all__ = ["compute_metrics_for_classification", "list_metrics", "load_metric", "metric_path"]

_METRICS_DIR = Path(__file__).resolve().parent


def list_metrics() -> list[str]:
    """Names of the metrics shipped with autosparse_hf, sorted."""
    return sorted(p.name for p in _METRICS_DIR.iterdir() if (p / f"{p.name}.py").is_file())


def metric_path(name: str = "accuracy") -> Path:
    """Path of the script of a shipped metric, for ``evaluate.load(str(path))``.

    Raises:
        ValueError: If no metric of that name is shipped; the message lists the shipped ones.
    """
    path = _METRICS_DIR / name / f"{name}.py"
    if not path.is_file():
        raise ValueError(f"no shipped metric named {name!r}; the shipped metrics are {list_metrics()}")
    return path


def load_metric(name: str = "accuracy", **kwargs: Any) -> evaluate.EvaluationModule:
    """Load a metric shipped with autosparse_hf through ``evaluate.load``, offline.

    Args:
        name: A name from [`list_metrics`].
        kwargs: Passed on to ``evaluate.load`` (``experiment_id``, ``num_process``, ``process_id``, ...).

    Example:
        ```python
        >>> from autosparse_hf.tasks import load_metric
        >>> load_metric("accuracy").compute(predictions=[0, 1, 1], references=[0, 1, 0])
        {'accuracy': 0.6666666666666666}
        ```
    """
    return evaluate.load(str(metric_path(name)), **kwargs)


@functools.lru_cache(maxsize=1)
def _accuracy() -> evaluate.EvaluationModule:
    # Loading copies and imports the script; do it once, not at every evaluation of a Trainer.
    return load_metric("accuracy")


def compute_metrics_for_classification(eval_pred: EvalPrediction | tuple[Any, Any]) -> dict[str, float]:
    """Accuracy of logits against labels, for ``Trainer(compute_metrics=...)``.

    The prediction is the argmax over the last axis of the logits. When the model returns more than logits, the
    Trainer passes a tuple whose first item is the logits; it is unpacked here.

    Args:
        eval_pred: An ``EvalPrediction`` (or a ``(logits, labels)`` pair), as the Trainer passes it.

    Returns:
        `dict[str, float]`: ``{"accuracy": ...}``; the Trainer logs it as ``eval_accuracy``.

    Example:
        ```python
        >>> from transformers import Trainer
        >>> from autosparse_hf.tasks import compute_metrics_for_classification
        >>> trainer = Trainer(model=model, args=args, train_dataset=task["train"], eval_dataset=task["test"],
        ...                   compute_metrics=compute_metrics_for_classification)
        ```
    """
    if isinstance(eval_pred, EvalPrediction):
        logits, labels = eval_pred.predictions, eval_pred.label_ids
    else:
        logits, labels = eval_pred[0], eval_pred[1]
    if isinstance(logits, (tuple, list)):
        logits = logits[0]
    if isinstance(labels, (tuple, list)):
        labels = labels[0]
    predictions = np.argmax(np.asarray(logits), axis=-1).reshape(-1)
    references = np.asarray(labels).reshape(-1)
    return {"accuracy": float(_accuracy().compute(predictions=predictions, references=references)["accuracy"])}
