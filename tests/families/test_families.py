"""Model families (``autosparse_hf.families``): prunable sets, tied weights, inputs, and every criterion per family.

All models are built from configs (transformers) or with ``pretrained=False`` (timm); nothing is downloaded.
"""

from __future__ import annotations

import fnmatch

import pytest
import timm
import torch
from torch import nn
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    GPT2Config,
    GPT2LMHeadModel,
    ViTConfig,
    ViTForImageClassification,
)

from autosparse_hf import (
    TimmForImageClassification,
    compute_scores,
    get_family,
    get_prunable_parameters,
    list_criteria,
    prune_at_init,
    select_masks,
)

BASELINES = ("grasp", "magnitude", "random", "snip", "synflow")
NUM_CLASSES = 3




class PlainNet(nn.Module):
    example_input_shape = (1, 8, 8)

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.norm = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 6 * 6, NUM_CLASSES)

    def forward(self, pixel_values, labels=None):
        logits = self.fc(torch.relu(self.norm(self.conv(pixel_values))).flatten(1))
        loss = nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return {"loss": loss, "logits": logits}


def build_timm() -> nn.Module:
    assert "test_resnet" in timm.list_models("test_*")
    return timm.create_model("test_resnet", pretrained=False, num_classes=NUM_CLASSES, in_chans=1)


def build_bert() -> nn.Module:
    config = BertConfig(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
        max_position_embeddings=32,
        num_labels=NUM_CLASSES,
    )
    return BertForSequenceClassification(config)


def build_gpt2() -> GPT2LMHeadModel:
    config = GPT2Config(
        vocab_size=60,
        n_positions=16,
        n_embd=16,
        n_layer=2,
        n_head=2,
        bos_token_id=0,
        eos_token_id=0,
        tie_word_embeddings=True,
    )
    return GPT2LMHeadModel(config)


def build_vit() -> nn.Module:
    config = ViTConfig(
        image_size=28,
        patch_size=7,
        num_channels=1,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=37,
        num_labels=NUM_CLASSES,
    )
    return ViTForImageClassification(config)


BUILDERS = {
    "plain": (PlainNet, "torch"),
    "timm": (build_timm, "timm"),
    "timm-wrapped": (lambda: TimmForImageClassification(build_timm()), "timm"),
    "bert": (build_bert, "transformers-text"),
    "gpt2": (build_gpt2, "transformers-text"),
    "vit": (build_vit, "transformers-vision"),
}


def build(kind: str) -> nn.Module:
    torch.manual_seed(0)
    return BUILDERS[kind][0]()


def batches_for(kind: str, model: nn.Module) -> list[dict[str, torch.Tensor]]:
    """Two small batches with labels; timm images are 32x32 (the net is size-agnostic) to stay fast."""
    generator = torch.Generator().manual_seed(1)
    family = get_family(model)
    result = []
    for _ in range(2):
        if kind.startswith("timm"):
            batch = {"pixel_values": torch.randn(2, 1, 32, 32, generator=generator)}
        else:
            batch = family.example_inputs(model, batch_size=2)
        if kind == "gpt2":
            batch["labels"] = batch["input_ids"].clone()
        else:
            batch["labels"] = torch.randint(0, NUM_CLASSES, (2,), generator=generator)
        result.append(batch)
    return result


PRUNABLE_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def expected_default_names(model: nn.Module) -> list[str]:
    """Weights of linear/conv/Conv1D modules, enumerated independently of the library."""
    names = []
    for module_name, module in model.named_modules():
        if isinstance(module, PRUNABLE_TYPES) or type(module).__name__ == "Conv1D":
            names.append(f"{module_name}.weight" if module_name else "weight")
    unique = {n for n, _ in model.named_parameters()}  # tied parameters are listed under their first name only
    return [n for n, _ in model.named_parameters() if n in names and n in unique]


@pytest.mark.parametrize("kind", list(BUILDERS))
def test_family_adapter_is_chosen_by_model(kind):
    assert get_family(build(kind)).name == BUILDERS[kind][1]


