"""Load an AutoS predictor from an instance, a folder or the Hub, with the checks that keep pruning honest."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import torch
from safetensors import SafetensorError

from ..features import FEATURE_SCHEMA_VERSION
from .budgets import check_budget_model
from .configuration import AutoSConfig
from .modeling import AutoSModel


def load_predictor(predictor: str | os.PathLike[str] | AutoSModel) -> AutoSModel:
    """An ``AutoSModel`` ready to score, from an instance, a ``save_pretrained`` folder, or a Hub id (online).

    Only safetensors weights are read (never pickle). Raises ``ValueError`` for a predictor trained on another
    feature schema version, or with a non-finite weight, feature statistic or budget coefficient (naming the file and
    the tensor or field), ``FileNotFoundError`` for a folder without ``config.json``/``model.safetensors``,
    ``ConnectionError`` for a Hub id while offline.
    """
    if isinstance(predictor, AutoSModel):
        model = predictor
        weights_where = config_where = f"the AutoS predictor {model.name_or_path or type(model).__name__}"
    else:
        weights_where, config_where = (f"{Path(predictor) / name}" for name in ("model.safetensors", "config.json"))
        path = Path(predictor)
        if path.exists():
            for name in ("config.json", "model.safetensors"):
                if not (path / name).is_file():
                    raise FileNotFoundError(f"{path} is not an AutoS predictor folder: {name} is missing")
            try:
                declared = json.loads((path / "config.json").read_text())
            except json.JSONDecodeError as err:
                raise ValueError(f"{path / 'config.json'} is not valid JSON: {err}") from err
            if declared.get("model_type") != AutoSConfig.model_type:
                # transformers would only warn and build an AutoS model from another model's config.
                raise ValueError(
                    f"{path / 'config.json'} has model_type {declared.get('model_type')!r}, not "
                    f"{AutoSConfig.model_type!r}: not an AutoS predictor"
                )
            _check_version(declared.get("feature_schema_version"), str(path))
        else:
            from huggingface_hub import constants

            if _looks_like_a_path(str(predictor)):
                # A Hub id is "name" or "org/name"; anything else was meant as a folder that is not there.
                raise FileNotFoundError(f"no such AutoS predictor folder: {predictor!s}")
            if constants.HF_HUB_OFFLINE:
                raise ConnectionError(f"{predictor!r} is not a local folder and the Hub is offline (HF_HUB_OFFLINE=1)")
        try:
            model, info = AutoSModel.from_pretrained(str(predictor), use_safetensors=True, output_loading_info=True)
        except (OSError, RuntimeError, SafetensorError) as err:
            # SafetensorError: a truncated or corrupt model.safetensors; RuntimeError: tensors of the wrong shape.
            raise ValueError(f"cannot load the AutoS predictor {predictor!s}: {err}") from err
        # transformers re-initializes missing tensors with a warning; a predictor with random weights would prune at
        # random without anyone noticing, so an incomplete checkpoint is an error here.
        problems = {k: sorted(info.get(k) or ()) for k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
        problems = {k: v for k, v in problems.items() if v}
        if problems:
            raise ValueError(f"the AutoS predictor {predictor!s} does not match its config: {problems}")
    _check_version(model.config.feature_schema_version, type(model).__name__)
    check_finite_predictor(model, weights_where, config_where)
    model.eval()
    return model


def check_finite_predictor(model: AutoSModel, weights_where: str, config_where: str | None = None) -> None:
    """Refuse a predictor with a non-finite weight, feature statistic or layer-budget coefficient.

    A NaN weight scores every weight NaN (the mask then follows parameter order), a NaN budget coefficient makes
    the layer budgets meaningless; neither may reach pruning, nor be saved.

    Args:
        model: The predictor.
        weights_where: Where its tensors come from (``.../model.safetensors``), named in errors.
        config_where: Where its config comes from (``.../config.json``); defaults to ``weights_where``.

    Raises:
        ValueError: naming the file and the tensor (or config field) and how many values are not finite.
    """
    config_where = config_where or weights_where
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point():
            bad = int((~torch.isfinite(tensor)).sum())
            if bad:
                raise ValueError(
                    f"{weights_where}: tensor {name!r} has {bad} non-finite value(s); the predictor is unusable"
                )
    for field in ("feature_mean", "feature_std"):
        for i, value in enumerate(getattr(model.config, field)):
            if not math.isfinite(value):
                raise ValueError(f"{config_where}: {field}[{i}] is {value!r}; the feature statistics must be finite")
    if model.config.budget_model is not None:
        check_budget_model(model.config.budget_model, f"{config_where}: budget_model")


def _check_version(version: object, where: str) -> None:
    if version != FEATURE_SCHEMA_VERSION:
        raise ValueError(
            f"{where} was trained on feature schema version {version!r}; this library computes version "
            f"{FEATURE_SCHEMA_VERSION}; retrain the predictor on a current score dataset"
        )


def _looks_like_a_path(text: str) -> bool:
    """Whether ``text`` can only be a local path (absolute, relative with ./ or ../, ~, or more than one slash)."""
    return (
        Path(text).is_absolute()
        or text.startswith((".", "~"))
        or text.count("/") > 1
        or text.endswith("/")
        or "\\" in text
    )
