"""``MaskSet``: counts, report, persistence (JSON + safetensors), validation, ``apply``; and ``MaskEnforcer``."""

from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from autosparse_hf import MaskEnforcer, MaskSet
from autosparse_hf.masks import MASK_CONFIG_NAME, MASK_WEIGHTS_NAME


def hand_made() -> MaskSet:
    return MaskSet(
        {
            "0.weight": torch.tensor([[1, 0, 0, 1], [0, 0, 0, 1]], dtype=torch.bool),  # 3 of 8 kept
            "2.weight": torch.tensor([[1.0, 1.0], [1.0, 0.0]]),  # 3 of 4 kept, float 0/1 accepted
        },
        metadata={"criterion": "hand", "sparsity": 0.5, "nested": {"a": [1, 2]}},
    )


def tiny_model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 2), nn.ReLU(), nn.Linear(2, 2))


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_state(model: nn.Module, before: dict[str, torch.Tensor]) -> None:
    after = model.state_dict()
    assert set(after) == set(before)
    for key, value in before.items():
        assert torch.equal(after[key], value), key


def test_counts_on_a_hand_made_example():
    masks = hand_made()
    assert masks["2.weight"].dtype == torch.bool
    assert masks.numel == 12
    assert masks.num_kept == 6
    assert masks.density == pytest.approx(0.5)
    assert masks.sparsity == pytest.approx(0.5)
    assert masks.layer_density() == pytest.approx({"0.weight": 3 / 8, "2.weight": 3 / 4})
    assert masks.layer_sparsity() == pytest.approx({"0.weight": 5 / 8, "2.weight": 1 / 4})
    reports = {r.name: r for r in masks.layer_reports()}
    assert reports["0.weight"].shape == (2, 4) and reports["0.weight"].kept == 3 and reports["0.weight"].numel == 8
    assert len(masks) == 2 and list(masks) == ["0.weight", "2.weight"]


def test_report_lists_every_tensor_and_the_totals():
    report = hand_made().report()
    lines = report.splitlines()
    row = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[1:-1]] for line in lines[2:]}
    assert row["0.weight"] == ["0.weight", "2x4", "8", "3", "0.3750", "0.6250"]
    assert row["2.weight"] == ["2.weight", "2x2", "4", "3", "0.7500", "0.2500"]
    assert row["**total**"] == ["**total**", "", "12", "6", "0.5000", "0.5000"]


def test_subset_relation():
    masks = hand_made()
    smaller = MaskSet({n: m & (torch.rand(m.shape) < 2) for n, m in masks.items()})
    assert smaller.is_subset_of(masks)
    fewer = MaskSet({"0.weight": masks["0.weight"].clone(), "2.weight": torch.zeros(2, 2, dtype=torch.bool)})
    assert fewer.is_subset_of(masks) and not masks.is_subset_of(fewer)
    assert not MaskSet({"0.weight": masks["0.weight"]}).is_subset_of(masks)  # different names


def test_clone_is_independent():
    masks = hand_made()
    copy = masks.clone()
    copy["0.weight"][0, 1] = True
    assert not masks["0.weight"][0, 1]


def test_save_and_load_round_trip(tmp_path):
    masks = hand_made()
    masks.save_pretrained(tmp_path / "masks")
    assert sorted(os.listdir(tmp_path / "masks")) == sorted([MASK_CONFIG_NAME, MASK_WEIGHTS_NAME])
    assert os.listdir(tmp_path) == ["masks"]  # no temporary folder left behind
    loaded = MaskSet.from_pretrained(tmp_path / "masks")
    assert list(loaded) == list(masks)
    for name in masks:
        assert loaded[name].dtype == torch.bool
        assert torch.equal(loaded[name], masks[name])
    assert loaded.metadata == masks.metadata
    config = json.loads((tmp_path / "masks" / MASK_CONFIG_NAME).read_text())
    assert config["names"] == ["0.weight", "2.weight"]
    assert config["numel"] == 12 and config["num_kept"] == 6 and config["sparsity"] == pytest.approx(0.5)
    assert config["shapes"] == {"0.weight": [2, 4], "2.weight": [2, 2]}
    raw = load_file(str(tmp_path / "masks" / MASK_WEIGHTS_NAME))
    assert set(raw) == set(masks)


def test_save_over_an_existing_folder_replaces_the_masks(tmp_path):
    hand_made().save_pretrained(tmp_path)
    other = MaskSet({"x.weight": torch.tensor([True, False])})
    other.save_pretrained(tmp_path)
    loaded = MaskSet.from_pretrained(tmp_path)
    assert list(loaded) == ["x.weight"] and torch.equal(loaded["x.weight"], other["x.weight"])
    assert sorted(os.listdir(tmp_path)) == sorted([MASK_CONFIG_NAME, MASK_WEIGHTS_NAME])