@pytest.mark.parametrize("kind", list(BUILDERS))
def test_default_prunable_set_is_linear_and_conv_weights_only(kind):
    model = build(kind)
    params = get_prunable_parameters(model)
    assert list(params) == expected_default_names(model)
    modules = dict(model.named_modules())
    for name, info in params.items():
        assert name.endswith(".weight") and info.param is dict(model.named_parameters())[name]
        module = modules[info.module_name]
        assert not isinstance(module, (nn.Embedding, nn.LayerNorm, nn.BatchNorm2d, nn.GroupNorm))
        assert info.kind in ("linear", "conv")
        assert info.fan_in * info.fan_out == info.param.numel()
    assert [p.depth for p in params.values()] == list(range(len(params)))
    if kind == "timm-wrapped":
        assert list(params) == [f"model.{n}" for n in get_prunable_parameters(build("timm"))]
    if kind == "gpt2":
        assert any(type(modules[p.module_name]).__name__ == "Conv1D" for p in params.values())
        conv1d = params["transformer.h.0.mlp.c_fc.weight"]
        assert (conv1d.fan_in, conv1d.fan_out) == (16, 64)  # Conv1D stores (in, out)


def test_tied_gpt2_embedding_is_one_prunable_tensor():
    model = build_gpt2()
    assert model.lm_head.weight is model.transformer.wte.weight
    params = get_prunable_parameters(model, include=["*wte.weight"])
    assert [n for n in params if "wte" in n or "lm_head" in n] == ["transformer.wte.weight"]
    assert params["transformer.wte.weight"].kind == "embedding"
    unique_numel = sum(p.param.numel() for p in params.values())
    assert len({id(p.param) for p in params.values()}) == len(params)

    masks = prune_at_init(model, "magnitude", 0.8, include=["*wte.weight"])
    assert masks.numel == unique_numel
    assert masks.num_kept == round(0.2 * unique_numel)
    assert model.lm_head.weight is model.transformer.wte.weight
    pruned = ~masks["transformer.wte.weight"]
    assert pruned.any()
    assert not model.lm_head.weight[pruned].any()  # the LM head is pruned too: it is the same tensor
    assert model.lm_head.weight[~pruned].all()
    assert masks.metadata["include"] == ["*wte.weight"]


def test_patterns_match_every_name_of_a_tied_parameter():
    model = build_gpt2()
    by_head = get_prunable_parameters(model, include=["lm_head.weight"])
    assert "transformer.wte.weight" in by_head  # the LM head is that tensor, listed once under its first name
    assert "lm_head.weight" not in by_head
    excluded = get_prunable_parameters(model, include=["*wte.weight"], exclude=["lm_head.weight"])
    assert "transformer.wte.weight" not in excluded


def test_include_and_exclude_patterns():
    model = build_bert()
    default = get_prunable_parameters(model)
    with_embeddings = get_prunable_parameters(model, include=["*embeddings.word_embeddings.weight"])
    assert list(with_embeddings)[0] == "bert.embeddings.word_embeddings.weight"
    assert set(with_embeddings) - set(default) == {"bert.embeddings.word_embeddings.weight"}
    no_attention = get_prunable_parameters(model, exclude=["*attention*"])
    assert no_attention and not any(fnmatch.fnmatchcase(n, "*attention*") for n in no_attention)
    assert set(no_attention) < set(default)
    # exclude wins over include
    assert "classifier.weight" not in get_prunable_parameters(model, include=["classifier.*"], exclude=["classifier.*"])


@pytest.mark.parametrize("kind", ["bert", "gpt2", "vit", "timm", "timm-wrapped", "plain"])
def test_example_inputs_and_synflow_inputs_run(kind):
    model = build(kind).eval()
    family = get_family(model)
    inputs = family.example_inputs(model, batch_size=2)
    out = family.synflow_output(model, inputs)
    assert out.shape[0] == 2 and torch.isfinite(out).all()
    ones = family.synflow_inputs(model)
    if kind in ("bert", "gpt2"):
        assert list(ones) == ["inputs_embeds"]
        assert ones["inputs_embeds"].shape == (
            1,
            inputs["input_ids"].shape[1],
            model.get_input_embeddings().embedding_dim,
        )
    else:
        assert list(ones) == ["pixel_values"]
        assert ones["pixel_values"].shape == (1, *inputs["pixel_values"].shape[1:])
    assert all(bool((v == 1).all()) for v in ones.values())
    out = family.synflow_output(model, ones)
    assert out.shape[0] == 1 and torch.isfinite(out).all()
    if kind in ("timm", "timm-wrapped"):
        assert inputs["pixel_values"].shape[1] == 1  # in_chans=1 is honoured
    # With a batch, the SynFlow input copies the batch's shape (sequence length / image size).
    batch = batches_for(kind, model)[0]
    ones = family.synflow_inputs(model, batch)
    key = "inputs_embeds" if kind in ("bert", "gpt2") else "pixel_values"
    reference = batch["input_ids"] if kind in ("bert", "gpt2") else batch["pixel_values"]
    assert ones[key].shape[1] == reference.shape[1] and ones[key].shape[0] == 1


