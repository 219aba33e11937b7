"""``MaskSet``: a validated map from parameter name to a boolean keep-mask.

"Sparsity" is the fraction of weights removed, "density" the fraction kept. A MaskSet saves like a peft adapter:
a JSON config (``mask_config.json``) plus the tensors in safetensors (``masks.safetensors``).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

MASK_CONFIG_NAME = "mask_config.json"
MASK_WEIGHTS_NAME = "masks.safetensors"
MASK_FORMAT_VERSION = 1


@dataclass(frozen=True)
class LayerReport:
    """Per-layer line of :meth:`MaskSet.report`."""

    name: str
    shape: tuple[int, ...]
    numel: int
    kept: int

    @property
    def density(self) -> float:
        return self.kept / self.numel if self.numel else 1.0

    @property
    def sparsity(self) -> float:
        return 1.0 - self.density


def atomic_write_dir(target: str | os.PathLike[str]) -> tuple[Path, Path]:
    """A fresh temporary folder beside ``target``; move it into place with :func:`commit_dir`.

    Writing into a sibling folder and renaming makes a save all-or-nothing: an interrupted save never leaves a
    half-written artifact where a complete one is expected.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    return target, tmp


def commit_dir(target: Path, tmp: Path) -> None:
    """Move ``tmp`` into place as ``target``: by one atomic rename of the folder when ``target`` does not exist yet,
    else file by file (each an atomic rename, in name order) into the existing ``target``.

    The single rename leaves nothing behind at any point: a kill after it leaves no empty temporary folder inside
    the folder that holds ``target`` (a checkpoint resumed later would keep it for ever).
    """
    if not target.exists():
        os.replace(tmp, target)
        return
    for item in sorted(tmp.iterdir()):
        os.replace(item, target / item.name)
    tmp.rmdir()


