"""The conformance zoo's architectures: real model code built from configs at tiny sizes, offline.

Every entry builds a freshly initialized model (``pretrained=False``, no download) and random batches in the form
its family is fed (``autosparse_hf/families``): timm classifiers take ``pixel_values`` (3x32x32 here) and are scored
with cross-entropy on ``labels``; transformers text models take ``input_ids`` and compute their own loss from
``labels`` (the class for sequence classification, the ids themselves for causal LMs, target ids for T5); ViT takes
``pixel_values``; plain torch modules take the input tensor alone.

timm CNNs keep their published widths and depths (what a user builds) with a 10-class head; the transformer-style
models (MLP-Mixer, ViT, the transformers configs) are shrunk to a few narrow layers, since their structure, not their
width, is what the zoo exercises. ``benchmarks/zoo_collapse.py`` reuses these builders.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

NUM_CLASSES = 10
IMAGE_SIZE = 32
BATCH_SIZE = 8
SEQ_LEN = 16
VOCAB = 128

Batch = dict[str, torch.Tensor]


@dataclass(frozen=True)
class ZooModel:
    """One zoo architecture.

    Attributes:
        name: Short id (test ids, table rows).
        family: ``"timm"``, ``"transformers"`` or ``"torch"`` (for the tables; the library finds the adapter itself).
        build: ``build()`` returns the model, freshly initialized with a fixed seed.
        make_batch: ``make_batch(generator)`` returns one batch dict.
        input_key: The key of the model's single input tensor (a tuple batch is ``(batch[input_key], labels)``).
        slow: Marked ``slow`` in the tests (still in the default run).
        notes: What the architecture exercises.
    """

    name: str
    family: str
    build: Callable[[], nn.Module]
    make_batch: Callable[[torch.Generator], Batch]
    input_key: str
    slow: bool = False
    notes: str = ""

    def batches(self, n: int = 1, seed: int = 0) -> list[Batch]:
        """``n`` random batch dicts, the same for the same ``seed``."""
        generator = torch.Generator().manual_seed(seed)
        return [self.make_batch(generator) for _ in range(n)]

    def tuple_batches(self, n: int = 1, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The same batches as ``(inputs, labels)`` tuples, as a ``TensorDataset`` loader yields them."""
        return [(b[self.input_key], b["labels"]) for b in self.batches(n, seed)]


def _seeded(build: Callable[[], nn.Module], seed: int = 0) -> Callable[[], nn.Module]:
    """``build`` run under a fixed torch seed, without touching the caller's random state."""

    def seeded() -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return build()

    return seeded


# ------------------------------------------------------------------------------------------------------------ batches
def image_batch(generator: torch.Generator, channels: int = 3, size: int = IMAGE_SIZE) -> Batch:
    return {
        "pixel_values": torch.randn(BATCH_SIZE, channels, size, size, generator=generator),
        "labels": torch.randint(0, NUM_CLASSES, (BATCH_SIZE,), generator=generator),
    }


def flat_batch(generator: torch.Generator, features: int = 3 * IMAGE_SIZE * IMAGE_SIZE) -> Batch:
    return {
        "inputs": torch.randn(BATCH_SIZE, features, generator=generator),
        "labels": torch.randint(0, NUM_CLASSES, (BATCH_SIZE,), generator=generator),
    }


def plain_image_batch(generator: torch.Generator) -> Batch:
    batch = image_batch(generator)
    return {"inputs": batch["pixel_values"], "labels": batch["labels"]}


def _ids(generator: torch.Generator, batch: int = 4, length: int = SEQ_LEN) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, length), generator=generator)


def classification_text_batch(generator: torch.Generator) -> Batch:
    ids = _ids(generator)
    return {"input_ids": ids, "labels": torch.randint(0, 2, (ids.shape[0],), generator=generator)}


def causal_lm_batch(generator: torch.Generator) -> Batch:
    ids = _ids(generator)
    return {"input_ids": ids, "labels": ids.clone()}  # the model shifts them itself


