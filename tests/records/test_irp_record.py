"""``IRPRecord``: the one owner of an IRP run folder; every reader goes through it."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import torch
from irp_utils import run_irp

from autosparse_hf import IRPConfig, IRPRecord
from autosparse_hf.records import (
    RECORD_FILE,
    RUN_DIR,
    RUN_FILE,
    is_complete_run,
    load_ticket_source,
    nearest_ticket,
    read_run_info,
)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):  # noqa: ANN201
    out = tmp_path_factory.mktemp("record")
    _, irp = run_irp(out, IRPConfig(cycles=3, final_sparsity=0.9), epochs_per_cycle=1)
    return out, irp


def test_the_callback_writes_a_record_that_loads_back_equal(finished):
    out, irp = finished
    assert is_complete_run(out) and is_complete_run(out / RUN_DIR)
    record = IRPRecord.from_pretrained(out)  # the output_dir holding irp/ or the run folder itself
    assert record.origin == str(out / RUN_DIR)
    assert record.counts == irp.counts and record.history == irp.history and record.finished
    assert all(torch.equal(record.cycle_pruned[n], irp.cycle_pruned[n]) for n in irp.cycle_pruned)
    for c in range(record.cycles + 1):
        assert all(torch.equal(record.mask_after(c)[n], irp.mask_after(c)[n]) for n in irp.cycle_pruned)
    assert record.to_dataset().to_pandas().equals(irp.to_dataset().to_pandas())
    assert read_run_info(out)["identity"] == irp.identity


def test_nearest_ticket_is_one_rule_everywhere(finished):
    out, irp = finished
    record = IRPRecord.from_pretrained(out)
    for sparsity in (0.0, 0.3, 0.6, 0.9, 0.99):
        expected = min(irp.history, key=lambda h: abs(h["sparsity"] - sparsity))
        assert record.nearest_ticket(sparsity) == expected == nearest_ticket(irp.history, sparsity)


def test_save_pretrained_round_trips_and_marks_completion_last(finished, tmp_path):
    out, _ = finished
    record = IRPRecord.from_pretrained(out)
    target = record.save_pretrained(tmp_path / "copy")
    assert {RUN_FILE, RECORD_FILE, "final_mask", "scores", "scores.parquet", "cycles.csv"} <= {
        p.name for p in target.iterdir()
    }
    again = IRPRecord.from_pretrained(target)
    assert again.run_info() == {**record.run_info()}


def test_incomplete_or_corrupt_folders_are_refused(finished, tmp_path):
    out, _ = finished
    with pytest.raises(FileNotFoundError, match=f"{RUN_FILE} is missing"):
        IRPRecord.from_pretrained(tmp_path)
    record = IRPRecord.from_pretrained(out)
    folder = record.save_pretrained(tmp_path / "broken")
    info = json.loads((folder / RUN_FILE).read_text())
    info["layers"][0]["shape"] = [1, 1]
    (folder / RUN_FILE).write_text(json.dumps(info))
    with pytest.raises(ValueError, match="shape"):
        IRPRecord.from_pretrained(folder)
    (folder / RECORD_FILE).unlink()
    with pytest.raises(FileNotFoundError, match=RECORD_FILE):
        IRPRecord.from_pretrained(folder)


def test_ticket_sources_follow_a_rewritten_folder(finished, tmp_path):
    out, _ = finished
    record = IRPRecord.from_pretrained(out)
    folder = record.save_pretrained(tmp_path / "run")
    first = load_ticket_source(folder)
    assert load_ticket_source(folder) is first  # cached while the folder is unchanged
    # Rewrite the folder in the same process with other survival levels: the source must not be served stale.
    record.cycle_pruned = {n: torch.flip(t, dims=[0]).contiguous() for n, t in record.cycle_pruned.items()}
    time.sleep(0.01)
    record.save_pretrained(folder)
    os.utime(folder / RUN_FILE)
    second = load_ticket_source(folder)
    assert second is not first
    name = next(iter(record.cycle_pruned))
    assert torch.equal(second.cycle_pruned[name], record.cycle_pruned[name])
    assert Path(second.origin) == folder


@pytest.mark.parametrize(("prefix", "bad"), [("w0", float("nan")), ("g0", float("inf")), ("input_std", float("-inf"))])
def test_a_non_finite_float_tensor_is_refused_naming_file_and_tensor(finished, tmp_path, prefix, bad):
    from safetensors.torch import load_file, save_file

    record = IRPRecord.from_pretrained(finished[0])
    folder = record.save_pretrained(tmp_path / "run")
    tensors = load_file(str(folder / RECORD_FILE))
    name = next(k for k in tensors if k.startswith(f"{prefix}/"))
    tensors[name] = tensors[name].clone()
    tensors[name].view(-1)[3] = bad
    save_file(tensors, str(folder / RECORD_FILE))
    with pytest.raises(ValueError, match=rf"{RECORD_FILE}: tensor '{name}' has 1 non-finite value\(s\) \(first at flat index 3"):
        IRPRecord.from_pretrained(folder)
