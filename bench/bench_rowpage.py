"""Row pages of the shipped model: page latency, the slow pass's rate, removal estimate vs exact.

- A cached row page (the slow parts loaded once) for 100 seeded random rows, p50/p95,
  as a ratio to a plain forward of 256 tokens measured in the same run (target <= 200 ms).
- The gate pass: tokens/s over a few windows, and the time that implies for the
  default sample (the full pass is what `engram row` runs on first use).
- How far to trust the gradient x input estimate of a read's removal cost: Spearman
  rank correlation with the exact removal over seeded reads of the estimate windows.
- Neighbour agreement (raw rows vs value space), per layer: see valuespace.neighbour_agreement.

    python -m bench.bench_rowpage [--pass-tokens 8192] [--exact-reads 48]
"""

from __future__ import annotations

import argparse
import subprocess
import time

import numpy as np
import torch
from scipy.stats import spearmanr

from bench.common import machine, timeit
from engram_core import load_checkpoint
from engram_inspect.memory.rowpage import RowPages, exact_removal, row_page
from engram_inspect.memory.rows import RowLayout
from engram_inspect.memory.rowstats import SAMPLE_TOKENS, compute_row_stats, corpus_streams
from engram_inspect.memory.valuespace import neighbour_agreement, top_tokens


def cpu_name() -> str:
    out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    flags = next((ln for ln in out.splitlines() if ln.startswith("Flags")), "")
    name = next((ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.startswith("Model name")), "?")
    return f"{name}, avx512_bf16 {'avx512_bf16' in flags}, amx {'amx_tile' in flags}"


def bench_pages(ck, pages: RowPages, n: int = 100) -> None:
    ids = torch.from_numpy(pages.tokens[0])[None]
    with torch.inference_mode():
        base = timeit(lambda: ck.model(ids), repeat=10, warmup=2)
    layout = RowLayout.of(ck)
    picks = np.random.default_rng(0).choice(layout.total, n, replace=False)
    row_page(ck, layout.address(int(picks[0])), pages)  # warm-up
    ms = []
    for f in picks:
        t0 = time.perf_counter()
        row_page(ck, layout.address(int(f)), pages)
        ms.append((time.perf_counter() - t0) * 1e3)
    p50, p95 = np.percentile(ms, [50, 95])
    print(f"plain forward, 256 tokens: {base * 1e3:.0f} ms")
    print(f"cached row page, {n} random rows: p50 {p50:.0f} ms, p95 {p95:.0f} ms "
          f"({p50 / (base * 1e3):.2f}x / {p95 / (base * 1e3):.2f}x a plain forward; target <= 200 ms)")  # fmt: skip


def bench_pass(ck, tokens: int) -> None:
    streams = corpus_streams(ck)
    t0 = time.perf_counter()
    compute_row_stats(ck, streams, max_tokens=tokens, delta_tokens=0)
    dt = time.perf_counter() - t0
    full = SAMPLE_TOKENS / (tokens / dt) / 60
    print(f"gate pass, {tokens:,} tokens: {dt:.1f} s, {tokens / dt:,.0f} tok/s")
    print(f"  the default {SAMPLE_TOKENS:,} tokens at this rate: {full:.1f} min")


def bench_exact(ck, pages: RowPages, n: int) -> None:
    """Estimate vs exact on seeded reads of the estimate windows, one read per sampled row."""
    rng = np.random.default_rng(1)
    layout = pages.layout
    est, exact, own = [], [], []
    t0 = time.perf_counter()
    while len(est) < n:
        a = layout.address(int(rng.integers(layout.total)))
        w, t = pages.reads(a)
        d = pages.delta_of(a, w, t)
        has = np.flatnonzero(~np.isnan(d))
        if not len(has):
            continue
        i = has[rng.integers(len(has))]
        total, o = exact_removal(pages, a, w[[i]], t[[i]])
        est.append(d[i])
        exact.append(total[0])
        own.append(o[0])
    rho = spearmanr(est, exact).statistic
    print(f"removal cost, {n} reads: Spearman(estimate, exact) {rho:.3f}; mean |exact| {np.mean(np.abs(exact)):.4f}, "
          f"mean |estimate - exact| {np.mean(np.abs(np.subtract(est, exact))):.4f} nats; "
          f"mean |own-prediction share| {np.mean(np.abs(own)):.4f}; {time.perf_counter() - t0:.0f} s")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="assets/default-model")
    ap.add_argument("--pass-tokens", type=int, default=8192)
    ap.add_argument("--exact-reads", type=int, default=48)
    args = ap.parse_args()
    print(f"machine: {machine()}; {cpu_name()}")
    ck = load_checkpoint(args.model)
    t0 = time.perf_counter()
    pages = RowPages.load(ck)
    print(f"row-page parts loaded (stats cached, sample regenerated and hashed) in {time.perf_counter() - t0:.1f} s")
    bench_pages(ck, pages)
    bench_pass(ck, args.pass_tokens)
    if args.exact_reads:
        bench_exact(ck, pages, args.exact_reads)
    t0 = time.perf_counter()
    tops = top_tokens(ck)
    print(f"top promoted token of all {len(tops):,} rows: {time.perf_counter() - t0:.1f} s")
    for layer in ck.model.engram_layers:
        r = neighbour_agreement(ck, layer, tops)
        print(f"layer {layer}: share of the {r['k']} nearest neighbours promoting the same top token")
        print(f"  ({r['queries']} rows): raw {r['raw']:.3f}, value space {r['value']:.3f}, random {r['random']:.4f}")


if __name__ == "__main__":
    main()
