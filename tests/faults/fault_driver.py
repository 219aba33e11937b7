"""Driver of the fault-injection tests: a tiny IRP or PaI run that a kill can end at any write boundary.

One job trains a tiny network (64 -> 16 -> BatchNorm -> 10, 1,184 prunable weights) on 64 digits with a real
``Trainer`` and ``IRPCallback`` (``irp``: 2 pruning cycles + the final ticket, a checkpoint at every cycle end, at
most two kept) or ``PaICallback`` (``pai``: SNIP at 75%, a checkpoint every 4 of 8 steps). Every job first resumes
from what its output folder holds, as ``recipes/irp.py`` does (``irp.runner.run_irp``): stale temporary folders are
removed, checkpoints whose callback part is incomplete are removed, the newest complete one is resumed; a finished
IRP run is not run again. With ``kill`` set the job ends with ``os._exit`` right after that write boundary
(``kill_points.WriteBoundaries``), with ``census`` it writes the list of boundaries it passed.

Importing torch, transformers and datasets takes seconds, so the tests run this file as a fork server
(``python fault_driver.py serve [PARALLEL]``): it imports everything once, then forks one fresh child per job
(``{"job", "out", "kill", "census"}``; a child's output goes to ``<out>.log``). A child starts from the server's
memory, in which no job has run: resuming in a forked child is resuming in a fresh process. Run directly,
``python fault_driver.py irp OUT [KILL_LABEL]`` runs one job in this process.
"""

from __future__ import annotations

import gc
import json
import os
import sys
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: kill_points

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from kill_points import KILL_ENV, WriteBoundaries  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from torch import nn  # noqa: E402
from transformers import Trainer, TrainingArguments  # noqa: E402
from transformers.modeling_outputs import SequenceClassifierOutput  # noqa: E402

from autosparse_hf import IRPCallback, IRPConfig, PaICallback  # noqa: E402
from autosparse_hf.callbacks.pai import masks_complete  # noqa: E402
from autosparse_hf.checkpoints import last_complete_checkpoint, remove_stale_temporaries  # noqa: E402
from autosparse_hf.irp.checkpoint import is_complete  # noqa: E402
from autosparse_hf.irp.runner import irp_run_complete  # noqa: E402
from autosparse_hf.records import report  # noqa: E402
from autosparse_hf.tasks import compute_metrics_for_classification, load_task  # noqa: E402

ROWS = 64
BATCH = 16  # 4 optimizer steps per epoch
IRP_CONFIG = IRPConfig(cycles=2, final_sparsity=0.8, criterion="snip", feature_num_batches=2)
PAI_SPARSITY = 0.75


class TinyNet(nn.Module):
    """Linear -> BatchNorm -> ReLU -> Linear: a rewind must restore the running statistics too."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(64, 16)
        self.bn = nn.BatchNorm1d(16)
        self.fc2 = nn.Linear(16, 10)

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None) -> SequenceClassifierOutput:
        logits = self.fc2(torch.relu(self.bn(self.fc1(pixel_values.flatten(1)))))
        loss = nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=logits)


def tiny_net() -> TinyNet:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return TinyNet()


class Rows(torch.utils.data.Dataset):
    """Rows held as tensors: reading them through ``datasets``' formatting would cost more than training on them."""

    def __init__(self, split: Dataset) -> None:
        self.pixel_values, self.labels = split["pixel_values"][:ROWS], split["labels"][:ROWS]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"pixel_values": self.pixel_values[index], "labels": self.labels[index]}


def tiny_task() -> dict[str, Rows]:
    task = load_task("digits", seed=0)
    return {"train": Rows(task["train"]), "test": Rows(task["test"])}


def training_arguments(out: Path, **overrides: object) -> TrainingArguments:
    kwargs: dict[str, object] = dict(
        output_dir=str(out),
        per_device_train_batch_size=BATCH,
        per_device_eval_batch_size=ROWS,
        learning_rate=0.05,
        optim="sgd",
        optim_args="momentum=0.9",
        weight_decay=5e-4,
        lr_scheduler_type="linear",
        seed=0,
        data_seed=0,
        train_sampling_strategy="random",
        logging_strategy="no",
        save_strategy="steps",
        save_steps=4,
        eval_strategy="no",
        report_to=[],
        disable_tqdm=True,
        use_cpu=True,
        average_tokens_across_devices=False,
        dataloader_num_workers=0,
    )
    kwargs.update(overrides)
    return TrainingArguments(**kwargs)


