"""Shared helpers of the benchmark commands: timing, memory, the Markdown table and the JSON result file.

Every benchmark prints a small Markdown table with absolute numbers and the ratio against its target, and writes the
same numbers as JSON (``--output``, default ``benchmarks/results/<name>.json``) with the keys ``benchmark``,
``config``, ``results``, ``target`` and ``environment``.
"""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

BENCHMARKS_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCHMARKS_DIR / "results"
MB = 1024 * 1024

# Everything offline: the benchmarks download nothing (timm models are built with pretrained=False).
for _key in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.setdefault(_key, "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def default_output(name: str) -> str:
    return str(RESULTS_DIR / f"{name}.json")


def add_scoring_model_arguments(parser: Any) -> None:
    """The timm model scored and the one batch of random images its g0 comes from (scoring and memory runs)."""
    parser.add_argument("--model", default="resnet18", help="timm model name (built with pretrained=False).")
    parser.add_argument("--num_classes", type=int, default=1000, help="Classifier outputs of the timm model.")
    parser.add_argument("--batch_size", type=int, default=8, help="Images in the one batch g0 is computed on.")
    parser.add_argument("--image_size", type=int, default=64, help="Height and width of the random images.")


def add_threads_argument(parser: Any) -> None:
    parser.add_argument(
        "--threads", type=int, default=None, help="torch intra-op threads (default: torch's own choice)."
    )


def apply_threads(threads: int | None) -> None:
    if threads is not None:
        import torch

        torch.set_num_threads(threads)


def synflow_passes(model: Any, batch: dict, rounds: int) -> Callable[[], None]:
    """``rounds`` SynFlow forward/backward passes alone, on a copy of ``model``: what SynFlow cannot avoid.

    The same passes as ``SynFlowCriterion`` (its input from the family adapter, eval mode, absolute weights, only the
    prunable parameters requiring gradients, gradients cleared before each pass), without scoring, selection or
    bookkeeping. Returns the function that runs them (the preparation is not timed).
    """
    import copy

    import torch

    from autosparse_hf import get_prunable_parameters
    from autosparse_hf.families import get_family

    model = copy.deepcopy(model)
    family, params = get_family(model), get_prunable_parameters(model)
    inputs = family.synflow_inputs(model, batch)
    model.eval()
    with torch.no_grad():
        for p in model.parameters():
            p.abs_()
            p.requires_grad_(False)
    for p in params.values():
        p.param.requires_grad_(True)

    def run() -> None:
        for _ in range(rounds):
            for p in params.values():
                p.param.grad = None
            family.synflow_output(model, inputs).sum().backward()

    return run


# ---------------------------------------------------------------------------------------------------------- timing
def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def quartiles(values: Sequence[float]) -> list[float]:
    """First quartile, median and third quartile of ``values`` (one value: itself three times)."""
    if len(values) < 2:
        return [float(values[0])] * 3
    first, _, third = statistics.quantiles(values, n=4)
    return [float(first), median(values), float(third)]


@contextmanager
def timed(store: dict[str, float], key: str) -> Iterator[None]:
    """Add the wall time of the block to ``store[key]``."""
    start = time.perf_counter()
    try:
        yield
    finally:
        store[key] = store.get(key, 0.0) + time.perf_counter() - start


def wrap_timed(owner: Any, attribute: str, store: dict[str, float], key: str) -> Callable[[], None]:
    """Replace ``owner.attribute`` (a function or method) by a wrapper adding its wall time to ``store[key]``.

    Only the benchmark process is patched (nothing in the library changes); returns a function that undoes it.
    """
    original = getattr(owner, attribute)
    had_own = attribute in vars(owner) if hasattr(owner, "__dict__") else False

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            store[key] = store.get(key, 0.0) + time.perf_counter() - start
            store[f"{key}_calls"] = store.get(f"{key}_calls", 0) + 1

    wrapper.__wrapped__ = original  # type: ignore[attr-defined]
    setattr(owner, attribute, wrapper)

    def undo() -> None:
        if had_own:
            setattr(owner, attribute, original)
        else:
            delattr(owner, attribute)

    return undo


def wrap_timed_iterator(owner: Any, attribute: str, store: dict[str, float], key: str) -> Callable[[], None]:
    """Like :func:`wrap_timed` for a generator function: adds the time spent producing each item to ``store[key]``
    (the consumer's time between items is not counted)."""
    original = getattr(owner, attribute)

    def wrapper(*args: Any, **kwargs: Any) -> Iterator[Any]:
        iterator = iter(original(*args, **kwargs))
        while True:
            start = time.perf_counter()
            try:
                item = next(iterator)
            except StopIteration:
                store[key] = store.get(key, 0.0) + time.perf_counter() - start
                return
            store[key] = store.get(key, 0.0) + time.perf_counter() - start
            yield item

    setattr(owner, attribute, wrapper)
    return lambda: setattr(owner, attribute, original)


# ---------------------------------------------------------------------------------------------------------- memory
def _proc_status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def rss_bytes() -> int:
    """Resident set size now (anonymous and file-backed pages, so Arrow buffers and touched memory maps count)."""
    kb = _proc_status_kb("VmRSS")
    if kb is not None:
        return kb * 1024
    import psutil  # not on Linux: psutil (a dependency of accelerate) knows the platform's way

    return int(psutil.Process().memory_info().rss)


def reset_peak_rss() -> bool:
    """Reset the RSS high-water mark (VmHWM) to the current RSS (Linux >= 4.0); ``False`` where that is impossible."""
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int:
    """RSS high-water mark of this process (since start or since the last ``reset_peak_rss``)."""
    kb = _proc_status_kb("VmHWM")
    if kb is not None:
        return kb * 1024
    import resource

    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, kB on Linux
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * scale


def rss_parts_bytes() -> dict[str, int]:
    """Anonymous (private) and file-backed parts of the RSS now; empty where /proc is not available.

    Pages of a memory-mapped file that the process touches (and, through the kernel's fault-around, their
    neighbours already in the page cache) count in RSS as ``RssFile``: shared, reclaimable page cache, not memory the
    process allocated; ``RssAnon`` is what it allocated.
    """
    parts = {}
    for field, key in (("RssAnon", "anon"), ("RssFile", "file"), ("RssShmem", "shmem")):
        kb = _proc_status_kb(field)
        if kb is not None:
            parts[key] = kb * 1024
    return parts


class AnonPeakSampler:
    """Highest ``RssAnon`` seen by a background thread sampling every ``interval`` seconds during a block."""

    def __init__(self, interval: float = 0.002) -> None:
        self.interval = interval

    def __enter__(self) -> AnonPeakSampler:
        import threading

        self.baseline_bytes = rss_parts_bytes().get("anon", 0)
        self.peak_bytes = self.baseline_bytes
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_bytes = max(self.peak_bytes, rss_parts_bytes().get("anon", 0))
            self._stop.wait(self.interval)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_bytes = max(self.peak_bytes, rss_parts_bytes().get("anon", 0))
        self.delta_bytes = max(self.peak_bytes - self.baseline_bytes, 0)


class PeakRSS:
    """Peak RSS increase over a block: ``with PeakRSS() as peak: ...; peak.delta_bytes``.

    Resets the kernel's high-water mark first, so earlier peaks of the process do not count; where that is not
    possible, ``exact`` is ``False`` and the delta is a lower bound only if the earlier peak was lower.
    """

    def __enter__(self) -> PeakRSS:
        self.exact = reset_peak_rss()
        self.baseline_bytes = rss_bytes()
        return self

    def __exit__(self, *exc: object) -> None:
        self.peak_bytes = peak_rss_bytes()
        self.end_bytes = rss_bytes()
        self.delta_bytes = max(self.peak_bytes - self.baseline_bytes, 0)


def directory_bytes(path: str | os.PathLike[str]) -> int:
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


# ------------------------------------------------------------------------------------------------------ subprocess
def run_child(args: Sequence[str], timeout: float | None = None) -> dict[str, Any]:
    """Run ``python <args>`` in a fresh interpreter and return the JSON object on the last line of its stdout."""
    proc = subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=timeout, env=os.environ.copy()
    )
    if proc.returncode != 0:
        raise RuntimeError(f"child {' '.join(args)} failed with exit code {proc.returncode}:\n{proc.stderr[-4000:]}")
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise RuntimeError(f"child {' '.join(args)} printed no JSON result:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    return json.loads(lines[-1])


def child_reply(payload: dict[str, Any]) -> None:
    """What a child process prints last: one JSON line."""
    sys.stdout.write("\n" + json.dumps(payload) + "\n")
    sys.stdout.flush()


# ----------------------------------------------------------------------------------------------------- environment
def environment() -> dict[str, Any]:
    """Where the numbers were taken: compare benchmark results only across equal environments."""
    from importlib import metadata

    try:
        load = list(os.getloadavg())
    except OSError:
        load = None
    torch = sys.modules.get("torch")  # a parent that only starts measuring children does not import torch for this
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": metadata.version("torch"),
        "torch_threads": torch.get_num_threads() if torch is not None else None,
        "cuda": torch.cuda.is_available() if torch is not None else None,
        "load_average": load,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def target_entry(
    description: str, measured: float, target: float, unit: str, higher_is_better: bool
) -> dict[str, Any]:
    """The target check: ``ratio`` = measured / target; met when ratio >= 1 (higher is better) or <= 1."""
    ratio = measured / target if target else math.inf
    met = ratio >= 1.0 if higher_is_better else ratio <= 1.0
    return {
        "description": description,
        "measured": measured,
        "target": target,
        "unit": unit,
        "ratio": ratio,
        "higher_is_better": higher_is_better,
        "met": bool(met),
    }


# ---------------------------------------------------------------------------------------------------------- output
def fmt(value: Any, digits: int = 3) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value == 0 or not math.isfinite(value):
            return str(value)
        magnitude = abs(value)
        if magnitude >= 1e5:
            return f"{value:,.0f}"
        if magnitude >= 100:
            return f"{value:,.1f}"
        return f"{value:.{digits}g}"
    return str(value)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(h) for h in headers], *[[fmt(v) for v in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |" for row in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def target_line(target: dict[str, Any]) -> str:
    verdict = "met" if target["met"] else "NOT met"
    return (
        f"Target: {target['description']}: measured {fmt(target['measured'])} {target['unit']} vs target "
        f"{fmt(target['target'])} {target['unit']}, measured/target = {target['ratio']:.3f} ({verdict})"
    )


def report(
    name: str,
    config: dict[str, Any],
    results: dict[str, Any],
    target: dict[str, Any],
    table: str,
    output: str | None,
) -> dict[str, Any]:
    """Print the Markdown table and target line; write the JSON result; return it."""
    payload = {
        "benchmark": name,
        "config": config,
        "results": results,
        "target": target,
        "environment": environment(),
    }
    print(f"\n## {name}\n")
    print(table)
    print()
    print(target_line(target))
    path = Path(output or default_output(name))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=float) + "\n")
    print(f"\nwritten: {path}")
    return payload
