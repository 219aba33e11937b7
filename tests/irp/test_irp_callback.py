"""``IRPCallback`` in real ``transformers.Trainer`` runs on a tiny model: rewinding, schedules, survival record,
length checks, bad input, kill-and-resume and late rewinding."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from irp_utils import (
    STEPS_PER_EPOCH,
    EnforceMask,
    StopAt,
    assert_same_tensors,
    lenet,
    make_trainer,
    run_irp,
    state_of,
    step_logs,
    tiny_bn_net,
    training_args,
)
from transformers import TrainerCallback

from autosparse_hf import IRPCallback, IRPConfig, MaskSet, get_prunable_parameters, kept_counts
from autosparse_hf.irp.callback import CHECKPOINT_STATE_DIR, RUN_DIR, RUN_FILE
from autosparse_hf.masks import zero_pruned_weights

TINY = dict(cycles=3, final_sparsity=0.9, feature_num_batches=2)


class CycleEndRecorder(TrainerCallback):
    """Placed before the IRP callback: sees every trained ticket before it is pruned and rewound."""

    def __init__(self) -> None:
        self.irp: IRPCallback | None = None
        self.tickets: list[dict] = []

    def on_evaluate(self, args, state, control, model=None, **kwargs):  # noqa: ANN001, ANN201
        irp = self.irp
        if not irp._pending_end:
            return
        masks = irp.masks.clone()
        weights = {n: p.detach().clone() for n, p in model.named_parameters() if n in masks}
        self.tickets.append({"cycle": irp.cycle, "step": state.global_step, "mask": masks, "weights": weights})


class StepProbe(TrainerCallback):
    """Records the full state when given steps begin (before their forward pass) and end."""

    def __init__(self, begin_steps=(), end_steps=()) -> None:  # noqa: ANN001
        self.begin_steps, self.end_steps = set(begin_steps), set(end_steps)
        self.at_begin: dict[int, dict] = {}
        self.at_end: dict[int, dict] = {}

    def on_step_begin(self, args, state, control, model=None, optimizer=None, lr_scheduler=None, **kwargs):  # noqa: ANN001, ANN201
        if state.global_step in self.begin_steps:
            opt = getattr(optimizer, "optimizer", optimizer)
            self.at_begin[state.global_step] = {
                "state": state_of(model),
                "optimizer_state_size": len(opt.state),
                "lr": [g["lr"] for g in opt.param_groups],
            }

    def on_step_end(self, args, state, control, model=None, **kwargs):  # noqa: ANN001, ANN201
        if state.global_step in self.end_steps:
            self.at_end[state.global_step] = {"state": state_of(model)}


def masked(state: dict[str, torch.Tensor], masks: MaskSet) -> dict[str, torch.Tensor]:
    out = {k: v.clone() for k, v in state.items()}
    for name, mask in masks.items():
        out[name] = out[name] * mask
    return out


# ---------------------------------------------------------------------------------------------------------- rewind


@pytest.mark.parametrize("scheduler,epochs", [("linear", 2), ("cosine", 1)])
def test_second_cycle_equals_fresh_run_from_rewound_masked_weights(tmp_path: Path, scheduler: str, epochs: int) -> None:
    """Cycle 2 must train exactly like a fresh one-cycle run of (initial weights * cycle-1 mask): same per-step loss,
    learning rate and gradient norm, same final weights. Fails if momentum, the LR schedule, weight decay state or
    any parameter carried over from cycle 1."""
    config = IRPConfig(cycles=1, final_sparsity=0.8, feature_num_batches=1)
    overrides = dict(lr_scheduler_type=scheduler, warmup_steps=0.25)
    trainer, irp = run_irp(tmp_path / "irp", config, epochs_per_cycle=epochs, **overrides)
    length = epochs * STEPS_PER_EPOCH
    irp_steps = step_logs(trainer)
    assert len(irp_steps) == 2 * length
    ticket = irp.mask_after(1)
    assert ticket.num_kept == kept_counts(ticket.numel, 1, 0.8, "equal_count")[1]

    fresh_model = lenet(seed=0)
    zero_pruned_weights(fresh_model, ticket)
    fresh = make_trainer(
        fresh_model,
        training_args(tmp_path / "fresh", num_train_epochs=epochs, **overrides),
        [EnforceMask(dict(ticket))],
    )
    fresh.train()
    fresh_steps = step_logs(fresh)
    assert len(fresh_steps) == length
    for key in ("loss", "learning_rate", "grad_norm"):
        cycle2 = [s[key] for s in irp_steps[length:]]
        one_cycle = [s[key] for s in fresh_steps]
        assert cycle2 == one_cycle, key
        # Cycle 1 ran the same schedule from the same position (warm-up included).
        if key == "learning_rate":
            assert [s[key] for s in irp_steps[:length]] == one_cycle
    assert len(set(s["learning_rate"] for s in fresh_steps)) > 3  # the schedule is not constant
    assert_same_tensors(state_of(trainer.model), state_of(fresh.model), "final weights")
    # The two cycles trained different networks (the test would be vacuous otherwise).
    assert [s["loss"] for s in irp_steps[:length]] != [s["loss"] for s in irp_steps[length:]]


def test_rewind_restores_buffers_biases_optimizer_and_schedule(tmp_path: Path) -> None:
    model = tiny_bn_net(seed=3)
    init = state_of(model)
    assert int(init["bn.num_batches_tracked"]) == 0
    config = IRPConfig(cycles=2, final_sparsity=0.75, feature_num_batches=2)
    probe = StepProbe(begin_steps=[0, STEPS_PER_EPOCH, 2 * STEPS_PER_EPOCH])
    trainer, irp = run_irp(tmp_path, config, model=model, after=[probe])
    assert set(get_prunable_parameters(trainer.model)) == {"fc1.weight", "fc2.weight"}
    first = probe.at_begin[0]
    for cycle in (1, 2):
        begin = probe.at_begin[cycle * STEPS_PER_EPOCH]
        expected = masked(init, irp.mask_after(cycle))
        assert_same_tensors(begin["state"], expected, f"state at the start of cycle {cycle + 1}")
        assert begin["optimizer_state_size"] == 0  # momentum buffers start over
        assert begin["lr"] == first["lr"]  # the schedule starts over
    # Training really changed the running statistics, so the check above is not vacuous.
    final = state_of(trainer.model)
    assert not torch.equal(final["bn.running_mean"], init["bn.running_mean"])
    assert int(final["bn.num_batches_tracked"]) == STEPS_PER_EPOCH


# ---------------------------------------------------------------------------------------- schedules and records


CUSTOM_DENSITIES = [0.6, 0.25, 0.1]  # 3 cycles to 90%, like TINY, on another path


@pytest.fixture(scope="module", params=["equal_count", "geometric", "custom"])
def schedule_run(request, tmp_path_factory):  # noqa: ANN001, ANN201
    folder = tmp_path_factory.mktemp(f"irp-{request.param}")
    recorder = CycleEndRecorder()
    if request.param == "custom":
        config = IRPConfig(**{**TINY, "cycles": 1, "final_sparsity": 0.5}, densities=CUSTOM_DENSITIES)
        assert (config.cycles, config.final_sparsity, config.schedule) == (3, pytest.approx(0.9), "custom")
    else:
        config = IRPConfig(**TINY, schedule=request.param)
    irp = IRPCallback(config, model_name="lenet300100", task_name="digits")
    recorder.irp = irp
    trainer = make_trainer(lenet(), training_args(folder, num_train_epochs=config.training_cycles), [recorder, irp])
    trainer.train()
    return {"folder": folder, "irp": irp, "trainer": trainer, "recorder": recorder, "schedule": request.param}


def test_densities_follow_the_schedule_exactly(schedule_run) -> None:  # noqa: ANN001
    irp: IRPCallback = schedule_run["irp"]
    total = irp.total
    assert total == 64 * 300 + 300 * 100 + 100 * 10
    counts = kept_counts(total, 3, 0.9, schedule_run["schedule"], irp.config.densities)
    assert irp.counts == counts
    if schedule_run["schedule"] == "custom":
        assert counts == [total, *(round(d * total) for d in CUSTOM_DENSITIES)]
    assert [h["cycle"] for h in irp.history] == [1, 2, 3, 4]
    assert [h["step"] for h in irp.history] == [8, 16, 24, 32]
    for h in irp.history:
        kept = counts[min(h["cycle"] - 1, 3)]
        assert h["density"] == kept / total
        assert h["sparsity"] == pytest.approx(1 - kept / total)
        assert "eval_accuracy" in h and "eval_loss" in h
        assert not any(k.startswith("irp_") for k in h)
    for c in range(4):
        assert irp.mask_after(c).num_kept == counts[c]
        assert irp.mask_after(c).density == counts[c] / total
    with pytest.raises(ValueError, match="cycle must be in"):
        irp.mask_after(4)


def test_masks_nested_and_survival_record_consistent(schedule_run) -> None:  # noqa: ANN001
    irp: IRPCallback = schedule_run["irp"]
    counts = irp.counts
    for c in range(3):
        assert irp.mask_after(c + 1).is_subset_of(irp.mask_after(c))
    values = torch.cat([t.reshape(-1) for t in irp.cycle_pruned.values()])
    assert values.dtype == torch.int16
    assert int(values.min()) >= 1 and int(values.max()) <= 4
    for c in range(1, 4):
        assert int((values == c).sum()) == counts[c - 1] - counts[c]
        for name, record in irp.cycle_pruned.items():
            assert torch.equal(irp.mask_after(c)[name], record > c)
    assert int((values == 4).sum()) == counts[-1]
    final = MaskSet.from_pretrained(schedule_run["folder"] / RUN_DIR / "final_mask")
    assert sorted(final) == sorted(irp.cycle_pruned)
    for name in final:
        assert torch.equal(final[name], irp.mask_after(3)[name])
        assert torch.equal(final[name], irp.cycle_pruned[name] == 4)


def test_every_ticket_is_masked_and_pruned_by_trained_magnitude(schedule_run) -> None:  # noqa: ANN001
    irp: IRPCallback = schedule_run["irp"]
    tickets = schedule_run["recorder"].tickets
    assert [t["cycle"] for t in tickets] == [1, 2, 3, 4]
    for ticket in tickets:
        cycle = ticket["cycle"]
        in_force = irp.mask_after(min(cycle - 1, 3))
        for name, mask in ticket["mask"].items():
            assert torch.equal(mask, in_force[name])  # cycle c trains the mask after cycle c - 1
            weights = ticket["weights"][name]
            assert bool((weights[~mask] == 0).all()), f"pruned weights of {name} moved in cycle {cycle}"
            assert int((weights[mask] != 0).sum()) == int(mask.sum())  # survivors trained (none stuck at zero)
        if cycle <= 3:
            # Global magnitude on the trained weights: every survivor outweighs every weight pruned now.
            pruned_now = torch.cat([ticket["weights"][n][irp.cycle_pruned[n] == cycle].abs() for n in ticket["mask"]])
            kept = torch.cat([ticket["weights"][n][irp.cycle_pruned[n] > cycle].abs() for n in ticket["mask"]])
            assert pruned_now.numel() == irp.counts[cycle - 1] - irp.counts[cycle]
            assert float(kept.min()) >= float(pruned_now.max())


def test_surviving_scores_of_the_run(schedule_run) -> None:  # noqa: ANN001
    irp: IRPCallback = schedule_run["irp"]
    ds = irp.to_dataset()
    assert len(ds) == irp.total
    columns = ds.with_format("numpy")[:]
    score = torch.from_numpy(columns["surviving_score"])
    survived = torch.from_numpy(columns["survived"])
    assert float(score.min()) >= 0.0 and float(score.max()) <= 1.0
    assert bool((score[survived] == 1.0).all()) and bool((score[~survived] < 1.0).all())
    assert int(survived.sum()) == irp.counts[-1]
    folder = schedule_run["folder"] / RUN_DIR
    for name in ("irp_run.json", "irp_record.safetensors", "cycles.csv", "cycles.md", "cycles.png", "scores.parquet"):
        assert (folder / name).is_file(), name
    info = json.loads((folder / RUN_FILE).read_text())
    assert info["finished"] and info["counts"] == irp.counts and info["identity"]["run_id"]


def test_finished_output_dir_is_refused(schedule_run, tmp_path: Path) -> None:  # noqa: ANN001
    folder = schedule_run["folder"]
    before = (folder / RUN_DIR / RUN_FILE).read_text()
    with pytest.raises(ValueError, match="already holds an IRP run"):
        run_irp(folder, IRPConfig(**TINY))
    assert (folder / RUN_DIR / RUN_FILE).read_text() == before


# ------------------------------------------------------------------------------------------------- length checks


def test_epochs_not_a_multiple_of_the_cycles_is_refused_with_the_value_to_use(tmp_path: Path) -> None:
    # 3 cycles + the final ticket = 4 training cycles; 5 epochs do not divide into them.
    with pytest.raises(ValueError, match=r"num_train_epochs = 4 x \(epochs per cycle\), e\.g\. 4") as err:
        run_irp(tmp_path, IRPConfig(**TINY), num_train_epochs=5)
    assert "4 training cycles" in str(err.value)
    # 9 epochs of 8 steps would divide into 4 cycles of 18 steps, but not into whole epochs per cycle.
    with pytest.raises(ValueError, match=r"num_train_epochs=9 is not a whole multiple of 4.*e\.g\. 8"):
        run_irp(tmp_path, IRPConfig(**TINY), num_train_epochs=9)
    with pytest.raises(ValueError, match="use max_steps=32"):
        run_irp(tmp_path, IRPConfig(**TINY), max_steps=30)
    assert not (tmp_path / RUN_DIR).exists()


def test_rewind_step_beyond_the_first_cycle_is_refused(tmp_path: Path) -> None:
    config = IRPConfig(cycles=1, final_sparsity=0.5, rewind_step=20)
    with pytest.raises(ValueError, match="rewind_step=20 must be smaller than the cycle length"):
        run_irp(tmp_path, config, num_train_epochs=2)


def test_without_eval_set_or_evaluation(tmp_path: Path) -> None:
    config = IRPConfig(cycles=2, final_sparsity=0.5, feature_num_batches=1, evaluate_cycles=False)
    irp = IRPCallback(config)
    make_trainer(lenet(), training_args(tmp_path, num_train_epochs=3), [irp], eval_dataset=False).train()
    assert irp.finished and [h["density"] for h in irp.history] == [1.0, 0.75, 0.5]
    assert not any(k.startswith("eval_") for h in irp.history for k in h)
    assert (tmp_path / RUN_DIR / RUN_FILE).is_file()


# ---------------------------------------------------------------------------------------------- kill and resume


def _kill_resume_args() -> dict:
    # The default random sampler: resuming must also reproduce the data order.
    return dict(train_sampling_strategy="random", logging_steps=4)


def test_kill_and_resume_equals_an_uninterrupted_run(tmp_path: Path) -> None:
    # SNIP reads training batches at every cycle end: the resumed run must score on the same batches too.
    config = IRPConfig(**TINY, criterion="snip", criterion_num_batches=2)
    ids = {"run_id": "fixed-run", "seed": 0}
    ref_trainer, ref = run_irp(tmp_path / "ref", config, irp_kwargs=ids, **_kill_resume_args())

    killed_dir = tmp_path / "killed"
    # Checkpoints at steps 4 (mid-cycle 1), 8 (cycle 1's end, after the rewind), 12 (mid-cycle 2); killed at 14.
    _, killed = run_irp(
        killed_dir, config, irp_kwargs=ids, after=[StopAt(14)], save_strategy="steps", save_steps=4,
        **_kill_resume_args(),
    )
    assert not killed.finished
    assert not (killed_dir / RUN_DIR).exists(), "a killed run must not leave a result folder"
    assert sorted(p.name for p in killed_dir.glob("checkpoint-*")) == ["checkpoint-12", "checkpoint-4", "checkpoint-8"]
    for step in (4, 8, 12):
        assert (killed_dir / f"checkpoint-{step}" / CHECKPOINT_STATE_DIR / "state.json").is_file()

    reference = ref.to_dataset()
    for step in (12, 8):
        copy = tmp_path / f"resume-from-{step}"
        shutil.copytree(killed_dir, copy)
        # A new process would build a new model and a new callback; the run id comes from the checkpoint.
        trainer, resumed = run_irp(
            copy, config, model=lenet(seed=123), resume_from_checkpoint=str(copy / f"checkpoint-{step}"),
            save_strategy="steps", save_steps=4, **_kill_resume_args(),
        )
        assert resumed.finished and resumed.identity == ref.identity
        for name in ref.cycle_pruned:
            assert torch.equal(resumed.cycle_pruned[name], ref.cycle_pruned[name]), name
        for key in ("cycle", "density", "step", "eval_loss", "eval_accuracy"):
            assert [h[key] for h in resumed.history] == [h[key] for h in ref.history], key
        assert resumed.to_dataset().data.table.equals(reference.data.table)
        final = MaskSet.from_pretrained(copy / RUN_DIR / "final_mask")
        reference_final = MaskSet.from_pretrained(tmp_path / "ref" / RUN_DIR / "final_mask")
        assert all(torch.equal(final[n], reference_final[n]) for n in reference_final)
        assert_same_tensors(state_of(trainer.model), state_of(ref_trainer.model), f"final ticket, resumed at {step}")


def test_resume_with_another_configuration_or_without_state_is_refused(tmp_path: Path) -> None:
    config = IRPConfig(cycles=1, final_sparsity=0.8, feature_num_batches=1)
    run_irp(tmp_path, config, after=[StopAt(6)], save_strategy="steps", save_steps=4)
    checkpoint = tmp_path / "checkpoint-4"
    other = IRPConfig(cycles=1, final_sparsity=0.5, feature_num_batches=1)
    with pytest.raises(ValueError, match="different IRP configuration") as err:
        run_irp(tmp_path, other, resume_from_checkpoint=str(checkpoint), save_strategy="steps", save_steps=4)
    assert "final_sparsity" in str(err.value) and "0.8" in str(err.value)
    shutil.rmtree(checkpoint / CHECKPOINT_STATE_DIR)
    with pytest.raises(FileNotFoundError, match="without IRPCallback"):
        run_irp(tmp_path, config, resume_from_checkpoint=str(checkpoint), save_strategy="steps", save_steps=4)


# ------------------------------------------------------------------------------------------------- late rewinding


def test_late_rewinding(tmp_path: Path) -> None:
    k, length = 3, STEPS_PER_EPOCH
    config = IRPConfig(cycles=2, final_sparsity=0.75, rewind_step=k, feature_num_batches=1)
    n = config.training_cycles
    total = length + (n - 1) * (length - k)  # 8 + 2 * 5 = 18
    with pytest.raises(ValueError, match=f"use max_steps={(length + 1) + (n - 1) * (length + 1 - k)}"):
        run_irp(tmp_path / "bad", config, max_steps=total + 1)

    ends = [length + c * (length - k) for c in range(n)]  # [8, 13, 18]
    probe = StepProbe(begin_steps=ends[:-1], end_steps=[k])
    trainer, irp = run_irp(tmp_path / "run", config, max_steps=total, after=[probe])
    assert irp.finished and [h["step"] for h in irp.history] == ends
    assert [h["density"] for h in irp.history] == [c / irp.total for c in (irp.counts[0], irp.counts[1], irp.counts[2])]
    snapshot_k = probe.at_end[k]["state"]
    for c, end in enumerate(ends[:-1], start=1):
        begin = probe.at_begin[end]
        assert_same_tensors(begin["state"], masked(snapshot_k, irp.mask_after(c)), f"rewound to step {k}")
        assert begin["optimizer_state_size"] == 0
    # The schedule resumes at step k: each later cycle replays cycle 1's learning rates from step k + 1 on.
    lrs = {int(s["step"]): s["learning_rate"] for s in step_logs(trainer)}
    cycle1 = [lrs[s] for s in range(k + 1, length + 1)]
    for end, next_end in zip(ends, ends[1:], strict=False):
        assert [lrs[s] for s in range(end + 1, next_end + 1)] == cycle1
    assert (tmp_path / "run" / RUN_DIR / RUN_FILE).is_file()
