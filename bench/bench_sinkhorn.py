"""The mHC projection (`layers.sinkhorn` with a tolerance): misses, distance from the form it must
have, and cost against the 20 fixed steps, in one run.

python -m bench.bench_sinkhorn                 # random maps at logit scales 5..200, a training batch
python -m bench.bench_sinkhorn --shipped 48    # also the shipped model's H_res maps on 48 held-out windows

Misses: maps whose largest row or column error exceeds 1e-3 (the shipped tolerance).
Cost: forward and backward of one training batch's maps (16 x 256 = 4,096 per sublayer), the
tolerance against 20 fixed steps, interleaved, medians.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from bench.common import machine
from engram_core.layers import sinkhorn

TOL = 1e-3


def errors(p: torch.Tensor) -> torch.Tensor:
    return torch.maximum((p.sum(-1) - 1).abs().amax(-1), (p.sum(-2) - 1).abs().amax(-1))


def misses(scales: list[float], n: int = 1000) -> None:
    print(f"{'logit scale':>11} {'maps':>6} {'over 1e-3':>9} {'largest error':>13} {'ms':>8}")
    for scale in scales:
        logits = scale * torch.randn(n, 4, 4, generator=torch.Generator().manual_seed(1))
        t0 = time.perf_counter()
        e = errors(sinkhorn(logits, 20, tol=TOL))
        ms = 1e3 * (time.perf_counter() - t0)
        print(f"{scale:>11g} {n:>6} {int((e > TOL).sum()):>9} {float(e.max()):>13.2e} {ms:>8.1f}")


def cost(rounds: int = 15) -> None:
    g = torch.Generator().manual_seed(0)
    # trained-like: the initial bias (self -4 off the diagonal) plus token-dependent terms
    logits = torch.full((4, 4), -4.0).fill_diagonal_(0.0) + 3 * torch.randn(4096, 4, 4, generator=g)
    grad = torch.randn(4096, 4, 4, generator=g)

    def run(tol: float) -> float:
        x = logits.clone().requires_grad_()
        t0 = time.perf_counter()
        (sinkhorn(x, 20, tol=tol) * grad).sum().backward()
        return time.perf_counter() - t0

    for tol in (TOL, 0.0):  # warm-up, compiles
        run(tol), run(tol)
    times: dict[float, list[float]] = {TOL: [], 0.0: []}
    for _ in range(rounds):
        for tol in times:
            times[tol].append(run(tol))
    proj, fixed = (1e3 * statistics.median(times[t]) for t in (TOL, 0.0))
    print(f"4,096 maps, forward + backward: projection to 1e-3 {proj:.1f} ms, 20 fixed steps {fixed:.1f} ms")


def shipped(windows: int) -> None:
    from engram_core import load_checkpoint
    from engram_core.layers import HyperResidual
    from engram_core.pipeline import heldout_streams
    from engram_core.train import eval_windows

    ck = load_checkpoint("assets/default-model")
    found: list[torch.Tensor] = []

    def keep(mod, args, _out):
        found.append(errors(mod.maps(args[0])[2].flatten(0, 1)))

    hooks = [m.register_forward_hook(keep) for m in ck.model.modules() if isinstance(m, HyperResidual)]
    try:
        with torch.no_grad():
            for stream in heldout_streams(ck).values():
                for w in eval_windows(stream, 256, windows).split(8):
                    ck.model(w[:, :-1])
    finally:
        for h in hooks:
            h.remove()
    e = torch.cat(found)
    print(
        f"shipped model, {len(e):,} H_res maps of held-out text: {int((e > TOL).sum())} over 1e-3, "
        f"largest {e.max():.2e}"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shipped", type=int, default=0, help="held-out windows per domain of the shipped model")
    a = p.parse_args()
    torch.set_num_threads(2)
    print(machine())
    misses([5, 20, 40, 100, 200])
    cost()
    if a.shipped:
        shipped(a.shipped)


if __name__ == "__main__":
    main()
