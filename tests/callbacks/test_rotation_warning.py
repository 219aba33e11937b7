"""save_total_limit=1 deletes the last complete checkpoint before a callback's own state is written: warn, by name."""

from __future__ import annotations

import logging

import pytest

from autosparse_hf import IRPConfig, PaICallback
from tests.irp_utils import lenet, make_trainer, run_irp, training_args

MESSAGE = "save_total_limit=1 deletes the previous checkpoint"


@pytest.mark.parametrize("limit, warned", [(1, True), (2, False), (None, False)])
def test_irp_warns_only_for_a_limit_of_one(tmp_path, caplog, limit, warned):
    config = IRPConfig(cycles=1, final_sparsity=0.5, evaluate_cycles=False)
    with caplog.at_level(logging.WARNING, logger="autosparse_hf"):
        run_irp(tmp_path, config, max_steps=2, save_strategy="steps", save_steps=1, save_total_limit=limit)
    assert (MESSAGE in caplog.text) is warned
    if warned:
        assert "IRPCallback" in caplog.text and "save_total_limit=2" in caplog.text


def test_pai_warns_too_but_not_without_checkpoints(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="autosparse_hf"):
        args = training_args(tmp_path / "a", max_steps=1, save_strategy="steps", save_steps=1, save_total_limit=1)
        make_trainer(lenet(), args, [PaICallback("magnitude", sparsity=0.5)]).train()
    assert MESSAGE in caplog.text and "PaICallback" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="autosparse_hf"):
        args = training_args(tmp_path / "b", max_steps=1, save_strategy="no", save_total_limit=1)
        make_trainer(lenet(), args, [PaICallback("magnitude", sparsity=0.5)]).train()
    assert MESSAGE not in caplog.text
