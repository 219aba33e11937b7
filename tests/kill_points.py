"""Deterministic kill points for the resume tests.

``KillInOnSave`` stops a run inside ``on_save`` (in process, by an exception); ``WriteBoundaries`` names every file
write of a run and ends the process with ``os._exit`` right after a chosen one (``tests/faults``).
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from transformers import TrainerCallback


class Killed(Exception):
    """Stands for the process dying at a chosen point."""


class KillInOnSave(TrainerCallback):
    """Stops the run in ``on_save`` at ``step``: the Trainer's files exist, later callbacks' files do not."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_save(self, args, state, control, **kwargs):  # noqa: ANN001, ANN201
        if state.global_step == self.step:
            raise Killed(f"killed after the Trainer saved checkpoint-{self.step}")


# --------------------------------------------------------------------------------------------------------------------
# Write boundaries: every file write of a run, named and numbered, with a kill (os._exit) at the one chosen.

KILL_ENV = "AUTOSPARSE_KILL_AT"
"""Environment variable naming the write boundary at which :class:`WriteBoundaries` kills the process."""
KILLED_EXIT_CODE = 77
"""Exit status of a process killed at a write boundary (``os._exit``: no cleanup, no flush, like SIGKILL)."""

_TMP_NAME = re.compile(r"\.tmp-[^/]+")


class WriteBoundaries:
    """Name every file write under ``root`` and kill the process right after the one named ``kill_at``.

    The primitives that write files (the Trainer's ``torch.save`` and ``safetensors`` calls and its
    ``trainer_state.json``, the library's atomic folders: ``tempfile.mkdtemp``, ``safetensors.torch.save_file``,
    ``Path.write_text``/``Path.open`` for writing, ``os.replace``; ``shutil.rmtree``; ``Dataset.save_to_disk``;
    the score Parquet writer; ``Figure.savefig``) are wrapped in their modules and wherever ``autosparse_hf`` binds
    them by name (transformers calls them through their modules). After each one returns, the boundary
    ``"<primitive> <path relative to root>"`` is recorded (temporary names as ``.tmp-*``; a label seen before gets
    ``#2``, ``#3``, ...); only the outermost primitive of a nested call counts, and writes outside ``root`` are not
    boundaries. When the label equals ``kill_at`` the process ends with ``os._exit`` at once: what is on disk is
    exactly what a kill at that point leaves.
    """

    def __init__(self, root: str | os.PathLike[str], kill_at: str | None = None) -> None:
        self.root = Path(root).resolve()
        self.kill_at = kill_at
        self.seen: list[str] = []
        self._depth = 0

    def fire(self, primitive: str, path: Any) -> None:
        if path is None:
            return
        try:
            relative = Path(os.fspath(path)).resolve().relative_to(self.root)
        except (TypeError, ValueError):
            return  # not a path under root (a cache, a buffer)
        label = f"{primitive} {_TMP_NAME.sub('.tmp-*', relative.as_posix())}"
        repeats = sum(1 for s in self.seen if s == label or s.startswith(f"{label}#"))
        if repeats:
            label = f"{label}#{repeats + 1}"
        self.seen.append(label)
        if label == self.kill_at:
            os._exit(KILLED_EXIT_CODE)

    def _wrap(self, original: Callable[..., Any], primitive: str, where: Callable[..., Any]) -> Callable[..., Any]:
        boundaries = self

        @functools.wraps(original)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            boundaries._depth += 1
            try:
                result = original(*args, **kwargs)
            finally:
                boundaries._depth -= 1
            if boundaries._depth == 0:
                boundaries.fire(primitive, where(result, *args, **kwargs))
            return result

        return wrapper

    def _wrap_open(self, original: Callable[..., Any]) -> Callable[..., Any]:
        boundaries = self

        @functools.wraps(original)
        def wrapper(path: Path, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
            handle = original(path, mode, *args, **kwargs)
            if not any(c in mode for c in "wax+") or boundaries._depth:
                return handle
            return _FiresOnClose(handle, lambda: boundaries.fire("Path.open", path))

        return wrapper

    def install(self) -> WriteBoundaries:
        """Wrap the write primitives (for the rest of the process: meant for a process that is about to run once)."""
        import tempfile

        import safetensors.torch
        import torch
        from datasets import Dataset
        from matplotlib.figure import Figure
        from transformers.trainer_callback import TrainerState

        from autosparse_hf.records import score_io

        def arg(index: int, name: str) -> Callable[..., Any]:
            return lambda result, *args, **kwargs: kwargs.get(name, args[index] if len(args) > index else None)

        functions = [
            (torch, "save", "torch.save", arg(1, "f")),
            (safetensors.torch, "save_file", "save_file", arg(1, "filename")),
            (os, "replace", "os.replace", arg(1, "dst")),
            (os, "rename", "os.rename", arg(1, "dst")),
            (tempfile, "mkdtemp", "mkdtemp", lambda result, *a, **k: result),
            (shutil, "rmtree", "rmtree", arg(0, "path")),
            (score_io, "write_score_parquet", "write_score_parquet", arg(1, "path")),
        ]
        library_modules = [m for n, m in list(sys.modules.items()) if n.split(".")[0] == "autosparse_hf"]
        for module, name, primitive, where in functions:
            original = getattr(module, name)
            wrapper = self._wrap(original, primitive, where)
            setattr(module, name, wrapper)
            for loaded in library_modules:  # the library's `from x import f` bindings too
                for attr, value in list(vars(loaded).items()):
                    if value is original:
                        setattr(loaded, attr, wrapper)
        methods = [
            (Path, "write_text", "Path.write_text", arg(0, "self")),
            (Path, "write_bytes", "Path.write_bytes", arg(0, "self")),
            (TrainerState, "save_to_json", "TrainerState.save_to_json", arg(1, "json_path")),
            (Dataset, "save_to_disk", "Dataset.save_to_disk", arg(1, "dataset_path")),
            (Figure, "savefig", "Figure.savefig", arg(1, "fname")),
        ]
        for cls, name, primitive, where in methods:
            setattr(cls, name, self._wrap(getattr(cls, name), primitive, where))
        Path.open = self._wrap_open(Path.open)
        return self


class _FiresOnClose:
    """A file object that reports when it is closed (a file opened for writing is written once it is closed)."""

    def __init__(self, handle: Any, on_close: Callable[[], None]) -> None:
        self._handle, self._on_close, self._closed = handle, on_close, False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._handle, name)

    def __iter__(self) -> Any:
        return iter(self._handle)

    def __enter__(self) -> _FiresOnClose:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._handle.close()
        if not self._closed:
            self._closed = True
            self._on_close()
