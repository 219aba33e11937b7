"""AutoS: the learned pruning-at-initialization criterion of AutoSparse (arXiv 2408.14757)."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import torch

from ..allocation.learned import LearnedAllocation
from ..features import InitialFeatures, compute_initial_features, feature_names, iter_feature_columns, layer_contexts
from ..predictor.loading import load_predictor
from .base import Criterion, ScoringContext, register_criterion
from .progress import scoring_progress

logger = logging.getLogger(__name__)


@register_criterion
@dataclass
class AutoSCriterion(Criterion):
    """Score ``s = AutoS(features(w0, g0, layer))``: the predicted IRP surviving score of each weight.

    The features are computed with the same code that built the predictor's training rows
    (``autosparse_hf.features``), built and predicted in chunks of ``batch_size`` rows, so memory stays bounded by one
    chunk's feature matrix plus per-tensor statistics (within-tensor ranks, unit norms).

    Args:
        predictor: An ``AutoSModel``, a folder saved with ``save_pretrained``, or a Hub id.
        batch_size: Rows per prediction chunk (default 16384, which keeps a chunk's activations in cache; 256 for
            ``paper_resnet18``, whose activations per row are large).
        num_batches: Batches for ``g0``; default: what the predictor's config says.
        prefetch: Compute the next tensor's feature statistics in a background thread while the current one is
            predicted, with one intra-op thread less for the prediction meanwhile (only with two or more torch
            threads). Off by default: on a quiet 2-core machine the sequential path was faster (1.39 s against
            1.66 s for ResNet-18) and needs less memory (a second allocator arena and a second tensor's
            statistics; benchmarks/scoring_throughput.py, autos_memory.py). It can help when the prediction is
            slow relative to the sorts.
        fold: For the ``mlp`` predictor, fold the input standardization and the columns that are constant within a
            tensor (layer context, density) into the first layer (``AutoSModel.fold_inputs``): fewer columns and
            no standardization pass, equal to ``predict`` up to float32 rounding. ``False`` scores with ``predict`` itself, bit for bit.
        progress: ``True`` shows a ``tqdm`` bar over the tensors, ``False`` never; ``None`` (default) follows the
            transformers progress-bar switch (``transformers.utils.logging.disable_progress_bar()``,
            ``HF_HUB_DISABLE_PROGRESS_BARS=1``) and shows the bar only once scoring has taken a few seconds
            (``autosparse_hf.criteria.progress.PROGRESS_DELAY_S``). The wall time is logged at ``logging.INFO``.
    """

    name = "autos"
    writes_weights = False
    predictor: Any = None
    batch_size: int | None = None
    num_batches: int | None = None
    prefetch: bool = False
    fold: bool = True
    progress: bool | None = None

    def __post_init__(self) -> None:
        if self.predictor is None:
            raise ValueError("criterion 'autos' needs a predictor: criterion_options={'predictor': <folder or model>}")
        self.model = load_predictor(self.predictor)
        if self.batch_size is None:
            self.batch_size = 256 if self.model.config.architecture == "paper_resnet18" else 16384
        self.needs_data = self.model.config.feature_set != "weight"
        recommended = self.model.config.within_layer
        if recommended != "predictor":
            # The predictor's own scores are what this criterion is; the recipe the predictor was validated with
            # (another criterion inside its budgets) is followed by AutoSCallback and PruneConfig.from_predictor.
            logger.info(
                "criterion %r ranks with the predictor's own scores; this predictor recommends %r inside its learned "
                "budgets (AutoSCallback and PruneConfig.from_predictor follow that recommendation)",
                self.name,
                recommended,
            )

    def score(self, context: ScoringContext) -> dict[str, torch.Tensor]:
        started = time.perf_counter()
        config = self.model.config
        num_batches = self.num_batches or config.feature_num_batches
        if self.needs_data:
            # compute_scores restores the model around this criterion and the weights stay as they are while
            # scoring: no second snapshot, no copy of the weights.
            features = compute_initial_features(
                context.model,
                context.dataloader,
                num_batches,
                params=context.params,
                copy_weights=False,
                preserve_state=False,
            )
        else:
            features = InitialFeatures(
                weights={n: p.param.detach() for n, p in context.params.items()},
                gradients={n: torch.zeros_like(p.param) for n, p in context.params.items()},
                layers=layer_contexts(context.params),
                num_batches=0,
            )
        names = feature_names(config.feature_set)
        membership = config.target == "membership"
        # The membership predictor's extra input, log(density) ("is this weight in the ticket at the density we
        # prune to?"), is the same for every row.
        density_input = math.log(max(1.0 - context.sparsity, 1e-6))
        fold = self.fold and config.architecture == "mlp"
        # The outputs are allocated before the loop: long-lived blocks allocated between the loop's large transients
        # (statistics, chunks) would pin the allocator's heap, and freed transients would not be reused or returned.
        outputs = {layer.name: torch.empty(layer.numel, dtype=torch.float32) for layer in features.layers}
        buffer = torch.empty(self.batch_size, len(names) + int(membership), dtype=torch.float32)  # reused per chunk
        scores = {}
        threads = torch.get_num_threads()
        prefetch = self.prefetch and threads > 1
        if prefetch:
            # The prefetch thread takes one core for its sorts; with all intra-op threads on the prediction as well,
            # the spinning threads oversubscribe the cores.
            torch.set_num_threads(threads - 1)
        bar = scoring_progress(len(features.layers), f"{self.name} tensors", self.progress, unit="tensor")
        try:
            # Features are built and scored chunk by chunk: peak memory is one chunk plus per-tensor statistics.
            for layer, columns in iter_feature_columns(features, config.feature_set, prefetch=prefetch):
                flat = outputs.pop(layer.name)
                if fold:
                    # Layer context and density are constant within the tensor: folded into the first layer's bias.
                    constants = {names.index(n): v for n, v in columns.constant_values().items()}
                    if membership:
                        constants[len(names)] = density_input
                    variable, weight_t, bias = self.model.fold_inputs(constants)
                    variable_names = [names[j] for j in variable]
                for start in range(0, layer.numel, self.batch_size):
                    stop = min(start + self.batch_size, layer.numel)
                    if fold:
                        chunk = columns.rows(start, stop, out=buffer, names=variable_names)
                        flat[start:stop] = self.model.predict_folded(chunk, weight_t, bias)
                    else:
                        columns.rows(start, stop, out=buffer)
                        if membership:
                            buffer[: stop - start, len(names)] = density_input
                        flat[start:stop] = self.model.predict(buffer[: stop - start], stop - start)
                param = context.params[layer.name].param
                scores[layer.name] = flat.reshape(param.shape).to(param.device)
                bar.update(1)
        finally:
            bar.close()
            if prefetch:
                torch.set_num_threads(threads)
        logger.info(
            "%s: %d tensors, %d weights scored in %.1f s", self.name, len(scores),
            sum(s.numel() for s in scores.values()), time.perf_counter() - started,
        )
        return scores

    def batches_used(self, num_batches: int) -> int:
        # The predictor's features were built with its own batch count; prune_at_init's num_batches does not apply.
        if not self.needs_data:
            return 0
        return self.num_batches or self.model.config.feature_num_batches

    def default_budgets(self) -> Any:
        """The predictor's learned layer budgets when it has a budget model, else one global threshold."""
        return LearnedAllocation(self.model) if self.model.config.budget_model else "global"

    def metadata(self) -> dict[str, Any]:
        return {"predictor": str(self.model.name_or_path or "")}


@register_criterion
@dataclass
class AutoSPaperCriterion(AutoSCriterion):
    """The paper-faithful AutoS criterion: the predictor's scores under one global threshold, no layer budgets.

    Use it with a predictor trained the paper's way (``feature_set="paper"``: raw ``w0`` and ``g0``; target the
    surviving score; MSE) to reproduce AutoSparse (arXiv 2408.14757) as published.
    """

    name = "autos_paper"
    writes_weights = False

    def default_budgets(self) -> Any:
        return "global"