class MaskSet(Mapping[str, torch.Tensor]):
    """Boolean keep-masks keyed by fully qualified parameter name (``True`` = keep).

    Args:
        masks: Map from parameter name to a boolean tensor (other dtypes with only 0/1 values are converted).
        metadata: JSON-serializable facts about how the masks were made (criterion, sparsity, source, ...).

    Example:
        ```python
        >>> masks = autosparse_hf.prune_at_init(model, "snip", sparsity=0.9, dataloader=loader)
        >>> print(masks.sparsity, masks.report())
        >>> masks.save_pretrained("lenet-snip-90")
        >>> MaskSet.from_pretrained("lenet-snip-90").apply(other_model)
        ```
    """

    def __init__(self, masks: Mapping[str, torch.Tensor], metadata: Mapping[str, Any] | None = None) -> None:
        checked: dict[str, torch.Tensor] = {}
        for name, mask in masks.items():
            if not isinstance(mask, torch.Tensor):
                raise TypeError(f"mask for {name!r} is a {type(mask).__name__}, expected a torch.Tensor")
            if mask.dtype != torch.bool:
                if not bool(((mask == 0) | (mask == 1)).all()):
                    raise ValueError(f"mask for {name!r} has values other than 0 and 1")
                mask = mask.bool()
            checked[name] = mask.detach()
        if not checked:
            raise ValueError("a MaskSet needs at least one mask")
        self._masks = checked
        self.metadata: dict[str, Any] = dict(metadata or {})

    # Mapping protocol
    def __getitem__(self, name: str) -> torch.Tensor:
        return self._masks[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._masks)

    def __len__(self) -> int:
        return len(self._masks)

    def __repr__(self) -> str:
        return f"MaskSet({len(self)} tensors, {self.num_kept}/{self.numel} kept, sparsity={self.sparsity:.4f})"

    # Counts
    @property
    def numel(self) -> int:
        """Number of maskable weights."""
        return sum(m.numel() for m in self._masks.values())

    @property
    def num_kept(self) -> int:
        """Number of weights kept."""
        return sum(int(m.sum()) for m in self._masks.values())

    @property
    def density(self) -> float:
        """Global fraction of weights kept."""
        return self.num_kept / self.numel

    @property
    def sparsity(self) -> float:
        """Global fraction of weights removed."""
        return 1.0 - self.density

    def layer_density(self) -> dict[str, float]:
        """Fraction kept per tensor."""
        return {name: float(m.float().mean()) for name, m in self._masks.items()}

    def layer_sparsity(self) -> dict[str, float]:
        """Fraction removed per tensor."""
        return {name: 1.0 - d for name, d in self.layer_density().items()}

    def layer_reports(self) -> list[LayerReport]:
        return [LayerReport(n, tuple(m.shape), m.numel(), int(m.sum())) for n, m in self._masks.items()]

    def report(self) -> str:
        """A Markdown table of kept weights, density and sparsity per tensor, with the global total."""
        lines = ["| parameter | shape | weights | kept | density | sparsity |", "|---|---|---:|---:|---:|---:|"]
        for r in self.layer_reports():
            shape = "x".join(map(str, r.shape))
            lines.append(f"| {r.name} | {shape} | {r.numel} | {r.kept} | {r.density:.4f} | {r.sparsity:.4f} |")
        lines.append(f"| **total** | | {self.numel} | {self.num_kept} | {self.density:.4f} | {self.sparsity:.4f} |")
        return "\n".join(lines)

    # Relations between masks
    def is_subset_of(self, other: MaskSet) -> bool:
        """True if every weight kept here is kept in ``other`` (same names required)."""
        if set(self) != set(other):
            return False
        return all(not bool((m & ~other[n].to(m.device)).any()) for n, m in self._masks.items())

    def to(self, device: torch.device | str) -> MaskSet:
        return MaskSet({n: m.to(device) for n, m in self._masks.items()}, self.metadata)

    def clone(self) -> MaskSet:
        return MaskSet({n: m.clone() for n, m in self._masks.items()}, self.metadata)

    # Model interaction
    def mismatches(self, model: nn.Module) -> list[str]:
        """Every disagreement between the masks and ``model``'s parameters (missing, shape); empty if none."""
        params = dict(model.named_parameters())
        problems = []
        for name, mask in self._masks.items():
            if name not in params:
                problems.append(f"missing in model: {name}")
            elif tuple(params[name].shape) != tuple(mask.shape):
                problems.append(
                    f"shape mismatch for {name}: mask {tuple(mask.shape)} vs parameter {tuple(params[name].shape)}"
                )
        return problems

    def check_compatible(self, model: nn.Module, expected_names: list[str] | None = None) -> None:
        """Raise ``ValueError`` listing every mismatch with ``model`` (and names expected but not masked)."""
        problems = self.mismatches(model)
        if expected_names is not None:
            problems += [f"not in masks: {n}" for n in expected_names if n not in self._masks]
        if problems:
            raise ValueError(
                f"MaskSet does not fit {type(model).__name__} ({len(problems)} problem(s)):\n  " + "\n  ".join(problems)
            )

    @torch.no_grad()
    def apply(self, model: nn.Module) -> nn.Module:
        """Zero the pruned weights of ``model`` in place. Validates everything before touching the model."""
        from .enforce import zero_pruned_weights

        self.check_compatible(model)
        zero_pruned_weights(model, self)
        return model

    # Persistence
    def save_pretrained(self, save_directory: str | os.PathLike[str]) -> None:
        """Write ``mask_config.json`` and ``masks.safetensors`` to ``save_directory``, all or nothing."""
        target, tmp = atomic_write_dir(save_directory)
        config = {
            "format_version": MASK_FORMAT_VERSION,
            "names": list(self._masks),
            "shapes": {n: list(m.shape) for n, m in self._masks.items()},
            "numel": self.numel,
            "num_kept": self.num_kept,
            # Per-tensor counts let a load tell which tensor is corrupt, and catch flips that cancel in the total.
            "kept": {n: int(m.sum()) for n, m in self._masks.items()},
            "sparsity": self.sparsity,
            "metadata": self.metadata,
        }
        try:
            (tmp / MASK_CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=False))
            save_file({n: m.contiguous().cpu() for n, m in self._masks.items()}, str(tmp / MASK_WEIGHTS_NAME))
        except BaseException:
            for item in tmp.iterdir():
                item.unlink()
            tmp.rmdir()
            raise
        commit_dir(target, tmp)

    @classmethod
    def from_pretrained(cls, path_or_repo_id: str | os.PathLike[str], **hub_kwargs: Any) -> MaskSet:
        """Load masks saved by :meth:`save_pretrained` from a folder, or from a Hub repository when online.

        The files are checked before any mask is built: every tensor is bool with only 0/1 bytes, and what
        ``mask_config.json`` records (names, shapes, per-tensor and total kept counts, numel, sparsity) agrees with
        the tensors. Raises ``ValueError`` naming the file and the field (or tensor) otherwise.
        """
        folder = Path(path_or_repo_id)
        if not folder.is_dir():
            from huggingface_hub import snapshot_download
            from huggingface_hub.errors import HFValidationError

            try:
                folder = Path(
                    snapshot_download(
                        str(path_or_repo_id), allow_patterns=[MASK_CONFIG_NAME, MASK_WEIGHTS_NAME], **hub_kwargs
                    )
                )
            except HFValidationError as err:  # a local path that does not exist is no valid repo id either
                raise FileNotFoundError(f"no folder {path_or_repo_id} (and it is not a Hub repo id)") from err
        config_file, weights_file = folder / MASK_CONFIG_NAME, folder / MASK_WEIGHTS_NAME
        for f in (config_file, weights_file):
            if not f.is_file():
                raise FileNotFoundError(f"no {f.name} in {folder}")
        config = _read_config(config_file)
        tensors = _read_tensors(weights_file)
        names = config["names"]
        if set(names) != set(tensors):
            raise ValueError(f"{weights_file} holds {sorted(tensors)} but {config_file} lists {sorted(names)}")
        _check_counts(config, tensors, config_file)
        return cls({n: tensors[n] for n in names}, config.get("metadata"))

    def push_to_hub(self, repo_id: str, *, private: bool | None = None, token: str | None = None) -> str:
        """Upload the masks to a Hub model repository; returns the commit URL."""
        from huggingface_hub import HfApi

        api = HfApi(token=token)
        api.create_repo(repo_id, private=private, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            self.save_pretrained(tmp)
            return str(api.upload_folder(repo_id=repo_id, folder_path=tmp, commit_message="Upload MaskSet"))


def _read_config(config_file: Path) -> dict[str, Any]:
    """``mask_config.json`` as a dict, with its version and the types of the fields the tensors are checked against."""
    try:
        config = json.loads(config_file.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{config_file} is not valid JSON: {err}") from err
    if not isinstance(config, dict) or not isinstance(config.get("names"), list):
        raise ValueError(f"{config_file} is not a MaskSet config: expected an object with a 'names' list")
    if config.get("format_version") != MASK_FORMAT_VERSION:
        raise ValueError(
            f"{config_file} has format_version {config.get('format_version')!r}, expected {MASK_FORMAT_VERSION}"
        )
    names = config["names"]
    if not all(isinstance(n, str) for n in names):
        raise ValueError(f"{config_file}: 'names' must be a list of strings, got {names!r}")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        # A repeated name would silently collapse into one mask when the dict is built.
        raise ValueError(f"{config_file}: 'names' lists {repeated} more than once")
    for key, kind in (("shapes", dict), ("numel", int), ("num_kept", int), ("sparsity", (int, float))):
        value = config.get(key)
        # bool is an int in Python; a JSON true is no count.
        if not isinstance(value, kind) or isinstance(value, bool):
            expected = "an object" if kind is dict else "a number"
            raise ValueError(f"{config_file}: '{key}' must be {expected}, got {value!r}")
    if "kept" in config and not isinstance(config["kept"], dict):
        raise ValueError(f"{config_file}: 'kept' must be an object of per-tensor counts, got {config['kept']!r}")
    return config


def _read_tensors(weights_file: Path) -> dict[str, torch.Tensor]:
    """The tensors of ``masks.safetensors``, each checked to be bool with only 0/1 bytes."""
    try:
        tensors = load_file(str(weights_file))
    except Exception as err:  # safetensors raises its own error types for corrupt files
        raise ValueError(f"{weights_file} is not a readable safetensors file: {err}") from err
    for name, tensor in tensors.items():
        if tensor.dtype != torch.bool:
            raise ValueError(f"{weights_file}: tensor {name!r} has dtype {tensor.dtype}, expected torch.bool")
        _check_bool_bytes(tensor, name, weights_file)
    return tensors


def _check_bool_bytes(tensor: torch.Tensor, name: str, weights_file: Path) -> None:
    """Refuse bool data holding bytes other than 0 and 1.

    safetensors stores a bool as one raw byte and torch adopts the bytes unchecked: a byte 0x05 reads as True in
    one operation and misbehaves in others (comparisons, byte-wise sums), so such a file is corrupt, not a mask.
    """
    raw = tensor.reshape(-1).view(torch.uint8)
    bad = torch.nonzero(raw > 1)
    if bad.numel():
        first = int(bad[0, 0])
        raise ValueError(
            f"{weights_file}: bool tensor {name!r} holds {bad.shape[0]} byte(s) that are not 0 or 1 "
            f"(first at flat position {first}: 0x{int(raw[first]):02x}); the file is corrupt"
        )


def _check_counts(config: Mapping[str, Any], tensors: Mapping[str, torch.Tensor], config_file: Path) -> None:
    """Compare what ``mask_config.json`` records (shapes, per-tensor and total counts, sparsity) with the tensors."""
    names = config["names"]
    shapes = config["shapes"]
    for name in names:
        recorded, actual = shapes.get(name), list(tensors[name].shape)
        if recorded != actual:
            raise ValueError(f"{config_file}: shapes[{name!r}] is {recorded!r} but the tensor has shape {actual}")
    extra = sorted(set(shapes) - set(names))
    if extra:
        raise ValueError(f"{config_file}: shapes lists {extra}, which are not in 'names'")
    kept = {name: int(tensors[name].sum()) for name in names}
    recorded_kept = config.get("kept")  # absent in files written before per-tensor counts were recorded
    if recorded_kept is not None and set(recorded_kept) != set(names):
        raise ValueError(f"{config_file}: kept lists {sorted(recorded_kept)} but 'names' lists {sorted(names)}")
    for name, count in (recorded_kept or {}).items():
        if count != kept[name]:
            raise ValueError(f"{config_file}: tensor {name!r} keeps {kept[name]} weights but kept records {count!r}")
    numel, num_kept = sum(tensors[n].numel() for n in names), sum(kept.values())
    if config["numel"] != numel:
        raise ValueError(f"{config_file}: numel {config['numel']} but the tensors hold {numel} weights")
    if config["num_kept"] != num_kept:
        raise ValueError(f"{config_file}: num_kept {config['num_kept']} but the tensors keep {num_kept}")
    sparsity = 1.0 - num_kept / numel
    # JSON keeps a float exactly; the slack only absorbs files written by another JSON encoder.
    if not math.isclose(config["sparsity"], sparsity, rel_tol=0.0, abs_tol=1e-9):
        raise ValueError(f"{config_file}: sparsity {config['sparsity']} but the tensors' sparsity is {sparsity}")
