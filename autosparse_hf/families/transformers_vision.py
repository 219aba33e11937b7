"""The transformers vision family: models that take ``pixel_values`` (ViT, ...), built from a config."""

from __future__ import annotations

from typing import Any

from torch import nn
from transformers import PreTrainedModel

from .base import ModelFamily, register_family


@register_family
class TransformersVisionFamily(ModelFamily):
    """Image models of transformers; the input shape is ``(num_channels, image_size, image_size)`` of the config."""

    name = "transformers-vision"
    input_name = "pixel_values"

    @classmethod
    def matches(cls, model: nn.Module) -> bool:
        return isinstance(model, PreTrainedModel) and getattr(model, "main_input_name", "") == "pixel_values"

    def forward(self, model: nn.Module, batch: Any) -> Any:
        return model(**self.batch(model, batch))

    def input_shape(self, model: nn.Module) -> tuple[int, ...] | None:
        config = model.config
        size = config.image_size
        height, width = (size, size) if isinstance(size, int) else tuple(size)
        return (int(config.num_channels), int(height), int(width))