def seq2seq_batch(generator: torch.Generator) -> Batch:
    # T5 builds its decoder inputs from the labels (shifted right), so one input tensor and labels feed it.
    return {"input_ids": _ids(generator), "labels": _ids(generator, length=SEQ_LEN // 2)}


# ---------------------------------------------------------------------------------------------------------- builders
def timm_model(name: str, **kwargs: Any) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import timm

        return timm.create_model(name, pretrained=False, num_classes=NUM_CLASSES, **kwargs)

    return _seeded(build)


def tiny_mixer() -> nn.Module:
    """timm's MLP-Mixer code at 2 blocks of width 64 on 8x8 patches. ``create_model("mixer_s16_224", ...)`` fixes
    depth, width and patch size itself, so the (long-stable) builder it calls is used to keep a timm model with its
    ``pretrained_cfg``, which is how the timm family is recognised."""
    from timm.models.mlp_mixer import _create_mixer

    return _create_mixer("mixer_s16_224", pretrained=False, num_classes=NUM_CLASSES, img_size=IMAGE_SIZE,
                         patch_size=8, num_blocks=2, embed_dim=64)


def transformers_model(config_class: str, model_class: str, **config: Any) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import transformers

        cfg = getattr(transformers, config_class)(**config)
        return getattr(transformers, model_class)(cfg)

    return _seeded(build)


def sequential_mlp() -> nn.Module:
    return nn.Sequential(
        nn.Flatten(), nn.Linear(3 * IMAGE_SIZE * IMAGE_SIZE, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(),
        nn.Linear(64, NUM_CLASSES),
    )


def small_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(64, NUM_CLASSES),
    )


def lenet300100() -> nn.Module:
    return nn.Sequential(
        nn.Flatten(), nn.Linear(3 * IMAGE_SIZE * IMAGE_SIZE, 300), nn.ReLU(), nn.Linear(300, 100), nn.ReLU(),
        nn.Linear(100, NUM_CLASSES),
    )


_TINY_TEXT = {"vocab_size": VOCAB}
_BERT = {**_TINY_TEXT, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64,
         "max_position_embeddings": 64, "num_labels": 2}
_GPT2 = {**_TINY_TEXT, "n_embd": 32, "n_layer": 2, "n_head": 4, "n_positions": 64, "bos_token_id": 0, "eos_token_id": 0}
_LLAMA = {**_TINY_TEXT, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
          "num_key_value_heads": 2, "max_position_embeddings": 64}
_T5 = {**_TINY_TEXT, "d_model": 32, "d_kv": 8, "d_ff": 64, "num_layers": 2, "num_decoder_layers": 2, "num_heads": 4,
       "decoder_start_token_id": 0, "pad_token_id": 0}
_ROBERTA = {**_BERT, "pad_token_id": 1, "bos_token_id": 0, "eos_token_id": 2}
_BART = {**_TINY_TEXT, "d_model": 32, "encoder_layers": 2, "decoder_layers": 2, "encoder_attention_heads": 4,
         "decoder_attention_heads": 4, "encoder_ffn_dim": 64, "decoder_ffn_dim": 64, "max_position_embeddings": 64,
         "pad_token_id": 1, "bos_token_id": 0, "eos_token_id": 2, "decoder_start_token_id": 2,
         "forced_eos_token_id": None}
_VIT = {"image_size": IMAGE_SIZE, "patch_size": 8, "num_channels": 3, "hidden_size": 32, "num_hidden_layers": 2,
        "num_attention_heads": 4, "intermediate_size": 64, "num_labels": NUM_CLASSES}

ZOO: list[ZooModel] = [
    # timm CNNs, published widths and depths, 10-class head, 32x32 inputs.
    ZooModel("resnet10t", "timm", timm_model("resnet10t"), image_batch, "pixel_values",
             notes="residual, deep stem, zero-initialised last BN"),
    ZooModel("resnet18", "timm", timm_model("resnet18"), image_batch, "pixel_values", slow=True,
             notes="residual, zero-initialised last BN"),
    ZooModel("mobilenetv3_small_050", "timm", timm_model("mobilenetv3_small_050"), image_batch, "pixel_values",
             notes="depthwise-separable, SE, hard-swish / hard-sigmoid"),
    ZooModel("mobilenetv3_large_075", "timm", timm_model("mobilenetv3_large_075"), image_batch, "pixel_values",
             notes="depthwise-separable, SE, hard-swish / hard-sigmoid"),
    ZooModel("efficientnet_b0", "timm", timm_model("efficientnet_b0"), image_batch, "pixel_values", slow=True,
             notes="MBConv, SE, SiLU"),
    ZooModel("tinynet_e", "timm", timm_model("tinynet_e"), image_batch, "pixel_values",
             notes="EfficientNet-style, scaled down"),
    ZooModel("regnetx_002", "timm", timm_model("regnetx_002"), image_batch, "pixel_values",
             notes="grouped convolutions"),
    ZooModel("ghostnet_050", "timm", timm_model("ghostnet_050"), image_batch, "pixel_values",
             notes="ghost modules, SE, hard-sigmoid"),
    ZooModel("lcnet_050", "timm", timm_model("lcnet_050"), image_batch, "pixel_values",
             notes="depthwise-separable, hard-swish"),
    ZooModel("densenet121", "timm", timm_model("densenet121"), image_batch, "pixel_values", slow=True,
             notes="121 layers deep, dense concatenation"),
    ZooModel("mobilevit_xxs", "timm", timm_model("mobilevit_xxs"), image_batch, "pixel_values",
             notes="convolution + transformer hybrid, SiLU"),
    ZooModel("convnext_atto", "timm", timm_model("convnext_atto"), image_batch, "pixel_values",
             notes="LayerNorm, 7x7 depthwise, layer scale"),
    ZooModel("mixer_tiny", "timm",
             _seeded(tiny_mixer), image_batch, "pixel_values", notes="MLP-Mixer, 2 blocks, width 64, 16 patches"),
    ZooModel("vit_tiny", "timm",
             timm_model("test_vit", img_size=IMAGE_SIZE),
             image_batch, "pixel_values", notes="timm ViT (test_vit: 6 blocks, width 64), 4 patches"),
    # transformers, built from configs.
    ZooModel("bert", "transformers", transformers_model("BertConfig", "BertForSequenceClassification", **_BERT),
             classification_text_batch, "input_ids", notes="encoder, sequence classification"),
    ZooModel("roberta_mlm", "transformers",
             transformers_model("RobertaConfig", "RobertaForMaskedLM", **_ROBERTA), causal_lm_batch, "input_ids",
             notes="encoder, masked-LM head tied to the embedding"),
    ZooModel("gpt2", "transformers", transformers_model("GPT2Config", "GPT2LMHeadModel", **_GPT2),
             causal_lm_batch, "input_ids", notes="decoder, Conv1D, tied LM head"),
    ZooModel("llama", "transformers", transformers_model("LlamaConfig", "LlamaForCausalLM", **_LLAMA),
             causal_lm_batch, "input_ids", notes="decoder, RMSNorm, gated MLP, GQA"),
    ZooModel("t5", "transformers", transformers_model("T5Config", "T5ForConditionalGeneration", **_T5),
             seq2seq_batch, "input_ids", notes="encoder-decoder, relative attention"),
    ZooModel("bart", "transformers", transformers_model("BartConfig", "BartForConditionalGeneration", **_BART),
             seq2seq_batch, "input_ids", notes="encoder-decoder, learned positions"),
    ZooModel("vit_hf", "transformers", transformers_model("ViTConfig", "ViTForImageClassification", **_VIT),
             image_batch, "pixel_values", notes="transformers ViT, pixel_values"),
    # plain torch.
    ZooModel("mlp", "torch", _seeded(sequential_mlp), flat_batch, "inputs", notes="nn.Sequential MLP"),
    ZooModel("lenet300100", "torch", _seeded(lenet300100), plain_image_batch, "inputs",
             notes="LeNet-300-100 on flattened 3x32x32"),
    ZooModel("small_cnn", "torch", _seeded(small_cnn), plain_image_batch, "inputs",
             notes="nn.Sequential conv-BN-ReLU"),
]

ZOO_BY_NAME: dict[str, ZooModel] = {entry.name: entry for entry in ZOO}
