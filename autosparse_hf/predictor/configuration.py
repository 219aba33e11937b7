"""``AutoSConfig``: the configuration of an AutoS predictor (transformers ``PretrainedConfig``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from transformers import AutoConfig, PretrainedConfig

from ..features import FEATURE_SCHEMA_VERSION, feature_names

ARCHITECTURES: tuple[str, ...] = ("mlp", "paper_fc", "paper_resnet18")
LOSSES: tuple[str, ...] = ("mse", "bce", "ranking")
TARGETS: tuple[str, ...] = ("survival", "membership")
WITHIN_LAYER: tuple[str, ...] = ("predictor", "snip", "synflow")


class AutoSConfig(PretrainedConfig):
    r"""Configuration of the AutoS predictor of AutoSparse (Liu et al. 2024, arXiv 2408.14757).

    AutoS maps per-weight features at initialization to the weight's IRP surviving score; pruning keeps the weights
    with the highest predictions. Everything a saved predictor needs at prune time lives here, so
    ``AutoSCallback(predictor=folder)`` needs nothing else: the feature set and its schema version, the feature
    normalization statistics, and how many batches the initial gradient averages over.

    Args:
        architecture: ``"mlp"`` (default; a per-weight MLP over the feature vector, scores millions of weights per
            second on a CPU), ``"paper_fc"`` (the paper's FC predictor, 2-16-64-1024-1024-64-1 with batch norm) or
            ``"paper_resnet18"`` (the paper's default: an MLP lifts the features to 3x32x32 for a ResNet-18 with one
            output; about 1.1 GFLOP per weight, kept for fidelity, far slower).
        feature_set: A key of ``autosparse_hf.features.FEATURE_SETS`` (``"default"``, ``"paper"``, ``"weight"``,
            ``"gradient"``).
        feature_schema_version: Version of the feature code the predictor was trained with.
        hidden_sizes: Hidden widths of the ``mlp`` architecture.
        feature_mean / feature_std: Per-feature standardization fitted on the training rows.
        loss: ``"mse"`` on the target (paper), ``"bce"`` (membership target) or ``"ranking"`` (pairwise logistic
            loss within a layer).
        target: ``"survival"``: the surviving score, cycles survived / cycles (paper). ``"membership"``: whether the
            weight is in the IRP mask at a given density; the log of the target density is one more input, so the
            predictor answers "is this weight in the ticket at the density I am pruning to".
        budget_model: A fitted layer-budget model (``predictor.budgets.fit_budget_model``) or ``None``; when set,
            ``budgets="learned"`` (and ``budgets="auto"`` with criterion ``autos``) splits the kept weights between
            tensors with it.
        within_layer: The ranking inside each tensor this predictor was validated with, the recipe that
            ``AutoSCallback`` and ``PruneConfig.from_predictor`` follow: ``"predictor"`` (criterion ``autos``, the
            learned scores), ``"snip"`` (``|w0 g0|`` on the predictor's gradient batches) or ``"synflow"`` (iterative
            SynFlow inside the learned budgets, each tensor on its own exponential schedule towards its budget). The
            criterion ``autos`` itself always ranks with the learned scores.
        feature_num_batches: Batches the initial gradient ``g0`` averages over at prune time.
        training_sources: Run ids of the score datasets it was trained on.
    """

    model_type = "autos"

    def __init__(
        self,
        architecture: str = "mlp",
        feature_set: str = "default",
        feature_schema_version: int = FEATURE_SCHEMA_VERSION,
        hidden_sizes: Sequence[int] = (32, 32),
        feature_mean: Sequence[float] | None = None,
        feature_std: Sequence[float] | None = None,
        loss: str = "mse",
        feature_num_batches: int = 4,
        training_sources: Sequence[str] = (),
        target: str = "survival",
        budget_model: dict[str, Any] | None = None,
        within_layer: str = "predictor",
        **kwargs: Any,
    ) -> None:
        if architecture not in ARCHITECTURES:
            raise ValueError(f"unknown architecture {architecture!r}; choose one of {ARCHITECTURES}")
        if loss not in LOSSES:
            raise ValueError(f"unknown loss {loss!r}; choose one of {LOSSES}")
        if target not in TARGETS:
            raise ValueError(f"unknown target {target!r}; choose one of {TARGETS}")
        if (target, loss) in (("survival", "bce"), ("membership", "mse")):
            raise ValueError(f"loss {loss!r} does not fit target {target!r} (survival: mse or ranking; "
                             "membership: bce or ranking)")
        names = feature_names(feature_set)
        if architecture.startswith("paper") and feature_set not in ("paper", "weight", "gradient", "default"):
            raise ValueError(f"feature set {feature_set!r} is not usable with {architecture}")
        self.architecture = architecture
        self.feature_set = feature_set
        self.feature_schema_version = int(feature_schema_version)
        self.hidden_sizes = [int(h) for h in hidden_sizes]
        self.num_features = len(names)
        self.target = target
        # Inputs: the feature vector, plus log(density) for the membership target.
        self.num_inputs = len(names) + (1 if target == "membership" else 0)
        self.feature_mean = list(feature_mean) if feature_mean is not None else [0.0] * self.num_inputs
        self.feature_std = list(feature_std) if feature_std is not None else [1.0] * self.num_inputs
        if len(self.feature_mean) != self.num_inputs or len(self.feature_std) != self.num_inputs:
            raise ValueError(
                f"feature_mean/feature_std need {self.num_inputs} values for feature set {feature_set!r} "
                f"and target {target!r}"
            )
        self.budget_model = budget_model
        if within_layer not in WITHIN_LAYER:
            raise ValueError(f"unknown within_layer {within_layer!r}; choose one of {WITHIN_LAYER}")
        self.within_layer = within_layer
        self.loss = loss
        self.feature_num_batches = int(feature_num_batches)
        self.training_sources = list(training_sources)
        super().__init__(**kwargs)


# AutoConfig.from_pretrained reads an AutoS config.json (model_type "autos") once this module is imported.
AutoConfig.register("autos", AutoSConfig, exist_ok=True)
