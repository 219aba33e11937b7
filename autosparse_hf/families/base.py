"""Model families: what is prunable in a model and how to feed it.

Every stage of autosparse_hf is keyed by the fully qualified parameter name of ``model.named_parameters()``. A
*family* adapter knows, for one kind of model (plain torch, timm, transformers text, transformers vision), how to
build example inputs, the all-ones input SynFlow needs, and how to turn a batch into a loss. Which parameters are
prunable is the same rule for every family (weights of linear and convolution layers, first and last included, as
in AutoSparse, arXiv 2408.14757), refined by include/exclude name patterns.
"""

from __future__ import annotations

import fnmatch
import inspect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

# Module types whose ``weight`` is prunable by default. transformers' GPT-2 uses ``Conv1D`` (a linear layer with a
# transposed weight); it is matched by class name so that transformers stays an optional import here.
PRUNABLE_MODULE_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
PRUNABLE_MODULE_CLASS_NAMES: frozenset[str] = frozenset({"Conv1D"})

# Keys a batch may carry the model input under, in order of preference.
INPUT_KEYS: tuple[str, ...] = ("pixel_values", "input_ids", "inputs_embeds", "input_values", "x", "inputs")


def name_patterns(value: Any, name: str) -> list[str]:
    """``include`` / ``exclude`` as a list of parameter-name patterns: a single string (a YAML scalar, a plain
    argument) is one pattern, never a sequence of one-character patterns; anything but strings is a ``ValueError``
    naming the parameter."""
    if isinstance(value, str):
        return [value]
    if value is None:
        return []
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{name} must be parameter-name patterns (strings, e.g. ['*.fc.weight']), got {value!r}")
    return list(value)


def _matches_any(name: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)


def layer_kind(module: nn.Module) -> str:
    """Return ``"linear"`` or ``"conv"`` for a prunable module (``"other"`` for anything included by pattern)."""
    if isinstance(module, nn.Linear) or type(module).__name__ in PRUNABLE_MODULE_CLASS_NAMES:
        return "linear"
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        return "conv"
    if isinstance(module, nn.Embedding):
        return "embedding"
    return "other"


@dataclass(frozen=True)
class PrunableParameter:
    """One prunable weight tensor and what the rest of the library needs to know about its layer.

    Attributes:
        name: Fully qualified name in ``model.named_parameters()``.
        param: The parameter itself.
        module_name: Name of the module that owns it.
        kind: ``"linear"``, ``"conv"``, ``"embedding"`` or ``"other"``.
        fan_in: Inputs feeding one output unit (``in_features`` x kernel size for convolutions).
        fan_out: Output units (rows or output channels).
        depth: Position among the prunable tensors, 0 for the first.
        transposed: True when the weight is stored (in, out), as GPT-2's ``Conv1D`` does; else (out, in, ...).
    """

    name: str
    param: nn.Parameter
    module_name: str
    kind: str
    fan_in: int
    fan_out: int
    depth: int
    transposed: bool = False


def _fans(module: nn.Module, param: torch.Tensor) -> tuple[int, int]:
    if type(module).__name__ in PRUNABLE_MODULE_CLASS_NAMES:  # GPT-2 Conv1D stores weight as (in, out)
        return int(param.shape[0]), int(param.shape[1])
    if param.dim() < 2:
        return int(param.numel()), 1
    receptive = int(param[0, 0].numel())
    return int(param.shape[1]) * receptive, int(param.shape[0])


