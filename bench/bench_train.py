"""Training tokens/s: today's implementation against the frozen pre-speed one, in one run.

Three models of the default shape (4 layers, d 256, context 256, Engram at layers
1 and 2) take turns, one step each per round, so a busy shared machine slows all
of them alike: the baseline (`bench/baseline_impl.py`, M = 4, compiled the way it
was), ours (M = 4, `engram_core.train`) and ours with a plain residual (M = 1).
Both M = 4 models run the same mathematics (20 fixed Sinkhorn steps, as the
baseline). Precision: what `engram train` picks here (`--dtype` to force one).

python -m bench.bench_train                      # default batch 16 x 256, compiled
python -m bench.bench_train --dtype both         # also the other precision
python -m bench.bench_train --curves 500 --curve-batch 4   # loss curves (bench/curves.json, PNG)
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from bench import baseline_impl as base
from bench.common import machine
from engram_core import BackboneConfig, EngramLM, MemoryConfig, ModelConfig
from engram_core.precision import choose_precision, describe
from engram_core.train import TrainConfig, compile_dense, make_optimizers, train_step

V, V_COMPRESSED = 4096, 3146  # the default model's raw and compressed vocabularies
COMPRESSION = np.arange(V) % V_COMPRESSED


def config(branches: int = 4) -> ModelConfig:
    # sinkhorn_tol 0: the baseline's fixed 20 steps, so both sides compute the same maps
    backbone = BackboneConfig(vocab_size=V, n_branches=branches, sinkhorn_tol=0.0)
    return ModelConfig(backbone, MemoryConfig(vocab_size=V_COMPRESSED))


def build(kind: str, compiled: bool, seed: int = 0):
    """(model, optimizers, step function) for 'baseline', 'ours' (as `engram train` compiles it),
    'ours-blocks' (one graph per block), 'ours-graph' (the dense part as
    one compiled graph instead of one per block) or 'plain' (ours with M = 1)."""
    torch.manual_seed(seed)
    ours = EngramLM(config(1 if kind == "plain" else 4), COMPRESSION)
    if kind == "baseline":
        model = base.BaselineLM(ours.cfg, COMPRESSION)
        model.load_state_dict(ours.state_dict())  # same initial weights as ours
        opts = base.make_optimizers(model)
        if compiled:
            base.compile_dense(model)
        return model, opts, base.train_step
    opts = make_optimizers(ours, TrainConfig())
    if compiled:
        compile_dense(ours, {"ours-graph": "model", "ours-blocks": "blocks"}.get(kind, "sublayers"))
    return ours, opts, train_step


def batch(g: torch.Generator, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randint(0, V, (size, 257), generator=g)
    return x[:, :-1], x[:, 1:]


def measure(kinds: tuple[str, ...], bf16: bool, compiled: bool, size: int, rounds: int, warmup: int) -> dict:
    """Median seconds per step of each kind, the kinds interleaved step by step."""
    built = {k: build(k, compiled) for k in kinds}
    g = torch.Generator().manual_seed(1)
    times: dict[str, list[float]] = {k: [] for k in kinds}
    first: dict[str, float] = {}
    for r in range(warmup + rounds):
        x, y = batch(g, size)
        for k, (model, opts, step) in built.items():
            t0 = time.perf_counter()
            step(model, opts, x, y, bf16)
            dt = time.perf_counter() - t0
            if r == 0:
                first[k] = dt
            elif r >= warmup:
                times[k].append(dt)
    return {k: {"step_s": statistics.median(v), "min_s": min(v), "first_step_s": first[k]} for k, v in times.items()}


def report(res: dict, precision: str, size: int) -> None:
    """tok/s by the median step and by the fastest step (the least disturbed by other work on the machine)."""
    tokens = size * 256
    med = {k: tokens / v["step_s"] for k, v in res.items()}
    best = {k: tokens / v["min_s"] for k, v in res.items()}
    for k, v in res.items():
        print(
            f"  {k:<10} {med[k]:7.0f} tok/s median, {best[k]:7.0f} fastest step "
            f"(first step incl. compile {v['first_step_s']:.0f} s)"
        )
    for k, other, what in [
        ("ours", "baseline", "target >= 2x"),
        ("ours-blocks", "baseline", "ours compiled per block"),
        ("ours-graph", "baseline", "ours compiled as one graph"),
        ("ours", "plain", "M = 4 against the plain residual M = 1"),
    ]:
        if k in res and other in res:
            print(
                f"  {k} / {other}: {med[k] / med[other]:.2f}x by medians, {best[k] / best[other]:.2f}x by "
                f"fastest steps ({what}; {precision})"
            )


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--dtype", choices=["auto", "bf16", "fp32", "both"], default="auto")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--eager", action="store_true", help="no torch.compile on either side")
    p.add_argument("--no-plain", action="store_true", help="skip the plain-residual twin")
    p.add_argument("--graph", action="store_true", help="also ours compiled as one graph")
    p.add_argument("--curves", type=int, default=0, help="instead: train baseline and ours this many steps")
    p.add_argument("--curve-batch", type=int, default=16)
    p.add_argument("--curve-seeds", type=int, nargs="+", default=[0, 1], help="first: both sides; others: baseline")
    a = p.parse_args()
    if a.curves:
        from bench.loss_curves import run_curves

        precision = choose_precision("auto") if a.dtype in ("auto", "both") else a.dtype
        run_curves(a.curves, a.curve_batch, precision, tuple(a.curve_seeds))
        return
    auto = choose_precision("auto")
    precisions = [auto] if a.dtype == "auto" else ["bf16", "fp32"] if a.dtype == "both" else [a.dtype]
    kinds = (
        ("baseline", "ours") + (("ours-blocks", "ours-graph") if a.graph else ()) + (() if a.no_plain else ("plain",))
    )
    print(f"machine: {machine()}; `engram train` picks {describe(auto)}")
    print(f"batch {a.batch} x 256 tokens, {'eager' if a.eager else 'compiled'}, median of {a.rounds} interleaved steps")
    for precision in precisions:
        print(f"{describe(precision)}:")
        res = measure(kinds, precision == "bf16", not a.eager, a.batch, a.rounds, a.warmup)
        report(res, precision, a.batch)


if __name__ == "__main__":
    main()
