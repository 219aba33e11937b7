"""Per-weight features at initialization, one implementation for score datasets and for pruning.

AutoSparse (arXiv 2408.14757) predicts how long a weight survives iterative rewind pruning from what is known at
initialization: the initial weight ``w0`` and the initial gradient ``g0``. Here ``g0`` is averaged over a fixed
number of batches (not summed over the training set as in the reference code), in eval mode. Layer context
(kind, fan-in, fan-out, relative depth, size) describes where the weight sits, which is what lets a predictor move
between architectures. The IRP callback records these when it starts and AutoS computes them, with this same code,
for the model it prunes.

Unit-level features describe the two units a weight connects: the spread of its input unit's activation over the
feature batches (for the first layer: how informative the pixel is), and the gradient norms of its input unit's
column and output unit's row. What transfers between initializations is structure (which input units and layers
keep weights), and these are its cheapest init-time signals.

Modules:

- ``context``: :class:`LayerContext` (where a tensor sits) and the unit each weight connects.
- ``initial``: :class:`InitialFeatures` (``w0``, ``g0``, input spread) and :func:`compute_initial_features`.
- ``statistics``: the registry of per-tensor statistics (scales, ranks, unit norms) columns are computed from.
- ``columns``: the registry of feature columns (:func:`register_feature_column`) and ``FEATURE_SETS``.
- ``rows``: feature rows of a tensor (:class:`LayerFeatureColumns`), in chunks, tensor by tensor.
"""

from .columns import (
    FEATURE_COLUMNS,
    FEATURE_SETS,
    UNIT_FEATURES,
    FeatureColumn,
    feature_columns,
    feature_names,
    needs_unit_columns,
    register_feature_column,
)
from .context import LayerContext, layer_contexts, unit_indices
from .initial import (
    FEATURE_SCHEMA_VERSION,
    InitialFeatures,
    compute_initial_features,
    feature_tensors,
    features_from_tensors,
)
from .initial import _InputStatistics as _InputStatistics
from .rows import (
    LayerFeatureColumns,
    iter_feature_columns,
    iter_feature_matrices,
    layer_feature_matrix,
    with_density,
)
from .statistics import TENSOR_STATISTICS, LayerStatistics, TensorStatistic, register_tensor_statistic
from .statistics import _rank01 as _rank01

# _InputStatistics and _rank01 stay importable from here (tests import them) without being public.
__all__ = [
    "FEATURE_COLUMNS",
    "FEATURE_SCHEMA_VERSION",
    "FEATURE_SETS",
    "TENSOR_STATISTICS",
    "UNIT_FEATURES",
    "FeatureColumn",
    "InitialFeatures",
    "LayerContext",
    "LayerFeatureColumns",
    "LayerStatistics",
    "TensorStatistic",
    "compute_initial_features",
    "feature_columns",
    "feature_names",
    "feature_tensors",
    "features_from_tensors",
    "iter_feature_columns",
    "iter_feature_matrices",
    "layer_contexts",
    "layer_feature_matrix",
    "needs_unit_columns",
    "register_feature_column",
    "register_tensor_statistic",
    "unit_indices",
    "with_density",
]