def get_prunable_parameters(
    model: nn.Module,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
) -> dict[str, PrunableParameter]:
    """List the prunable weights of a model, keyed by fully qualified parameter name.

    Default: the ``weight`` of every linear and convolution layer (GPT-2's ``Conv1D`` included), first and last
    layer included; biases, normalization parameters and embeddings are excluded. ``include`` adds parameters whose
    name matches one of the shell-style patterns (e.g. ``"*.wte.weight"``); ``exclude`` removes matching ones and
    wins over both. A tied parameter matches a pattern under any of its names (``"lm_head.weight"`` selects GPT-2's
    tied embedding). Parameters shared between modules (GPT-2's tied input embedding and LM head) appear once, under
    the name ``named_parameters()`` reports first, so they share one mask and count once.

    Args:
        model: Any ``torch.nn.Module``.
        include: Extra name patterns to prune.
        exclude: Name patterns never to prune.

    Raises:
        ValueError: If no parameter is prunable; the message names the model class and the patterns.
    """
    include = name_patterns(include, "include")
    exclude = name_patterns(exclude, "exclude")
    # Every name of every parameter: a tied tensor (GPT-2's wte / lm_head) matches a pattern under any of its names.
    aliases: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        aliases.setdefault(id(param), []).append(name)
    result: dict[str, PrunableParameter] = {}
    for name, param in model.named_parameters():  # removes duplicates (tied weights) itself
        module_name = name.rsplit(".", 1)[0] if "." in name else ""
        module = model.get_submodule(module_name) if module_name else model
        is_default = name.endswith("weight") and name.rsplit(".", 1)[-1] == "weight" and (
            isinstance(module, PRUNABLE_MODULE_TYPES) or type(module).__name__ in PRUNABLE_MODULE_CLASS_NAMES
        )
        names = aliases[id(param)]
        chosen = (is_default or any(_matches_any(n, include) for n in names)) and not any(
            _matches_any(n, exclude) for n in names
        )
        if not chosen:
            continue
        fan_in, fan_out = _fans(module, param)
        result[name] = PrunableParameter(
            name=name,
            param=param,
            module_name=module_name,
            kind=layer_kind(module),
            fan_in=fan_in,
            fan_out=fan_out,
            depth=len(result),
            transposed=type(module).__name__ in PRUNABLE_MODULE_CLASS_NAMES,
        )
    if not result:
        raise ValueError(
            f"{type(model).__name__} has no prunable parameters (default: weights of nn.Linear/nn.Conv*/Conv1D "
            f"layers; include={include!r}, exclude={exclude!r})."
        )
    return result


def model_device(model: nn.Module) -> torch.device:
    for param in model.parameters():
        return param.device
    return torch.device("cpu")


def model_dtype(model: nn.Module) -> torch.dtype:
    """The floating dtype of the model's first floating parameter (the default dtype if it has none)."""
    for param in model.parameters():
        if param.is_floating_point():
            return param.dtype
    return torch.get_default_dtype()


def move_batch(batch: Mapping[str, Any], device: torch.device, dtype: torch.dtype | None = None) -> dict[str, Any]:
    """``batch`` on ``device``; with ``dtype``, floating tensors (pixels, embeddings) are cast to it too, so a float32
    batch feeds a half-precision model and the reverse (integer ids and labels keep their dtype)."""
    moved = {}
    for key, value in batch.items():
        if isinstance(value, torch.Tensor):
            value = value.to(device, dtype=dtype) if dtype is not None and value.is_floating_point() else value.to(device)
        moved[key] = value
    return moved


def as_batch_dict(batch: Any, input_name: str) -> dict[str, Any]:
    """A batch as the dict every family works on.

    Accepted, as users have them: a mapping (a dict, a ``transformers.BatchEncoding``), an ``(inputs, labels)`` tuple
    or list (a ``TensorDataset`` through a ``DataLoader``), an ``(inputs,)`` tuple, or a bare input tensor (enough for
    data-free criteria). The input goes under ``input_name`` (the key the model family feeds), labels under
    ``labels``.

    Raises:
        TypeError: anything else, naming the type received.
    """
    if isinstance(batch, Mapping):
        return dict(batch)
    if isinstance(batch, torch.Tensor):
        return {input_name: batch}
    if isinstance(batch, (tuple, list)) and 1 <= len(batch) <= 2 and all(isinstance(v, torch.Tensor) for v in batch):
        return {input_name: batch[0], "labels": batch[1]} if len(batch) == 2 else {input_name: batch[0]}
    described = type(batch).__name__
    if isinstance(batch, (tuple, list)):
        described += f" of {len(batch)} items (" + ", ".join(type(v).__name__ for v in batch) + ")"
    raise TypeError(
        f"cannot use a batch of type {described}: give a dict (e.g. {{'{input_name}': x, 'labels': y}}), an "
        "(inputs, labels) tuple of tensors, or an input tensor"
    )


def input_key(batch: Mapping[str, Any]) -> str:
    """The key under which a batch carries the model input."""
    for key in INPUT_KEYS:
        if key in batch:
            return key
    raise KeyError(f"batch has none of the input keys {INPUT_KEYS}; it has {sorted(batch)}")


def _accepts_kwargs(model: nn.Module, keys: Sequence[str]) -> bool:
    try:
        signature = inspect.signature(model.forward)
    except (TypeError, ValueError):
        return False
    params = signature.parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return True
    return all(k in params for k in keys)


