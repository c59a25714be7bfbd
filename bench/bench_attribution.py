"""Attribution of one clicked token: cost against a plain forward, and how far the approximation agrees.

python -m bench.bench_attribution [--examples 40]   (--examples 0: timing only)

Timing: a 256-token held-out text, the prediction at its last position (the window
is full, so this is the slowest click); exact removals (target <= 1.5 s on 2 cores)
and gradient x input (target <= 3x a plain forward), each against a plain forward
of the same window, measured in the same run.

Agreement: on held-out plays and code, random positions of random 256-token
windows; for the reads in the conv's reach, Spearman rank correlation between the
exact removals and the approximation, per example (median, quartiles) and pooled.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import numpy as np
import torch

from bench.common import machine, timeit
from engram_core import load_checkpoint
from engram_core.cli import DEFAULT_CHECKPOINT
from engram_core.data import HELD_OUT_PLAYS, plays_dir
from engram_core.pipeline import heldout_streams
from engram_core.tokenizer import encode
from engram_inspect.text.attribution import approx_deltas, attribute, exact_deltas


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def timing(ck, rounds: int) -> None:
    play = next(plays_dir().rglob(f"{HELD_OUT_PLAYS[0]}.md")).read_text()
    _, offsets = encode(ck.tokenizer, play[5000:12000])
    text = play[5000 : 5000 + offsets[255][1]]
    ids, _ = encode(ck.tokenizer, text)
    p = len(ids) - 2  # the last prediction with a next token: the window is the whole text
    x = torch.tensor([ids[: p + 1]])
    # interleaved rounds: on a shared machine the load drifts, and each round sees the same load
    times: dict[str, list[float]] = {"plain": [], "exact": [], "approx": []}
    runs = {
        "plain": lambda: ck.model(x),
        "exact": lambda: attribute(ck, text, p, "exact"),
        "approx": lambda: attribute(ck, text, p, "approx"),
    }
    with torch.no_grad():
        for fn in runs.values():
            timeit(fn, repeat=1, warmup=1)
    cpu: dict[str, list[float]] = {k: [] for k in times}
    for _ in range(rounds):
        for name, fn in runs.items():
            with torch.no_grad() if name == "plain" else contextlib.nullcontext():
                c0, t0 = time.process_time(), time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
                cpu[name].append(time.process_time() - c0)
    plain, exact, approx = (statistics.median(times[k]) for k in ("plain", "exact", "approx"))
    # CPU seconds of this process: on a machine shared with other jobs they drift far less than wall time
    c_plain, c_exact, c_approx = (statistics.median(cpu[k]) for k in ("plain", "exact", "approx"))
    print(f"machine: {machine()}")
    print(f"{len(ids)} tokens of {HELD_OUT_PLAYS[0]} (held out), fp32, clicked position {p} ({p + 1} in the window)")
    print(f"  plain forward:          {plain * 1e3:8.1f} ms  (CPU {c_plain * 1e3:.0f} ms)")
    n_reads = len(attribute(ck, text, p, "exact"))
    print(
        f"  exact, {n_reads} removals:   {exact * 1e3:8.1f} ms  ({exact / plain:.2f}x a plain forward; <= 1.5 s)"
        f"  CPU {c_exact * 1e3:.0f} ms ({c_exact / c_plain:.2f}x)"
    )
    print(
        f"  approx, every read:     {approx * 1e3:8.1f} ms  ({approx / plain:.2f}x a plain forward; <= 3x)"
        f"  CPU {c_approx * 1e3:.0f} ms ({c_approx / c_plain:.2f}x)"
    )


def agreement(ck, examples: int) -> None:
    streams = heldout_streams(ck, log=lambda *_: None)
    rng = np.random.default_rng(0)
    for domain in ("plays", "code"):
        stream = streams[f"val/{domain}"].astype(np.int64)
        per, pooled_e, pooled_a = [], [], []
        for _ in range(examples):
            start = int(rng.integers(0, len(stream) - 257))
            ids = stream[start : start + 256].tolist()
            p = int(rng.integers(16, 255))
            reads, exact = exact_deltas(ck, ids, p)
            a_reads, approx = approx_deltas(ck, ids, p)
            lookup = dict(zip(a_reads, approx, strict=True))
            approx_near = np.array([lookup[r] for r in reads])
            per.append(spearman(exact, approx_near))
            pooled_e.append(exact)
            pooled_a.append(approx_near)
        q1, med, q3 = np.percentile(per, [25, 50, 75])
        pooled = spearman(np.concatenate(pooled_e), np.concatenate(pooled_a))
        print(
            f"  {domain}: {examples} examples x {len(reads)} reads: Spearman per example median {med:.3f} "
            f"(quartiles {q1:.3f}-{q3:.3f}), pooled {pooled:.3f}"
        )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--examples", type=int, default=40, help="held-out examples per domain for the agreement")
    ap.add_argument("--rounds", type=int, default=10, help="interleaved timing rounds")
    args = ap.parse_args()
    ck = load_checkpoint(DEFAULT_CHECKPOINT)
    timing(ck, args.rounds)
    if args.examples > 0:
        print("agreement of gradient x input with exact removals (reads in the conv's reach):")
        agreement(ck, args.examples)


if __name__ == "__main__":
    main()
