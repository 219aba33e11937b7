"""Model family adapters; importing this package registers them all."""

from . import timm_family, transformers_text, transformers_vision  # noqa: F401  (registration)
from .base import (
    ModelFamily,
    PrunableParameter,
    as_batch_dict,
    extract_logits,
    get_family,
    get_prunable_parameters,
    input_key,
    layer_kind,
    model_device,
    model_dtype,
    move_batch,
    register_family,
)
from .timm_family import TimmForImageClassification

__all__ = [
    "ModelFamily",
    "PrunableParameter",
    "TimmForImageClassification",
    "as_batch_dict",
    "extract_logits",
    "get_family",
    "get_prunable_parameters",
    "input_key",
    "layer_kind",
    "model_device",
    "model_dtype",
    "move_batch",
    "register_family",
]