def extract_logits(outputs: Any) -> torch.Tensor:
    """The main output tensor of a forward pass (``logits`` of a ModelOutput or dict, else the tensor itself)."""
    if isinstance(outputs, torch.Tensor):
        return outputs
    if isinstance(outputs, Mapping):
        for key in ("logits", "last_hidden_state", "pooler_output"):
            if outputs.get(key) is not None:
                return outputs[key]
        return next(v for v in outputs.values() if isinstance(v, torch.Tensor))
    if isinstance(outputs, (tuple, list)):
        return outputs[0]
    raise TypeError(f"cannot find an output tensor in {type(outputs).__name__}")


class ModelFamily:
    """How to feed one kind of model. Subclasses override what differs; the defaults fit plain torch modules.

    A batch is a dict in Hugging Face style (``{"pixel_values": ..., "labels": ...}``). A model that accepts the
    batch keys as keyword arguments is called with ``model(**batch)``; one that does not (a timm model, a plain
    ``nn.Sequential``) is called with the input tensor alone and the loss is the cross-entropy with ``labels``.
    """

    name: str = "torch"
    # The key a tuple or tensor batch's input goes under (see ``as_batch_dict``).
    input_name: str = "inputs"

    @classmethod
    def matches(cls, model: nn.Module) -> bool:
        return True

    def batch(self, model: nn.Module, batch: Any) -> dict[str, Any]:
        """``batch`` (any accepted form, see ``as_batch_dict``) as a dict on the model's device and dtype."""
        return move_batch(as_batch_dict(batch, self.input_name), model_device(model), model_dtype(model))

    def forward(self, model: nn.Module, batch: Any) -> Any:
        batch = self.batch(model, batch)
        if _accepts_kwargs(model, list(batch)):
            return model(**batch)
        return model(batch[input_key(batch)])

    def loss(self, model: nn.Module, batch: Any) -> torch.Tensor:
        """Training loss of ``model`` on ``batch``: the model's own ``loss`` output, else cross-entropy."""
        batch = self.batch(model, batch)
        outputs = self.forward(model, batch)
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else getattr(outputs, "loss", None)
        if loss is not None:
            return loss
        if "labels" not in batch:
            raise ValueError("the model returned no loss and the batch has no 'labels' to compute one")
        logits = extract_logits(outputs)
        labels = batch["labels"].to(logits.device)
        return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))

    def input_shape(self, model: nn.Module) -> tuple[int, ...] | None:
        """Shape of one input example (no batch dimension), when the model says it."""
        shape = getattr(model, "example_input_shape", None)
        return tuple(shape) if shape is not None else None

    def example_inputs(self, model: nn.Module, batch_size: int = 2) -> dict[str, torch.Tensor]:
        """Random example inputs for a forward pass, as a batch dict."""
        shape = self.input_shape(model)
        if shape is None:
            raise ValueError(
                f"cannot build example inputs for {type(model).__name__}: give the model an "
                "`example_input_shape` attribute (shape of one example without the batch dimension) or pass data."
            )
        return {"pixel_values": torch.randn(batch_size, *shape, device=model_device(model))}

    def synflow_inputs(self, model: nn.Module, batch: Any = None) -> dict[str, torch.Tensor]:
        """The all-ones input of SynFlow (Tanaka et al. 2020): one example, every input value 1."""
        if batch is not None:
            batch = as_batch_dict(batch, self.input_name)
            key = input_key(batch)
            value = batch[key]
            return {key: torch.ones_like(value[:1], dtype=model_dtype(model)).to(model_device(model))}
        inputs = self.example_inputs(model, batch_size=1)
        return {k: torch.ones_like(v) for k, v in inputs.items()}

    def synflow_output(self, model: nn.Module, inputs: Mapping[str, Any]) -> torch.Tensor:
        """Forward the SynFlow input and return the output tensor whose sum is R."""
        return extract_logits(self.forward(model, inputs))


_FAMILIES: list[type[ModelFamily]] = []


def register_family(family: type[ModelFamily]) -> type[ModelFamily]:
    """Register a family adapter; later registrations are tried first, the plain torch family last."""
    _FAMILIES.insert(0, family)
    return family


def get_family(model: nn.Module) -> ModelFamily:
    """The adapter for ``model``: the first registered family that matches, else the plain torch family."""
    for family in _FAMILIES:
        if family.matches(model):
            return family()
    return ModelFamily()
