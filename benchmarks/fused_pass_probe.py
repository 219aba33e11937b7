"""Probe: what a compiled, fused kernel would save in SynFlow's per-round pass (nothing in the library uses one).

SynFlow's rounds (``autosparse_hf.masks.product_round.ProductRound``) read every gradient and weight once a round and,
chunk by chunk in cache, compute the scores ``|g| * w``, their maximum, the flags of the survivors under the round's
bracket and the flags' positions: five numpy passes over each chunk. This probe times that pass on one real SynFlow
round of a timm model (its gradients from the library's family adapter's SynFlow pass: absolute weights, all-ones
input of the batch's size; without ``compute_scores``' revival of zero-initialized normalization scales, so that many
scores are exactly 0.0 and the bracket's key 0 is exercised) against one fused AVX-512 loop written in C (scores, maximum and a compress-store of the flagged
positions and keys, 16 weights at a time), compiled here with ``cc`` into a temporary folder and called through
``ctypes``. Both take the same bracket (the one ``ProductRound.select`` draws for a round removing ``--remove``
of the survivors); the probe checks that they return the same positions, keys and maxima, bit for bit, before it
times them (medians of ``--repeats``, interleaved). The numpy pass is also timed as ``ProductRound.select`` runs it
at ``--pool_threads`` torch threads (one tensor per thread), to show what a second core buys it.

It answers one question for the planners of issue 14 (SynFlow <= 1.5x its passes): how much of a round's overhead a
kernel of the library's own would remove. It needs a C compiler and an AVX-512 CPU, and says so and stops when either
is missing.

    python benchmarks/fused_pass_probe.py [--model resnet18] [--image_size 64] [--remove 0.023] [--repeats 20]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import _common as common
import numpy as np
import torch

KERNEL = r"""
#include <stdint.h>
#include <math.h>
#include <immintrin.h>
/* Scores s = |g| * w (w >= +0.0, pruned -0.0), their maximum (NaN if any is NaN) and the positions and bit patterns
   of those with bits(s) < key before position cut and <= key from it on, 16 at a time. Returns how many. */
int64_t fused_pass(const float* g, const float* w, int64_t n, uint32_t key, int64_t cut,
                   int64_t* pos, uint32_t* keys, float* peak_out) {
    const __m512 magnitude = _mm512_castsi512_ps(_mm512_set1_epi32(0x7fffffff));
    const __m512i at_most = _mm512_set1_epi32((int)key), below = _mm512_set1_epi32((int)(key - 1));
    const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    __m512 peak = _mm512_set1_ps(-INFINITY);
    __mmask16 nan = 0;
    int64_t count = 0, i = 0;
    int32_t offsets[16];
    for (; i + 16 <= n; i += 16) {
        __m512 s = _mm512_mul_ps(_mm512_and_ps(_mm512_loadu_ps(g + i), magnitude), _mm512_loadu_ps(w + i));
        peak = _mm512_max_ps(peak, s);
        nan |= _mm512_cmp_ps_mask(s, s, _CMP_UNORD_Q);
        __m512i bits = _mm512_castps_si512(s);
        __mmask16 chosen;
        if (i >= cut) chosen = _mm512_cmple_epu32_mask(bits, at_most);
        else {
            chosen = key ? _mm512_cmple_epu32_mask(bits, below) : 0;  /* bits < key (none below key 0) */
            if (i + 16 > cut)  /* the block holds the cut: equal keys from it on */
                chosen |= _mm512_cmpeq_epi32_mask(bits, at_most) & _mm512_cmpge_epi32_mask(lane, _mm512_set1_epi32((int)(cut - i)));
        }
        if (chosen) {
            int k = __builtin_popcount(chosen);
            _mm512_mask_compressstoreu_epi32(keys + count, chosen, bits);
            _mm512_mask_compressstoreu_epi32(offsets, chosen, lane);
            for (int j = 0; j < k; j++) pos[count + j] = i + offsets[j];
            count += k;
        }
    }
    float top = _mm512_reduce_max_ps(peak);
    for (; i < n; i++) {
        float s = fabsf(g[i]) * w[i];
        uint32_t b;
        __builtin_memcpy(&b, &s, 4);
        if (s != s) nan = 1;
        if (s > top) top = s;
        if (b < key || (b == key && i >= cut)) { pos[count] = i; keys[count] = b; count++; }
    }
    *peak_out = nan ? NAN : top;
    return count;
}
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet18", help="timm model name (built with pretrained=False).")
    parser.add_argument("--image_size", type=int, default=64, help="Height and width of SynFlow's all-ones input.")
    parser.add_argument("--remove", type=float, default=0.023, help="Share of the survivors the round removes "
                        "(0.023: the first of 100 rounds towards 90% sparsity).")  # fmt: skip
    parser.add_argument("--pool_threads", type=int, default=2, help="Threads of the pooled numpy pass (ProductRound "
                        "runs one tensor per thread on torch's thread count).")  # fmt: skip
    parser.add_argument("--repeats", type=int, default=20, help="Interleaved timings of each pass (medians).")
    common.add_threads_argument(parser)
    parser.add_argument("--output", default=common.default_output("fused_pass_probe"), help="JSON result file.")
    args = parser.parse_args(argv)
    if not 0.0 < args.remove < 1.0 or args.repeats < 1 or args.pool_threads < 1:
        parser.error("--remove must lie in (0, 1), --repeats and --pool_threads be >= 1")
    return args


