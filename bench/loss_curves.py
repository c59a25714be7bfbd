"""Loss curves of the baseline and ours over the first steps of real training (same init, same batches).

Run through `python -m bench.bench_train --curves 500 --curve-batch 4`. Data: the
training streams of the shipped model's corpus and tokenizer; recipe: the
`engram train` schedule for that many steps. A second seed of the baseline
(other init, other batches) shows what seed noise looks like. Writes
bench/curves.json and bench/loss_curves.png (drawn with PIL: no plotting library needed).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from bench import baseline_impl as base
from bench.common import machine
from engram_core import EngramLM
from engram_core.checkpoint import load_checkpoint
from engram_core.cli import DEFAULT_CHECKPOINT
from engram_core.config import ModelConfig
from engram_core.pipeline import prepare_corpus
from engram_core.precision import describe
from engram_core.train import TrainConfig, compile_dense, lr_factor, make_optimizers, sample_batch, train_step

OUT = Path(__file__).resolve().parent


def build(kind: str, cfg: ModelConfig, comp: np.ndarray, tcfg: TrainConfig):
    torch.manual_seed(tcfg.seed)
    ours = EngramLM(cfg, comp)
    if kind == "baseline":
        model = base.BaselineLM(cfg, comp)
        model.load_state_dict(ours.state_dict())
        base.compile_dense(model)
        return model, base.make_optimizers(model), base.train_step
    compile_dense(ours)
    return ours, make_optimizers(ours, tcfg), train_step


def run_curves(steps: int, batch: int, precision: str, seeds: tuple[int, ...] = (0, 1)) -> dict:
    """Train the runs in lockstep (one step each in turn), so a cut-short run still pairs up."""
    ck = load_checkpoint(DEFAULT_CHECKPOINT)
    _, streams, _ = prepare_corpus(tokenizer=ck.tokenizer, log=lambda *_: None)
    stream = np.concatenate([streams["train/plays"], streams["train/code"]])
    b = ck.model.cfg.backbone
    # today's recipe and shape, with the maps both implementations compute (20 fixed Sinkhorn steps)
    cfg = ModelConfig(type(b)(**{**b.__dict__, "sinkhorn_tol": 0.0}), ck.model.cfg.memory)
    comp = ck.model.compression.numpy()
    print(f"machine: {machine()}; {describe(precision)}; {steps} steps of {batch} x 256 tokens", flush=True)
    runs = {}
    for kind, seed in [("ours", seeds[0]), ("baseline", seeds[0]), *[("baseline", s) for s in seeds[1:]]]:
        tcfg = TrainConfig(tokens=steps * batch * 256, batch_size=batch, seed=seed)
        runs[f"{kind} seed {seed}"] = (*build(kind, cfg, comp, tcfg), tcfg, np.random.default_rng(seed))
    curves: dict[str, list[float]] = {k: [] for k in runs}
    t0 = time.perf_counter()
    for i in range(steps):
        for name, (model, opts, step_fn, tcfg, rng) in runs.items():
            for opt in opts:
                for g in opt.param_groups:
                    g["lr"] = g["base_lr"] * lr_factor(i, steps, tcfg)
            x, y = sample_batch(stream, tcfg.batch_size, 256, rng)
            curves[name].append(float(step_fn(model, opts, x, y, precision == "bf16")))
        if (i + 1) % 10 == 0:
            print(
                f"  step {i + 1} ({time.perf_counter() - t0:.0f} s): "
                + ", ".join(f"{k} {v[-1]:.3f}" for k, v in curves.items()),
                flush=True,
            )
            (OUT / "curves.json").write_text(json.dumps({"precision": precision, "batch": batch, "curves": curves}))
    summary = summarise(curves)
    (OUT / "curves.json").write_text(json.dumps({"precision": precision, "batch": batch, **summary, "curves": curves}))
    draw(curves, OUT / "loss_curves.png")
    print(json.dumps(summary, indent=1))
    return summary


def smooth(v: list[float], k: int = 25) -> np.ndarray:
    a = np.asarray(v)
    return np.convolve(a, np.ones(k) / k, mode="valid") if len(a) >= k else a


def summarise(curves: dict[str, list[float]]) -> dict:
    keys = list(curves)
    ours, base0 = np.asarray(curves[keys[0]]), np.asarray(curves[keys[1]])
    out = {
        "final_mean_last_50": {k: float(np.mean(v[-50:])) for k, v in curves.items()},
        "max_abs_diff_same_seed": float(np.abs(ours - base0).max()),
        "mean_abs_diff_same_seed_smoothed": float(np.abs(smooth(ours) - smooth(base0)).mean()),
    }
    if len(keys) > 2:
        other = np.asarray(curves[keys[2]])
        out["mean_abs_diff_between_seeds_smoothed"] = float(np.abs(smooth(base0) - smooth(other)).mean())
    return out


def draw(curves: dict[str, list[float]], path: Path, w: int = 900, h: int = 500) -> None:
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(img)
    left, right, top, bottom = 60, w - 20, 30, h - 40
    allv = np.concatenate([smooth(v, 5) for v in curves.values()])
    lo, hi = float(allv.min()), float(allv.max())
    n = max(len(v) for v in curves.values())
    d.rectangle([left, top, right, bottom], outline="black")
    for i in range(6):  # y ticks
        val = lo + (hi - lo) * i / 5
        y = bottom - (bottom - top) * i / 5
        d.text((5, y - 6), f"{val:.2f}", fill="black")
    d.text((left, h - 25), f"step (0..{n}), loss smoothed over 5 steps", fill="black")
    colours = ["#d62728", "#1f77b4", "#7f7f7f", "#2ca02c"]
    for (name, v), c in zip(curves.items(), colours, strict=False):
        s = smooth(v, 5)
        pts = [
            (left + (right - left) * (i + 2) / n, bottom - (bottom - top) * (x - lo) / (hi - lo))
            for i, x in enumerate(s)
        ]
        d.line(pts, fill=c, width=2 if name.startswith("ours") else 1)
        d.text((right - 200, top + 10 + 15 * list(curves).index(name)), name, fill=c)
    img.save(path)