def test_failed_save_leaves_nothing_behind(tmp_path):
    masks = MaskSet({"a": torch.ones(2, dtype=torch.bool)}, metadata={"bad": object()})
    with pytest.raises(TypeError):
        masks.save_pretrained(tmp_path / "out")
    assert not (tmp_path / "out").exists() or not os.listdir(tmp_path / "out")
    assert [p for p in os.listdir(tmp_path) if p != "out"] == []


def test_corrupt_safetensors_is_a_clear_error(tmp_path):
    hand_made().save_pretrained(tmp_path)
    (tmp_path / MASK_WEIGHTS_NAME).write_bytes(b"\x00\x01 this is not safetensors")
    with pytest.raises(ValueError, match="safetensors"):
        MaskSet.from_pretrained(tmp_path)


def test_bad_json_is_a_clear_error(tmp_path):
    hand_made().save_pretrained(tmp_path)
    (tmp_path / MASK_CONFIG_NAME).write_text("{not json")
    with pytest.raises(ValueError, match="JSON"):
        MaskSet.from_pretrained(tmp_path)


@pytest.mark.parametrize("config", ["[1, 2]", '{"format_version": 1}', '{"format_version": 1, "names": "0.weight"}'])
def test_malformed_config_is_a_clear_error(tmp_path, config):
    hand_made().save_pretrained(tmp_path)
    (tmp_path / MASK_CONFIG_NAME).write_text(config)
    with pytest.raises(ValueError, match=MASK_CONFIG_NAME):
        MaskSet.from_pretrained(tmp_path)


def test_wrong_format_version_is_a_clear_error(tmp_path):
    hand_made().save_pretrained(tmp_path)
    config = json.loads((tmp_path / MASK_CONFIG_NAME).read_text())
    config["format_version"] = 99
    (tmp_path / MASK_CONFIG_NAME).write_text(json.dumps(config))
    with pytest.raises(ValueError, match="format_version"):
        MaskSet.from_pretrained(tmp_path)


def test_config_and_tensors_disagreeing_is_a_clear_error(tmp_path):
    hand_made().save_pretrained(tmp_path)
    config = json.loads((tmp_path / MASK_CONFIG_NAME).read_text())
    config["names"] = ["0.weight", "renamed.weight"]
    (tmp_path / MASK_CONFIG_NAME).write_text(json.dumps(config))
    with pytest.raises(ValueError, match="renamed.weight"):
        MaskSet.from_pretrained(tmp_path)


@pytest.mark.parametrize("missing", [MASK_CONFIG_NAME, MASK_WEIGHTS_NAME])
def test_missing_file_is_a_clear_error(tmp_path, missing):
    hand_made().save_pretrained(tmp_path)
    (tmp_path / missing).unlink()
    with pytest.raises(FileNotFoundError, match=missing):
        MaskSet.from_pretrained(tmp_path)


def test_missing_folder_is_a_file_not_found_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does-not-exist"):
        MaskSet.from_pretrained(tmp_path / "does-not-exist")


@pytest.mark.parametrize(
    "values",
    [
        torch.tensor([0.0, 0.5, 1.0]),
        torch.tensor([0, 2, 1]),
        torch.tensor([-1.0, 0.0, 1.0]),
        torch.tensor([float("nan"), 0.0, 1.0]),
    ],
)
def test_non_binary_mask_values_are_rejected(values):
    with pytest.raises(ValueError, match="bad.weight"):
        MaskSet({"ok.weight": torch.ones(3, dtype=torch.bool), "bad.weight": values})


def test_non_tensor_mask_and_empty_maskset_are_rejected():
    with pytest.raises(TypeError, match="a.weight"):
        MaskSet({"a.weight": [1, 0, 1]})
    with pytest.raises(ValueError):
        MaskSet({})


def test_apply_zeros_exactly_the_pruned_weights():
    model = tiny_model()
    before = snapshot(model)
    masks = MaskSet({"0.weight": torch.rand(2, 4) < 0.5, "2.weight": torch.tensor([[True, False], [False, True]])})
    masks.apply(model)
    for name, param in model.named_parameters():
        if name in masks:
            assert torch.equal(param[~masks[name]], torch.zeros(int((~masks[name]).sum())))
            assert torch.equal(param[masks[name]], before[name][masks[name]])
        else:
            assert torch.equal(param, before[name])  # biases untouched