def run_job(job: str, out: Path, data: dict[str, Rows]) -> None:
    """Train (resuming whatever ``out`` holds) to the end; the results are the files written into ``out``."""
    if job == "irp":
        if irp_run_complete(out):
            return  # the run finished before the kill; runner.run_irp refuses to run it again
        callback = IRPCallback(IRP_CONFIG, model_name="tiny", task_name="digits64", run_id="fault-injection")
        args = training_arguments(out, num_train_epochs=IRP_CONFIG.training_cycles, save_total_limit=2)
        complete = is_complete
    elif job == "pai":
        callback = PaICallback("snip", PAI_SPARSITY)
        args = training_arguments(out, max_steps=8)
        complete = masks_complete
    else:
        raise ValueError(f"unknown job {job!r}")
    remove_stale_temporaries(out)
    checkpoint = last_complete_checkpoint(out, complete, remove_incomplete=True)
    trainer = Trainer(
        model=tiny_net(),
        args=args,
        train_dataset=data["train"],
        eval_dataset=data["test"],
        compute_metrics=compute_metrics_for_classification,
        callbacks=[callback],
    )
    trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint is not None else None)


def _blank_curve(*args: object, **kwargs: object) -> Figure:
    """Stands in for the IRP curve: drawing it costs more than the rest of a job; its write is what is tested."""
    return Figure(figsize=(1, 1))


def child(request: dict[str, str | None], data: dict[str, Rows]) -> None:
    """One job in this (forked) process; never returns."""
    out = Path(str(request["out"]))
    code = 1
    try:
        log = os.open(f"{out}.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        os.dup2(log, 1)
        os.dup2(log, 2)
        out.mkdir(parents=True, exist_ok=True)
        kill = request.get("kill")
        if kill:
            os.environ[KILL_ENV] = kill
        boundaries = WriteBoundaries(out, os.environ.get(KILL_ENV)).install()
        report.plot_irp_curve = _blank_curve
        run_job(str(request["job"]), out, data)
        if request.get("census"):
            Path(str(request["census"])).write_text(json.dumps(boundaries.seen, indent=1))
        code = 0
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def warm_up() -> None:
    """Import and initialise, once in the server, what every job would otherwise set up again in its child."""
    import io

    import pyarrow.parquet  # noqa: F401

    _blank_curve().savefig(io.BytesIO(), format="png", dpi=120)


def serve(parallel: int) -> None:
    """Fork server: read one plan (a JSON list of chains, each a list of job requests) from stdin and run it.

    Up to ``parallel`` jobs run at once, each in its own fork of this process; the jobs of a chain run one after
    the other (a kill, then the resume), each chain's exit statuses are written to stdout as soon as it ends.
    """
    data = tiny_task()
    torch.set_num_threads(1)
    warm_up()
    gc.collect()
    gc.freeze()  # the imported modules stay out of the children's collections (and their pages shared)
    chains = [list(chain) for chain in json.loads(sys.stdin.readline())]
    codes: list[list[int]] = [[] for _ in chains]
    waiting = list(range(len(chains)))
    running: dict[int, int] = {}  # pid -> chain
    while waiting or running:
        while waiting and len(running) < parallel:
            index = waiting.pop(0)
            pid = os.fork()
            if pid == 0:
                child(chains[index][len(codes[index])], data)
            running[pid] = index
        pid, status = os.wait()
        index = running.pop(pid)
        codes[index].append(os.waitstatus_to_exitcode(status))
        if len(codes[index]) < len(chains[index]):
            waiting.insert(0, index)  # its next job (the resume) before new chains
        else:
            print(json.dumps({"chain": index, "codes": codes[index]}), flush=True)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] != "serve":
        if len(sys.argv) > 3:
            os.environ[KILL_ENV] = sys.argv[3]
        WriteBoundaries(sys.argv[2], os.environ.get(KILL_ENV)).install()
        report.plot_irp_curve = _blank_curve
        run_job(sys.argv[1], Path(sys.argv[2]), tiny_task())
    else:
        serve(int(sys.argv[2]) if len(sys.argv) > 2 else 1)
