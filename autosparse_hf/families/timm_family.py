"""The timm family: any ``timm`` model (built with ``pretrained=False``), bare or wrapped for the HF Trainer."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from transformers.modeling_outputs import SequenceClassifierOutput

from .base import ModelFamily, register_family


def _is_timm_model(model: nn.Module) -> bool:
    return type(model).__module__.startswith("timm.") and hasattr(model, "pretrained_cfg")


class TimmForImageClassification(nn.Module):
    """Wrap a timm classifier so that the Hugging Face ``Trainer`` can train it.

    The Trainer calls ``model(pixel_values=..., labels=...)`` and expects a loss in the output; timm models take one
    tensor and return logits. Parameter names gain the prefix ``model.``.

    Example:
        ```python
        >>> model = TimmForImageClassification.from_name("resnet18", num_classes=10, in_chans=1)
        ```
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    @classmethod
    def from_name(cls, name: str, **kwargs: Any) -> TimmForImageClassification:
        """Build ``timm.create_model(name, pretrained=False, **kwargs)`` wrapped (no weights are downloaded)."""
        import timm

        return cls(timm.create_model(name, pretrained=False, **kwargs))

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None) -> SequenceClassifierOutput:
        logits = self.model(pixel_values)
        loss = nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=logits)


@register_family
class TimmFamily(ModelFamily):
    """timm models: the input shape comes from ``pretrained_cfg["input_size"]`` (channels, height, width)."""

    name = "timm"
    input_name = "pixel_values"

    @classmethod
    def matches(cls, model: nn.Module) -> bool:
        return _is_timm_model(model) or (
            isinstance(model, TimmForImageClassification) and _is_timm_model(model.model)
        )

    def input_shape(self, model: nn.Module) -> tuple[int, ...] | None:
        explicit = getattr(model, "example_input_shape", None)
        if explicit is not None:
            return tuple(explicit)
        inner = model.model if isinstance(model, TimmForImageClassification) else model
        cfg: Mapping[str, Any] = getattr(inner, "pretrained_cfg", {}) or {}
        size = cfg.get("input_size")
        if size is None:
            return None
        in_chans = getattr(inner, "in_chans", None) or size[0]
        return (int(in_chans), *(int(s) for s in size[1:]))