def test_apply_with_mismatches_lists_each_one_and_leaves_the_model_unchanged():
    model = tiny_model()
    before = snapshot(model)
    masks = MaskSet(
        {
            "0.weight": torch.zeros(2, 4, dtype=torch.bool),  # fits: must NOT be applied either
            "1.weight": torch.zeros(3, dtype=torch.bool),  # the ReLU has no parameters
            "2.weight": torch.zeros(3, 2, dtype=torch.bool),  # wrong shape
            "2.bias": torch.zeros(2, 2, dtype=torch.bool),  # wrong shape
            "head.weight": torch.zeros(1, dtype=torch.bool),  # not in the model
        }
    )
    with pytest.raises(ValueError) as info:
        masks.apply(model)
    message = str(info.value)
    assert "Sequential" in message and "4 problem" in message
    for expected in ("1.weight", "2.weight", "(3, 2)", "(2, 2)", "2.bias", "head.weight"):
        assert expected in message
    assert "0.weight" not in message
    assert_same_state(model, before)
    assert masks.mismatches(model) and not MaskSet({"0.weight": torch.ones(2, 4)}).mismatches(model)


def test_check_compatible_reports_expected_names_that_are_not_masked():
    model = tiny_model()
    masks = MaskSet({"0.weight": torch.ones(2, 4)})
    with pytest.raises(ValueError, match="not in masks: 2.weight"):
        masks.check_compatible(model, expected_names=["0.weight", "2.weight"])
    masks.check_compatible(model, expected_names=["0.weight"])


@pytest.mark.parametrize("gradient_hooks", [True, False])
def test_enforcer_masks_gradients_and_weights(gradient_hooks):
    model = tiny_model()
    masks = MaskSet({"0.weight": torch.rand(2, 4) < 0.5, "2.weight": torch.tensor([[True, False], [True, True]])})
    masks.apply(model)
    enforcer = MaskEnforcer(model, masks, gradient_hooks=gradient_hooks)
    assert enforcer.uses_hooks == gradient_hooks
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9, weight_decay=0.1)
    for _ in range(3):
        optimizer.zero_grad()
        model(torch.randn(5, 4)).pow(2).sum().backward()
        enforcer.mask_gradients()
        for name, param in model.named_parameters():
            if name in masks:
                assert not param.grad[~masks[name]].any()
        optimizer.step()
        enforcer.zero_weights()
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        assert not params[name][~mask].any()
        assert not optimizer.state[params[name]]["momentum_buffer"][~mask].any()
        assert params[name][mask].all()  # kept weights are still alive


def test_enforcer_keeps_weights_zero_against_stale_optimizer_state():
    """Masking gradients is not enough when the optimizer already has momentum (pruning after some training)."""
    model = tiny_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    for _ in range(2):  # unmasked steps populate non-zero momentum buffers
        optimizer.zero_grad()
        model(torch.randn(5, 4)).pow(2).sum().backward()
        optimizer.step()
    masks = MaskSet({"0.weight": torch.rand(2, 4) < 0.5, "2.weight": torch.tensor([[True, False], [False, True]])})
    masks.apply(model)
    enforcer = MaskEnforcer(model, masks)
    params = dict(model.named_parameters())
    assert any(optimizer.state[params[n]]["momentum_buffer"][~m].any() for n, m in masks.items())
    for _ in range(3):
        optimizer.zero_grad()
        model(torch.randn(5, 4)).pow(2).sum().backward()
        enforcer.mask_gradients()
        optimizer.step()
        enforcer.zero_weights()
        for name, mask in masks.items():
            assert not params[name][~mask].any()


def test_a_kill_right_after_the_commit_leaves_a_complete_folder_and_no_temporary_one(tmp_path, monkeypatch):
    """A fresh folder is moved into place by one rename: whenever a kill comes, the parent holds either nothing or the
    complete folder, never an (empty) temporary folder that a resumed checkpoint would keep for ever."""
    from autosparse_hf.masks import maskset

    class Killed(Exception):
        pass

    real_replace = os.replace

    def replace_then_die(src, dst):  # noqa: ANN001, ANN202
        real_replace(src, dst)
        raise Killed  # the process dies right after the first rename of the commit

    monkeypatch.setattr(maskset.os, "replace", replace_then_die)
    with pytest.raises(Killed):
        hand_made().save_pretrained(tmp_path / "masks")
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == ["masks"]
    loaded = MaskSet.from_pretrained(tmp_path / "masks")
    assert all(torch.equal(loaded[n], hand_made()[n]) for n in loaded)
