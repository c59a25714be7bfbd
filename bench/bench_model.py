"""Engram model vs its memory-free twin: training-step and forward tokens/s, measured in one run.

python bench/bench_model.py            # compiled dense core, as `engram train` runs
python bench/bench_model.py --eager    # no torch.compile
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from bench.common import machine, timeit
from engram_core import BackboneConfig, EngramLM, MemoryConfig, ModelConfig
from engram_core.train import TrainConfig, compile_dense, make_optimizers

V, V_COMPRESSED = 4096, 3146  # the default model's raw and compressed vocabularies


def build(memory: bool, compiled: bool) -> tuple[EngramLM, list]:
    torch.manual_seed(0)
    mem = MemoryConfig(vocab_size=V_COMPRESSED) if memory else None
    model = EngramLM(ModelConfig(BackboneConfig(vocab_size=V), mem), np.arange(V) % V_COMPRESSED)
    opts = make_optimizers(model, TrainConfig())
    if compiled:
        compile_dense(model)
    return model, opts


def measure(memory: bool, compiled: bool, batch: int, repeat: int) -> tuple[float, float]:
    model, opts = build(memory, compiled)
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, V, (batch, 257), generator=g)

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model.loss(x[:, :-1], x[:, 1:])
        loss.backward()
        for o in opts:
            o.step()
            o.zero_grad(set_to_none=True)

    def forward() -> None:
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            model(x[:, :-1])

    tokens = batch * 256
    return tokens / timeit(step, repeat, warmup=3), tokens / timeit(forward, repeat, warmup=2)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--eager", action="store_true")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--repeat", type=int, default=10)
    a = p.parse_args()
    compiled = not a.eager
    base = measure(False, compiled, a.batch, a.repeat)
    eng = measure(True, compiled, a.batch, a.repeat)
    print(f"machine: {machine()}; batch {a.batch} x 256 tokens, bf16 autocast, {'compiled' if compiled else 'eager'}")
    for i, what in enumerate(("train step", "forward")):
        print(
            f"  {what:<10} baseline {base[i]:8.0f} tok/s   engram {eng[i]:8.0f} tok/s   "
            f"the engram {what} costs {base[i] / eng[i]:.2f}x the baseline's" + (" (target <= 1.3x)" if i == 0 else "")
        )


if __name__ == "__main__":
    main()
