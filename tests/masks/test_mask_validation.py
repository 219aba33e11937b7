"""A saved MaskSet checks itself on load: bool bytes are 0/1, and ``mask_config.json`` agrees with the tensors
(issue 17, item 6)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from autosparse_hf import MaskSet
from autosparse_hf.masks import MASK_CONFIG_NAME, MASK_WEIGHTS_NAME


def saved(tmp_path: Path) -> Path:
    """Two tensors, 6 of 12 weights kept, saved with ``save_pretrained``."""
    masks = MaskSet(
        {
            "0.weight": torch.tensor([[True, False, True, False], [False, True, False, True]]),
            "2.weight": torch.tensor([[True, True], [False, False]]),
        },
        metadata={"criterion": "hand"},
    )
    masks.save_pretrained(tmp_path)
    return tmp_path


def set_byte(folder: Path, name: str, position: int, value: int) -> int:
    """Overwrite one byte of tensor ``name``'s data in ``masks.safetensors``; returns the byte it replaced.

    safetensors stores an 8-byte little-endian header length, a JSON header with each tensor's byte offsets
    (relative to the end of the header) and the raw data; a bool is one byte per element.
    """
    path = folder / MASK_WEIGHTS_NAME
    data = bytearray(path.read_bytes())
    header_len = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + header_len])
    assert header[name]["dtype"] == "BOOL"
    offset = 8 + header_len + header[name]["data_offsets"][0] + position
    old = data[offset]
    data[offset] = value
    path.write_bytes(bytes(data))
    return old


def edit_config(folder: Path, **changes: object) -> None:
    path = folder / MASK_CONFIG_NAME
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


def test_a_true_byte_of_0x05_is_refused_naming_the_file_and_the_tensor(tmp_path: Path) -> None:
    folder = saved(tmp_path)
    # Position 0 of 0.weight is kept (0x01): 0x05 still reads as True, so every count agrees; only the bytes tell.
    assert set_byte(folder, "0.weight", 0, 0x05) == 0x01
    with pytest.raises(ValueError, match=r"masks\.safetensors.*'0\.weight'.*0x05") as err:
        MaskSet.from_pretrained(folder)
    assert "not 0 or 1" in str(err.value)


def test_a_false_byte_of_0xff_is_refused(tmp_path: Path) -> None:
    folder = saved(tmp_path)
    assert set_byte(folder, "2.weight", 3, 0xFF) == 0x00
    with pytest.raises(ValueError, match=r"'2\.weight'.*0xff"):
        MaskSet.from_pretrained(folder)


def test_a_flipped_weight_disagrees_with_num_kept(tmp_path: Path) -> None:
    folder = saved(tmp_path)
    assert set_byte(folder, "0.weight", 1, 0x01) == 0x00  # one more weight kept than the config says
    with pytest.raises(ValueError, match=r"mask_config\.json.*'0\.weight'.*keeps 5.*records 4"):
        MaskSet.from_pretrained(folder)


def test_two_compensating_flips_are_caught_per_tensor(tmp_path: Path) -> None:
    folder = saved(tmp_path)
    set_byte(folder, "0.weight", 1, 0x01)
    set_byte(folder, "2.weight", 0, 0x00)  # totals unchanged: 6 of 12
    with pytest.raises(ValueError, match=r"'0\.weight'.*keeps 5"):
        MaskSet.from_pretrained(folder)


def test_total_num_kept_is_compared(tmp_path: Path) -> None:
    folder = saved(tmp_path)
    edit_config(folder, num_kept=7)
    with pytest.raises(ValueError, match=r"mask_config\.json.*num_kept 7.*tensors keep 6"):
        MaskSet.from_pretrained(folder)


def test_numel_and_sparsity_are_compared(tmp_path: Path) -> None:
    folder = saved(tmp_path)
    edit_config(folder, numel=13)
    with pytest.raises(ValueError, match=r"numel 13.*12"):
        MaskSet.from_pretrained(folder)
    folder = saved(tmp_path / "b")
    edit_config(folder, sparsity=0.25)
    with pytest.raises(ValueError, match=r"sparsity 0\.25.*0\.5"):
        MaskSet.from_pretrained(folder)


def test_shapes_are_compared_per_tensor(tmp_path: Path) -> None:
    folder = saved(tmp_path)
    edit_config(folder, shapes={"0.weight": [4, 2], "2.weight": [2, 2]})  # same numel, other shape
    with pytest.raises(ValueError, match=r"mask_config\.json.*shapes.*'0\.weight'.*\[4, 2\].*\[2, 4\]"):
        MaskSet.from_pretrained(folder)
    edit_config(folder, shapes={"0.weight": [2, 4]})
    with pytest.raises(ValueError, match=r"shapes.*'2\.weight'"):
        MaskSet.from_pretrained(folder)
    edit_config(folder, shapes=[[2, 4], [2, 2]])
    with pytest.raises(ValueError, match=r"shapes.*object"):
        MaskSet.from_pretrained(folder)


@pytest.mark.parametrize("field", ["shapes", "numel", "num_kept", "sparsity"])
def test_a_missing_count_field_is_refused(tmp_path: Path, field: str) -> None:
    folder = saved(tmp_path)
    config = json.loads((folder / MASK_CONFIG_NAME).read_text())
    del config[field]
    (folder / MASK_CONFIG_NAME).write_text(json.dumps(config))
    with pytest.raises(ValueError, match=rf"mask_config\.json.*{field}"):
        MaskSet.from_pretrained(folder)


def test_duplicated_names_are_refused(tmp_path: Path) -> None:
    folder = saved(tmp_path)
    edit_config(folder, names=["0.weight", "2.weight", "0.weight"])
    with pytest.raises(ValueError, match=r"names.*'0\.weight'.*more than once"):
        MaskSet.from_pretrained(folder)


def test_a_non_bool_tensor_is_refused(tmp_path: Path) -> None:
    folder = saved(tmp_path)
    save_file(
        {"0.weight": torch.ones(2, 4, dtype=torch.uint8), "2.weight": torch.ones(2, 2, dtype=torch.bool)},
        str(folder / MASK_WEIGHTS_NAME),
    )
    with pytest.raises(ValueError, match=r"masks\.safetensors.*'0\.weight'.*torch\.uint8.*bool"):
        MaskSet.from_pretrained(folder)


def test_a_valid_mask_still_loads_and_new_files_record_per_tensor_counts(tmp_path: Path) -> None:
    folder = saved(tmp_path)
    loaded = MaskSet.from_pretrained(folder)
    assert loaded.num_kept == 6 and loaded.numel == 12
    assert json.loads((folder / MASK_CONFIG_NAME).read_text())["kept"] == {"0.weight": 4, "2.weight": 2}


def test_files_without_per_tensor_counts_still_load(tmp_path: Path) -> None:
    """``kept`` was added later; files written before it are checked against their totals only."""
    folder = saved(tmp_path)
    config = json.loads((folder / MASK_CONFIG_NAME).read_text())
    del config["kept"]
    (folder / MASK_CONFIG_NAME).write_text(json.dumps(config))
    assert MaskSet.from_pretrained(folder).num_kept == 6
