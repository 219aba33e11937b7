"""The transformers text family: models that take token ids (BERT, GPT-2, ...), built from a config."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel

from .base import ModelFamily, as_batch_dict, extract_logits, model_device, model_dtype, register_family


@register_family
class TransformersTextFamily(ModelFamily):
    """Token-id models. SynFlow's all-ones signal cannot be a token id, so it is fed as ``inputs_embeds``."""

    name = "transformers-text"
    input_name = "input_ids"
    sequence_length: int = 16

    @classmethod
    def matches(cls, model: nn.Module) -> bool:
        return isinstance(model, PreTrainedModel) and getattr(model, "main_input_name", "") == "input_ids"

    def _length(self, model: nn.Module) -> int:
        limit = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", None)
        return min(self.sequence_length, int(limit)) if limit else self.sequence_length

    def forward(self, model: nn.Module, batch: Any) -> Any:
        return model(**self.batch(model, batch))

    def input_shape(self, model: nn.Module) -> tuple[int, ...] | None:
        return (self._length(model),)

    def example_inputs(self, model: nn.Module, batch_size: int = 2) -> dict[str, torch.Tensor]:
        length = self._length(model)
        device = model_device(model)
        ids = torch.randint(0, int(model.config.vocab_size), (batch_size, length), device=device)
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}

    def synflow_inputs(self, model: nn.Module, batch: Any = None) -> dict[str, torch.Tensor]:
        batch = as_batch_dict(batch, self.input_name) if batch is not None else None
        length = batch["input_ids"].shape[1] if batch is not None and "input_ids" in batch else self._length(model)
        hidden = model.get_input_embeddings().embedding_dim
        ones = {"device": model_device(model), "dtype": model_dtype(model)}
        inputs = {"inputs_embeds": torch.ones(1, length, hidden, **ones)}
        if getattr(model.config, "is_encoder_decoder", False):
            # The decoder (T5, BART) needs a signal of its own: without it the model would build decoder inputs from
            # labels or fail, and the decoder's and the head's weights would get no SynFlow signal.
            target = next((batch[k] for k in ("decoder_input_ids", "labels") if batch is not None and k in batch), None)
            decoder_length = target.shape[1] if target is not None and target.dim() == 2 else length
            inputs["decoder_inputs_embeds"] = torch.ones(1, decoder_length, hidden, **ones)
        return inputs

    def synflow_output(self, model: nn.Module, inputs: Mapping[str, Any]) -> torch.Tensor:
        return extract_logits(model(**inputs))