@pytest.mark.parametrize("kind", list(BUILDERS))
def test_loss_of_a_batch(kind):
    model = build(kind).eval()
    loss = get_family(model).loss(model, batches_for(kind, model)[0])
    assert loss.dim() == 0 and torch.isfinite(loss) and loss > 0 and loss.requires_grad


@pytest.mark.parametrize("criterion", BASELINES)
@pytest.mark.parametrize("kind", list(BUILDERS))
def test_every_criterion_prunes_every_family(kind, criterion):
    assert criterion in list_criteria()
    model = build(kind)
    batches = batches_for(kind, model)
    options = {"rounds": 5} if criterion == "synflow" else {}
    params = get_prunable_parameters(model)
    total = sum(p.param.numel() for p in params.values())
    before = {n: p.param.detach().clone() for n, p in params.items()}

    scores = compute_scores(model, criterion, dataloader=batches, num_batches=2, sparsity=0.8, **options)
    assert list(scores) == list(params)
    for name, score in scores.items():
        assert score.shape == params[name].param.shape and torch.isfinite(score).all(), name
    if criterion != "random":
        assert sum(float(s.abs().sum()) for s in scores.values()) > 0

    masks = prune_at_init(model, criterion, 0.8, batches, num_batches=2, criterion_options=options)
    assert masks.num_kept == round(0.2 * total)
    assert masks.metadata["criterion"] == criterion and masks.metadata["model_class"] == type(model).__name__
    # Scoring is deterministic and side-effect free; prune_at_init breaks ties by the initial magnitude.
    expected = select_masks(scores, 0.8, tie_break={n: w.abs() for n, w in before.items()})
    for name in params:
        assert torch.equal(masks[name], expected[name]), name
        weight = params[name].param
        assert not weight[~masks[name]].any()
        assert torch.equal(weight[masks[name]], before[name][masks[name]])


def test_no_prunable_parameters_names_the_model_and_patterns():
    with pytest.raises(ValueError, match="LayerNorm") as info:
        get_prunable_parameters(nn.LayerNorm(4))
    assert "include=[]" in str(info.value) and "exclude=[]" in str(info.value)
    with pytest.raises(ValueError, match="BertForSequenceClassification") as info:
        get_prunable_parameters(build_bert(), include=["*.nothing"], exclude=["*"])
    assert "'*.nothing'" in str(info.value) and "'*'" in str(info.value)
    with pytest.raises(ValueError, match="LayerNorm"):
        prune_at_init(nn.LayerNorm(4), "magnitude", 0.5)


def test_a_single_pattern_string_is_one_pattern_not_characters():
    from torch import nn as _nn

    from autosparse_hf import IRPConfig, get_prunable_parameters

    model = _nn.Sequential(_nn.Linear(4, 3), _nn.LayerNorm(3), _nn.Linear(3, 2))
    assert list(get_prunable_parameters(model, exclude="2.weight")) == ["0.weight"]
    # "*bias" as characters would contain "*", which matches the LayerNorm's weight too.
    assert set(get_prunable_parameters(model, include="*bias")) == {"0.weight", "0.bias", "1.bias", "2.weight", "2.bias"}
    assert IRPConfig(exclude="fc3.weight").exclude == ["fc3.weight"]


@pytest.mark.parametrize("config_class", ["T5Config", "BartConfig"])
def test_encoder_decoders_get_a_synflow_signal_in_the_decoder_too(config_class):
    import transformers

    config = getattr(transformers, config_class)(
        vocab_size=50, d_model=16, d_ff=32, d_kv=4, num_layers=1, num_decoder_layers=1, num_heads=2,
        encoder_layers=1, decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
        encoder_ffn_dim=32, decoder_ffn_dim=32, max_position_embeddings=32, decoder_start_token_id=0, pad_token_id=0,
    )
    model_class = "T5ForConditionalGeneration" if config_class == "T5Config" else "BartForConditionalGeneration"
    model = getattr(transformers, model_class)(config)
    batch = {"input_ids": torch.randint(1, 50, (2, 7)), "labels": torch.randint(1, 50, (2, 5))}
    inputs = get_family(model).synflow_inputs(model, batch)
    assert inputs["inputs_embeds"].shape[1] == 7 and inputs["decoder_inputs_embeds"].shape[1] == 5
    scores = compute_scores(model, "synflow", dataloader=[batch], sparsity=0.5, rounds=2)
    decoder = [n for n in scores if ".decoder." in f".{n}" or n.startswith("decoder.")]
    assert decoder and all(bool(scores[n].gt(0).any()) for n in decoder), decoder
