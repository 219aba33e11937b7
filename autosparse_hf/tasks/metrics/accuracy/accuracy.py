"""Accuracy, as an ``evaluate`` metric script shipped inside autosparse_hf.

``evaluate.load("accuracy")`` fetches its script from the Hugging Face Hub, which offline runs cannot reach; this
script follows evaluate's layout for a custom metric (``_info`` returning ``evaluate.MetricInfo``, ``_compute``) so
that ``evaluate.load(<path to this file>)`` works with ``HF_HUB_OFFLINE=1``. ``evaluate`` copies the file into its
module cache and imports it from there, so it must only import installed libraries (no relative imports).
"""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = """
Accuracy is the fraction of predictions equal to their reference label:
Accuracy = (number of correct predictions) / (number of predictions).
With `sample_weight`, each prediction counts with its weight instead of 1.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `int`): Predicted class labels.
    references (`list` of `int`): Reference class labels.
    normalize (`bool`, defaults to `True`): If `False`, return the (weighted) number of correct predictions instead
        of the fraction.
    sample_weight (`list` of `float`, *optional*): Weight of each prediction.

Returns:
    accuracy (`float`): The fraction (or, with `normalize=False`, the number) of correct predictions; 0.0 when there
        are no predictions.

Examples:
    >>> metric = evaluate.load("path/to/accuracy.py")
    >>> metric.compute(predictions=[0, 1, 1], references=[0, 1, 0])
    {'accuracy': 0.6666666666666666}
"""

_CITATION = """
@article{scikit-learn,
  title={Scikit-learn: Machine Learning in {P}ython},
  author={Pedregosa, F. and Varoquaux, G. and Gramfort, A. and Michel, V. and Thirion, B. and Grisel, O. and
          Blondel, M. and Prettenhofer, P. and Weiss, R. and Dubourg, V. and Vanderplas, J. and Passos, A. and
          Cournapeau, D. and Brucher, M. and Perrot, M. and Duchesnay, E.},
  journal={Journal of Machine Learning Research},
  volume={12},
  pages={2825--2830},
  year={2011}
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Accuracy(evaluate.Metric):
    """Classification accuracy, computed with numpy (no scikit-learn needed)."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}),
            reference_urls=["https://scikit-learn.org/stable/modules/generated/sklearn.metrics.accuracy_score.html"],
        )

    def _compute(self, predictions, references, normalize=True, sample_weight=None):
        predictions = np.asarray(predictions)
        references = np.asarray(references)
        if predictions.shape != references.shape:
            raise ValueError(f"predictions {predictions.shape} and references {references.shape} differ in shape")
        weights = np.ones(len(predictions)) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
        correct = float(np.sum(weights * (predictions == references)))
        if not normalize:
            return {"accuracy": correct}
        total = float(np.sum(weights))
        return {"accuracy": correct / total if total > 0 else 0.0}
