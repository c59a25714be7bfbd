"""Where a training step's time goes, by part of the model (torch.profiler, CPU).

python -m bench.profile_train                    # ours, as `engram train` runs it (compiled)
python -m bench.profile_train --impl baseline    # the frozen pre-speed step
python -m bench.profile_train --eager --batch 4

Each part of the model runs inside a named `record_function` region (added by
forward pre/post hooks on the modules, so the model code is not touched); the
table lists every region's total CPU time per step, forward and backward apart
where autograd lets them be told apart. Compiled graphs show as one region per
graph: profile eagerly (`--eager`) to split them by part.
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import torch
from torch.autograd.profiler import record_function
from torch.profiler import ProfilerActivity, profile

from bench.bench_train import batch, build
from bench.common import machine
from engram_core.precision import choose_precision, describe

PARTS = {  # module class -> region name
    "Attention": "attention (incl. its RMSNorm)",
    "MLP": "MLP (incl. its RMSNorm)",
    "EngramReadout": "Engram read-out (W_K, W_V, gate, conv)",
}


def label(mod: torch.nn.Module) -> str | None:
    name = type(mod).__name__
    if name in PARTS:
        return PARTS[name]
    if name == "Embedding":
        return "table lookups" if getattr(mod, "sparse", False) else "token embedding"
    return None


def instrument(model: torch.nn.Module) -> None:
    """Wrap each part's forward in a record_function region; mHC maps get one via `maps`."""
    for mod in model.modules():
        name = label(mod)
        if name is not None:
            fwd = mod.forward

            def wrapped(*a, _f=fwd, _n=name, **k):
                with record_function(_n):
                    return _f(*a, **k)

            mod.forward = wrapped
        if type(mod).__name__ == "HyperResidual" and getattr(mod, "M", 1) > 1:
            maps = mod.maps

            def wrapped_maps(*a, _f=maps, **k):
                with record_function("mHC maps: RMSNorm of the flat stream, phi, Sinkhorn"):
                    return _f(*a, **k)

            mod.maps = wrapped_maps


def profile_step(impl: str, bf16: bool, compiled: bool, size: int, steps: int) -> profile:
    model, opts, step = build(impl, compiled)
    if not compiled:
        instrument(model)
    g = torch.Generator().manual_seed(1)
    for _ in range(2):  # warm-up (and compile)
        step(model, opts, *batch(g, size), bf16)
    hashing = model.hash_rows
    model.hash_rows = lambda ids: _region("hashing (N-gram rows)", hashing, ids)
    for o in opts:
        o.step = _wrap_step(o)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            x, y = batch(g, size)
            with record_function("step"):
                step(model, opts, x, y, bf16)
    return prof


def _region(name: str, fn, *a):
    with record_function(name):
        return fn(*a)


def _wrap_step(opt: torch.optim.Optimizer):
    inner = opt.step
    name = f"optimizer {type(opt).__name__}"
    return lambda *a, **k: _region(name, inner, *a, **k) if not k else inner(*a, **k)


def totals(prof, steps: int) -> dict[str, float]:
    """ms per step of the named regions (forward), the optimizers, and the backward by autograd node."""
    out: dict[str, float] = defaultdict(float)
    for ev in prof.key_averages():
        key = ev.key
        if key == "step" or key.startswith(("hashing", "optimizer", "table", "token", "mHC", "attention", "MLP")):
            out[key] += ev.cpu_time_total / 1e3 / steps
        elif key.startswith("Engram") or "Compiled" in key:
            out[key] += ev.cpu_time_total / 1e3 / steps
        elif key.startswith("autograd::engine::evaluate_function: "):
            out["backward: " + key.split(": ", 1)[1]] += ev.cpu_time_total / 1e3 / steps
    return dict(out)


def top_ops(prof, steps: int, n: int = 15) -> str:
    rows = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:n]
    lines = ["| op (self time) | ms/step |", "|---|---|"]
    lines += [f"| {e.key} | {e.self_cpu_time_total / 1e3 / steps:.0f} |" for e in rows]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--impl", choices=["ours", "baseline"], default="ours")
    p.add_argument("--dtype", choices=["auto", "bf16", "fp32"], default="auto")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--eager", action="store_true")
    a = p.parse_args()
    precision = choose_precision(a.dtype)
    print(
        f"machine: {machine()}; {describe(precision)}; {a.impl}, batch {a.batch} x 256, "
        f"{'eager' if a.eager else 'compiled'}, {a.steps} profiled steps"
    )
    prof = profile_step(a.impl, precision == "bf16", not a.eager, a.batch, a.steps)
    print(totals_table(totals(prof, a.steps)))
    print()
    print(top_ops(prof, a.steps))


def totals_table(t: dict[str, float]) -> str:
    step = t.get("step", sum(t.values()))
    rows = sorted(t.items(), key=lambda kv: -kv[1])[:25]
    lines = ["| region | ms/step | share of step |", "|---|---|---|"]
    lines += [f"| {k} | {v:.0f} | {100 * v / step:.0f} % |" for k, v in rows]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