def compile_kernel(folder: Path) -> ctypes.CDLL | str:
    """The kernel as a shared library, or why it cannot be had here."""
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    missing = [f for f in ("avx512f", "avx512bw", "avx512vl", "avx512dq") if f not in flags.split()]
    if missing:
        return f"this CPU lacks {', '.join(missing)}"
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        return "no C compiler (cc, gcc) on PATH"
    source, library = folder / "fused_pass.c", folder / "fused_pass.so"
    source.write_text(KERNEL)
    command = [compiler, "-O3", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-shared", "-fPIC",
               str(source), "-o", str(library)]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        return f"{' '.join(command)} failed: {done.stderr.strip()[:500]}"
    kernel = ctypes.CDLL(str(library))  # releases the GIL during calls, like numpy's passes
    kernel.fused_pass.restype = ctypes.c_int64
    pointer = ctypes.c_void_p
    kernel.fused_pass.argtypes = [pointer, pointer, ctypes.c_int64, ctypes.c_uint32, ctypes.c_int64, pointer, pointer,
                                  pointer]  # fmt: skip
    return kernel


def synflow_round(model_name: str, image_size: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """One SynFlow round's flat gradients and absolute weights (float32), from the family adapter's pass (timm's
    zero-initialized batch-norm scales left at zero)."""
    import timm

    from autosparse_hf import get_prunable_parameters
    from autosparse_hf.families import get_family

    torch.manual_seed(0)
    model = timm.create_model(model_name, pretrained=False, num_classes=1000).eval()
    params = get_prunable_parameters(model)
    batch = {"pixel_values": torch.zeros(1, 3, image_size, image_size), "labels": torch.zeros(1, dtype=torch.long)}
    family = get_family(model)
    with torch.no_grad():
        for p in model.parameters():
            p.abs_()
    for p in model.parameters():
        p.requires_grad_(False)
    for p in params.values():
        p.param.requires_grad_(True)
    family.synflow_output(model, family.synflow_inputs(model, batch)).sum().backward()
    grads = [p.param.grad.detach().reshape(-1).numpy().copy() for p in params.values()]
    weights = [p.param.detach().reshape(-1).numpy().copy() for p in params.values()]
    return grads, weights


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    common.apply_threads(args.threads)
    from autosparse_hf.masks import product_round
    from autosparse_hf.masks.product_round import ProductRound
    from autosparse_hf.masks.removal import Bound, sample_brackets, sampling

    with tempfile.TemporaryDirectory(prefix="fused_pass_") as tmp:
        kernel = compile_kernel(Path(tmp))
        if isinstance(kernel, str):
            print(f"fused_pass_probe: not run: {kernel}")
            return {"benchmark": "fused_pass_probe", "unavailable": kernel}
        grads, weights = synflow_round(args.model, args.image_size)
        sizes = [g.size for g in grads]
        total = sum(sizes)
        count = int(args.remove * total)
        scores = ProductRound(grads, weights)
        # The round's bracket, drawn as ProductRound.select draws it (one group: the global threshold).
        stride, starts, offsets = sampling(sizes)
        keys = np.concatenate([scores.values(i, slice(s, None, stride)) for i, s in enumerate(starts)]).view(np.uint32)
        places = np.concatenate([np.arange(o + s, o + m, stride) for o, s, m in zip(offsets, starts, sizes, strict=True)])
        bracket = sample_brackets(keys, places, total, count)[0]
        assert bracket is not None, "the sample gave no bracket"
        bounds = [Bound(bracket.key, bracket.cut - o) for o in offsets]
        positions = np.empty(max(sizes) + 16, dtype=np.int64)
        found_keys = np.empty(max(sizes) + 16, dtype=np.uint32)
        peak = np.empty(1, dtype=np.float32)

        def numpy_pass() -> list[tuple[np.ndarray, np.ndarray, float]]:
            return [scores._pass(i, bounds[i], True) for i in range(len(grads))]

        def numpy_pass_pooled() -> list[tuple[np.ndarray, np.ndarray, float]]:
            # As ProductRound.select runs it: one tensor per thread, on as many threads as torch computes with.
            previous = torch.get_num_threads()
            torch.set_num_threads(args.pool_threads)
            try:
                return product_round._map(lambda i: scores._pass(i, bounds[i], True), range(len(grads)))
            finally:
                torch.set_num_threads(previous)

        def fused_pass() -> list[tuple[np.ndarray, np.ndarray, float]]:
            result = []
            for g, w, b in zip(grads, weights, bounds, strict=True):
                n = kernel.fused_pass(g.ctypes.data, w.ctypes.data, g.size, int(b.key), int(b.cut),
                                      positions.ctypes.data, found_keys.ctypes.data, peak.ctypes.data)  # fmt: skip
                result.append((positions[:n].copy(), found_keys[:n].copy(), float(peak[0])))
            return result

        reference = numpy_pass()
        for (p_np, k_np, m_np), (p_c, k_c, m_c) in zip(reference, fused_pass(), strict=True):
            assert np.array_equal(p_np, p_c) and np.array_equal(k_np, k_c) and m_np == m_c, "the passes differ"
        candidates = sum(p.size for p, _, _ in reference)
        times: dict[str, list[float]] = {"numpy": [], "numpy_pooled": [], "fused": []}
        for _ in range(args.repeats):
            for name, fn in (("numpy", numpy_pass), ("numpy_pooled", numpy_pass_pooled), ("fused", fused_pass)):
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
    numpy_ms, pooled_ms, fused_ms = (statistics.median(times[k]) * 1e3 for k in ("numpy", "numpy_pooled", "fused"))
    results = {
        "model": args.model,
        "prunable_weights": total,
        "candidates": candidates,
        "numpy_pass_ms": numpy_ms,
        "numpy_pass_pooled_ms": pooled_ms,
        "fused_pass_ms": fused_ms,
        "ratio_fused_over_numpy": fused_ms / numpy_ms,
        "saved_s_per_100_rounds": (numpy_ms - fused_ms) / 10.0,
        "times_s": times,
    }
    payload = {"benchmark": "fused_pass_probe", "config": vars(args), "results": results,
               "environment": common.environment()}  # fmt: skip
    table = common.markdown_table(
        ["pass over every prunable weight (one round)", "median ms"],
        [["numpy, in cache-sized chunks (the library's ProductRound), one thread", numpy_ms],
         [f"the same, one tensor per thread on {args.pool_threads} threads (as at {args.pool_threads} torch threads)",
          pooled_ms],
         ["fused AVX-512 kernel (C), one thread", fused_ms]],
    )
    print(f"\n## fused_pass_probe\n\n{table}\n\n`{args.model}`: {total:,} prunable weights, {candidates:,} candidates "
          f"under the bracket; identical positions, keys and maxima. Fused / numpy = {fused_ms / numpy_ms:.2f}; "
          f"{(numpy_ms - fused_ms) / 10.0:.2f} s saved per 100 rounds.")  # fmt: skip
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(payload, indent=2, default=float) + "\n")
    print(f"\nwritten: {args.output}")
    return payload


if __name__ == "__main__":
    main()
