"""Hub pushes requested by the recipes: checked when the arguments are built, before any training.

The recipes take ``push_to_hub`` (a flag) + ``hub_model_id`` + ``hub_private_repo``, as ``TrainingArguments`` does.
``check_push_request`` runs in the argument dataclasses' ``__post_init__``, so an impossible push (no repo id, the Hub
offline) fails in the first second instead of after the whole run. This module imports nothing heavy.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


def check_push_request(push_to_hub: object, hub_model_id: str | None, *, repo_kind: str, example: str) -> None:
    """Refuse a push that cannot happen, naming the parameter and the value.

    Args:
        push_to_hub: The flag as given (a string such as ``"me/scores"`` is the old spelling of a repo id).
        hub_model_id: The repo id (``org/name``) the push goes to.
        repo_kind: What is pushed, for the messages (``"Hub dataset repo"``, ``"Hub model repo"``).
        example: An example repo id for the messages.

    Raises:
        ValueError: ``push_to_hub`` is not a flag, or it is set without ``hub_model_id``.
        ConnectionError: A push is requested while the Hub is offline (``HF_HUB_OFFLINE=1``).
    """
    if isinstance(push_to_hub, str):
        raise ValueError(
            f"push_to_hub is a flag (true/false), got {push_to_hub!r}; give the repo as hub_model_id={push_to_hub!r}"
        )
    if not push_to_hub:
        return
    if not hub_model_id:
        raise ValueError(f"push_to_hub needs hub_model_id (the {repo_kind}, e.g. {example!r})")
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        raise ConnectionError(
            f"push_to_hub to {hub_model_id!r} was requested but the Hub is offline (HF_HUB_OFFLINE=1); "
            "nothing was trained; unset push_to_hub or go online"
        )


def push_folder(
    folder: str | Path,
    repo_id: str,
    *,
    private: bool | None = None,
    repo_type: str = "model",
    allow_patterns: Sequence[str] | None = None,
    commit_message: str = "Upload with autosparse_hf",
) -> str:
    """Create ``repo_id`` if needed and upload ``folder`` (only ``allow_patterns`` when given); returns the repo URL."""
    from huggingface_hub import HfApi

    api = HfApi()
    url = api.create_repo(repo_id, private=private, repo_type=repo_type, exist_ok=True)
    api.upload_folder(
        repo_id=repo_id,
        folder_path=str(folder),
        repo_type=repo_type,
        allow_patterns=list(allow_patterns) if allow_patterns is not None else None,
        commit_message=commit_message,
    )
    return str(url)
