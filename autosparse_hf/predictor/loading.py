"""Load an AutoS predictor from an instance, a folder or the Hub, with the checks that keep pruning honest."""

from __future__ import annotations

import json
import os
from pathlib import Path

from safetensors import SafetensorError

from ..features import FEATURE_SCHEMA_VERSION
from .configuration import AutoSConfig
from .modeling import AutoSModel


def load_predictor(predictor: str | os.PathLike[str] | AutoSModel) -> AutoSModel:
    """An ``AutoSModel`` ready to score, from an instance, a ``save_pretrained`` folder, or a Hub id (online).

    Only safetensors weights are read (never pickle). Raises ``ValueError`` for a predictor trained on another
    feature schema version, ``FileNotFoundError`` for a folder without ``config.json``/``model.safetensors``,
    ``ConnectionError`` for a Hub id while offline.
    """
    if isinstance(predictor, AutoSModel):
        model = predictor
    else:
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
    model.eval()
    return model


def _check_version(version: object, where: str) -> None:
    if version != FEATURE_SCHEMA_VERSION:
        raise ValueError(
            f"{where} was trained on feature schema version {version!r}; this library computes version "
            f"{FEATURE_SCHEMA_VERSION}; retrain the predictor on a current score dataset"
        )
