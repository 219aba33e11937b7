"""Which Trainer checkpoint a run resumes from, and which checkpoints are complete.

A pruning callback saves its own state (masks, IRP state) into the Trainer's ``checkpoint-N`` folder in ``on_save``,
which the Trainer calls after it has written its own files. A checkpoint therefore counts as complete only when the
callback's part is complete too: a kill between the two leaves a folder the Trainer would resume from but whose
masks would have to be guessed. Resuming reads the callback's part from the very folder the Trainer resumes from,
wherever it is (a copied or moved checkpoint, not only ``output_dir/checkpoint-N``), and refuses to guess.
"""

from __future__ import annotations

import inspect
import logging
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")


def _trainer_resume_argument() -> str | None:
    """The ``resume_from_checkpoint`` folder of the ``Trainer`` training loop that is calling us, if any.

    transformers hands no callback the folder it resumes from (only the restored ``TrainerState``); the training
    loop holds it as an argument, so it is read from that frame. ``None`` outside a Trainer or for a fresh run.
    """
    frame = inspect.currentframe()
    try:
        while frame is not None:
            if frame.f_code.co_name == "_inner_training_loop" and "resume_from_checkpoint" in frame.f_locals:
                value = frame.f_locals["resume_from_checkpoint"]
                return str(value) if isinstance(value, (str, Path)) and str(value) else None
            frame = frame.f_back
        return None
    finally:
        del frame  # frames in locals keep whole call stacks alive


def resumed_checkpoint(args: Any, state: Any) -> Path | None:
    """The checkpoint folder this training run resumed from, or ``None`` for a run that starts at step 0.

    Taken from the running ``Trainer.train(resume_from_checkpoint=...)`` call, else from
    ``TrainingArguments.resume_from_checkpoint``, else ``output_dir/checkpoint-{global_step}``.
    """
    if not state.global_step:
        return None
    folder = _trainer_resume_argument()
    if folder is None and isinstance(getattr(args, "resume_from_checkpoint", None), str):
        folder = args.resume_from_checkpoint
    if folder is None:
        folder = str(Path(args.output_dir) / f"checkpoint-{state.global_step}")
    return Path(folder)


def checkpoint_folders(output_dir: str | Path) -> list[Path]:
    """``checkpoint-N`` folders of ``output_dir``, oldest step first."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := CHECKPOINT_PATTERN.match(p.name))]
    return [p for _, p in sorted(found)]


def last_complete_checkpoint(
    output_dir: str | Path, is_complete: Callable[[Path], bool], *, remove_incomplete: bool = False
) -> Path | None:
    """The newest checkpoint of ``output_dir`` that ``is_complete`` accepts; newer incomplete ones are reported and,
    with ``remove_incomplete``, deleted (a kill while saving left them; they cannot be resumed without guessing)."""
    folders = checkpoint_folders(output_dir)
    for folder in reversed(folders):
        if is_complete(folder):
            return folder
        logger.warning("%s is incomplete (a run killed while saving it?)%s", folder, "; removing it" if remove_incomplete else "")
        if remove_incomplete:
            shutil.rmtree(folder)
    return None


def require_complete(checkpoint: Path, is_complete: Callable[[Path], bool], what: str) -> None:
    """Raise ``FileNotFoundError`` when the checkpoint being resumed lacks a complete ``what``, naming the newest
    complete checkpoint beside it (resuming must never guess what a kill did not save)."""
    if is_complete(checkpoint):
        return
    complete = last_complete_checkpoint(checkpoint.parent, is_complete)
    hint = f"; the newest complete checkpoint there is {complete}" if complete else ""
    raise FileNotFoundError(f"resuming from {checkpoint}, which holds no complete {what}{hint}")


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Delete the ``.*.tmp-*`` folders an interrupted atomic save left in ``folder`` (never a complete artifact)."""
    root = Path(folder)
    if not root.is_dir():
        return []
    stale = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(".") and ".tmp-" in p.name]
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
    return stale


def broadcast_path(path: Path | None, src: int = 0) -> Path | None:
    """Rank ``src``'s ``path`` on every rank (a no-op outside ``torch.distributed``); sent as UTF-8 bytes in a tensor,
    since ``broadcast_object_list`` would unpickle."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return path
    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    data = str(path).encode() if path is not None else b""
    length = torch.tensor([len(data) if path is not None else -1], dtype=torch.int64, device=device)
    dist.broadcast(length, src=src)
    if int(length) < 0:
        return None
    buffer = torch.zeros(int(length), dtype=torch.uint8, device=device)
    if dist.get_rank() == src:
        buffer.copy_(torch.frombuffer(bytearray(data), dtype=torch.uint8))
    dist.broadcast(buffer, src=src)
    return Path(bytes(buffer.cpu().tolist()).decode())
