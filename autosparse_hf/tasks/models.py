"""Small reference models for the built-in tasks, ready for the Hugging Face ``Trainer``.

Every model built here is called as ``model(pixel_values=..., labels=...)`` and returns an output with ``logits``
and, when labels are given, the cross-entropy ``loss``; it also carries ``example_input_shape`` (one example without
the batch dimension), which the model families use to build example and SynFlow inputs without data.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoModelForImageClassification, PretrainedConfig
from transformers.modeling_outputs import SequenceClassifierOutput

from .datasets import TaskInfo, task_info

__all__ = ["LeNet300100", "SmallConvNet", "build_model", "list_models"]


def _classifier_output(logits: torch.Tensor, labels: torch.Tensor | None) -> SequenceClassifierOutput:
    loss = nn.functional.cross_entropy(logits, labels) if labels is not None else None
    return SequenceClassifierOutput(loss=loss, logits=logits)


class LeNet300100(nn.Module):
    """LeNet-300-100: the fully connected network of the pruning literature.

    LeCun et al. 1998; the standard MLP of the lottery-ticket (Frankle & Carbin 2019, arXiv:1803.03635) and SNIP (Lee
    et al. 2019, arXiv:1810.02340) experiments: flatten -> ``fc1`` (300) -> ReLU -> ``fc2`` (100) -> ReLU -> ``fc3``.
    Its parameters are exactly ``fc1.weight, fc1.bias, fc2.weight, fc2.bias, fc3.weight, fc3.bias``.

    Args:
        input_shape: Shape of one example without the batch dimension; any rank, it is flattened.
        num_classes: Number of output logits.

    Example:
        ```python
        >>> import torch
        >>> from autosparse_hf.tasks import LeNet300100
        >>> model = LeNet300100(input_shape=(1, 28, 28), num_classes=10)
        >>> out = model(pixel_values=torch.randn(4, 1, 28, 28), labels=torch.tensor([0, 1, 2, 3]))
        >>> out.logits.shape
        torch.Size([4, 10])
        ```
    """

    def __init__(self, input_shape: Sequence[int] = (1, 28, 28), num_classes: int = 10) -> None:
        super().__init__()
        self.example_input_shape: tuple[int, ...] = tuple(int(s) for s in input_shape)
        self.num_classes = int(num_classes)
        self.fc1 = nn.Linear(math.prod(self.example_input_shape), 300)
        self.fc2 = nn.Linear(300, 100)
        self.fc3 = nn.Linear(100, self.num_classes)

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None) -> SequenceClassifierOutput:
        hidden = torch.flatten(pixel_values, start_dim=1)
        hidden = torch.relu(self.fc1(hidden))
        hidden = torch.relu(self.fc2(hidden))
        return _classifier_output(self.fc3(hidden), labels)


class SmallConvNet(nn.Module):
    """A two-layer convolutional network for small images and 1D signals.

    ``conv1`` (16 channels, kernel 3, padding 1) -> ReLU -> max-pool 2 -> ``conv2`` (32 channels, kernel 3, padding
    1) -> ReLU -> adaptive average pool to a fixed size -> ``fc``. The adaptive pool fixes the classifier's input
    size (512 features) whatever the spatial size, so one architecture serves 28x28 MNIST and 8x8 digits. The input
    rank picks the convolution: ``(C, H, W)`` uses ``Conv2d`` pooled to 4x4, ``(C, L)`` (MNIST-1D) uses ``Conv1d``
    pooled to 16. There is no normalization layer, so SynFlow's all-ones input is scored on the weights alone.

    Args:
        input_shape: ``(channels, height, width)`` or ``(channels, length)``; spatial sizes of at least 2.
        num_classes: Number of output logits.

    Raises:
        ValueError: If ``input_shape`` has another rank or a spatial size below 2.

    Example:
        ```python
        >>> import torch
        >>> from autosparse_hf.tasks import SmallConvNet
        >>> SmallConvNet(input_shape=(1, 40))(torch.randn(2, 1, 40)).logits.shape
        torch.Size([2, 10])
        ```
    """

    def __init__(self, input_shape: Sequence[int] = (1, 28, 28), num_classes: int = 10) -> None:
        super().__init__()
        shape = tuple(int(s) for s in input_shape)
        if len(shape) not in (2, 3) or min(shape[1:]) < 2:
            raise ValueError(
                f"SmallConvNet takes (channels, height, width) or (channels, length) with spatial sizes >= 2, got "
                f"{shape}"
            )
        self.example_input_shape: tuple[int, ...] = shape
        self.num_classes = int(num_classes)
        if len(shape) == 3:
            conv, max_pool, adaptive_pool, pooled = nn.Conv2d, nn.MaxPool2d, nn.AdaptiveAvgPool2d, (4, 4)
        else:
            conv, max_pool, adaptive_pool, pooled = nn.Conv1d, nn.MaxPool1d, nn.AdaptiveAvgPool1d, (16,)
        self.conv1 = conv(shape[0], 16, kernel_size=3, padding=1)
        self.pool1 = max_pool(2)
        self.conv2 = conv(16, 32, kernel_size=3, padding=1)
        self.pool2 = adaptive_pool(pooled)
        self.fc = nn.Linear(32 * math.prod(pooled), self.num_classes)

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None) -> SequenceClassifierOutput:
        hidden = self.pool1(torch.relu(self.conv1(pixel_values)))
        hidden = self.pool2(torch.relu(self.conv2(hidden)))
        return _classifier_output(self.fc(torch.flatten(hidden, start_dim=1)), labels)


_BUILTIN_MODELS: dict[str, Callable[[tuple[int, ...], int], nn.Module]] = {
    "lenet300100": LeNet300100,
    "lenet": LeNet300100,
    "convnet": SmallConvNet,
}


def list_models() -> list[str]:
    """Names [`build_model`] builds itself, sorted; any other string is looked up in timm.

    Example:
        ```python
        >>> from autosparse_hf.tasks import list_models
        >>> list_models()
        ['convnet', 'lenet', 'lenet300100']
        ```
    """
    return sorted(_BUILTIN_MODELS)


def _config_from_path(name_or_config: str | PretrainedConfig) -> str | PretrainedConfig:
    """A transformers config read from a ``.json`` file or a folder holding ``config.json``; anything else as is."""
    if not isinstance(name_or_config, str):
        return name_or_config
    path = Path(name_or_config)
    if (path.suffix == ".json" and path.is_file()) or (path.is_dir() and (path / "config.json").is_file()):
        from transformers import AutoConfig

        # Never run code shipped with a config (auto_map): without this, transformers asks interactively.
        return AutoConfig.from_pretrained(str(path), trust_remote_code=False)
    return name_or_config


def build_model(
    name_or_config: str | PretrainedConfig,
    task_info_or_num_classes: TaskInfo | str | int,
    input_shape: Sequence[int] | None = None,
    seed: int | None = None,
    **timm_kwargs: Any,
) -> nn.Module:
    """Build a freshly initialized classifier for a task.

    - ``"lenet300100"`` / ``"lenet"``: [`LeNet300100`]; ``"convnet"``: [`SmallConvNet`].
    - A path to a transformers ``config.json`` (or a folder holding one): as the config it holds.
    - Any other string: the timm model of that name, ``timm.create_model(name, pretrained=False, num_classes=...,
      in_chans=C)`` (plus ``img_size=(H, W)`` when the model takes it, as ViTs do), wrapped in
      [`~autosparse_hf.families.TimmForImageClassification`]. No weights are downloaded.
    - A ``transformers.PretrainedConfig`` (e.g. ``ViTConfig``): ``AutoModelForImageClassification.from_config`` on a
      copy of the config with ``num_labels`` (and ``id2label`` from the task's class names) set, and
      ``num_channels`` / ``image_size`` set from ``input_shape`` where the config has them.

    The returned model has an ``example_input_shape`` attribute.

    Args:
        name_or_config: A name from [`list_models`], a timm model name, or a transformers config.
        task_info_or_num_classes: A [`TaskInfo`], a built-in task name, or the number of classes.
        input_shape: Shape of one example without the batch dimension; defaults to the task's. Required when only
            a number of classes is given.
        seed: If given, the initialization is reproducible: the model is built after ``torch.manual_seed(seed)``
            inside ``torch.random.fork_rng``, so the same seed gives the same weights and the caller's torch random
            stream is left as it was (construction happens on the CPU, whose generator is the one forked).
        timm_kwargs: Extra arguments of ``timm.create_model`` (e.g. ``patch_size=7`` for a ViT on 28x28 inputs);
            only for timm models.

    Raises:
        ValueError: If the input shape is missing, the name is neither built in nor a timm model, or
            ``timm_kwargs`` are given for a model that is not a timm model.

    Example:
        ```python
        >>> from transformers import ViTConfig
        >>> from autosparse_hf.tasks import build_model
        >>> lenet = build_model("lenet300100", "mnist", seed=0)
        >>> vit_timm = build_model("test_vit", "mnist", patch_size=7)
        >>> vit = build_model(ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        ...                             intermediate_size=64, patch_size=7), "mnist")
        ```
    """
    info: TaskInfo | None = None
    if isinstance(task_info_or_num_classes, TaskInfo):
        info = task_info_or_num_classes
    elif isinstance(task_info_or_num_classes, str):
        info = task_info(task_info_or_num_classes)
    num_classes = info.num_classes if info is not None else int(task_info_or_num_classes)
    if input_shape is None:
        if info is None:
            raise ValueError("input_shape is required when the task is given as a number of classes")
        input_shape = info.input_shape
    shape = tuple(int(s) for s in input_shape)

    if seed is None:
        model = _construct(name_or_config, num_classes, shape, info, timm_kwargs)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = _construct(name_or_config, num_classes, shape, info, timm_kwargs)
    model.example_input_shape = shape
    return model


def _construct(
    name_or_config: str | PretrainedConfig,
    num_classes: int,
    shape: tuple[int, ...],
    info: TaskInfo | None,
    timm_kwargs: dict[str, Any],
) -> nn.Module:
    if not isinstance(name_or_config, (str, PretrainedConfig)):
        raise TypeError(f"name_or_config must be a str or a PretrainedConfig, got {type(name_or_config).__name__}")
    name_or_config = _config_from_path(name_or_config)
    builder = _BUILTIN_MODELS.get(name_or_config.lower()) if isinstance(name_or_config, str) else None
    if timm_kwargs and (builder is not None or isinstance(name_or_config, PretrainedConfig)):
        raise ValueError(f"extra arguments {sorted(timm_kwargs)} are only accepted for timm models")
    if isinstance(name_or_config, PretrainedConfig):
        return _from_transformers_config(name_or_config, num_classes, shape, info)
    if builder is not None:
        return builder(shape, num_classes)
    return _from_timm(name_or_config, num_classes, shape, timm_kwargs)


def _from_timm(name: str, num_classes: int, shape: tuple[int, ...], timm_kwargs: dict[str, Any]) -> nn.Module:
    import timm

    from ..families import TimmForImageClassification

    if not timm.is_model(name):
        raise ValueError(
            f"{name!r} is neither a built-in model ({', '.join(list_models())}) nor a timm model "
            "(see timm.list_models())"
        )
    if len(shape) != 3:
        raise ValueError(f"timm models take images shaped (channels, height, width), got input_shape={shape}")
    kwargs = {"num_classes": num_classes, "in_chans": shape[0], **timm_kwargs, "pretrained": False}
    try:
        # Models with position embeddings (ViT-like) must know the image size; convolutional ones reject it.
        inner = timm.create_model(name, **{"img_size": shape[1:], **kwargs})
    except TypeError as err:
        if "img_size" not in str(err):
            raise
        inner = timm.create_model(name, **kwargs)
    return TimmForImageClassification(inner)


def _from_transformers_config(
    config: PretrainedConfig, num_classes: int, shape: tuple[int, ...], info: TaskInfo | None
) -> nn.Module:
    config = copy.deepcopy(config)  # the caller's config stays as it was
    if info is not None and len(info.class_names) == num_classes:
        config.id2label = dict(enumerate(info.class_names))
        config.label2id = {label: index for index, label in config.id2label.items()}
    else:
        config.num_labels = num_classes
    if hasattr(config, "num_channels"):
        config.num_channels = shape[0]
    if hasattr(config, "image_size") and len(shape) == 3:
        config.image_size = shape[1] if shape[1] == shape[2] else list(shape[1:])
    return AutoModelForImageClassification.from_config(config, trust_remote_code=False)
