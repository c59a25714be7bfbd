"""`engram scan --sample-tokens`: what a sample costs and how close its estimates come.

A full in-process scan of the V4.1 layout over part of the standard library's source, then
samples of a tenth and a quarter of its tokens (1 MB shards); per layer the collision rate
(reads on rows that hold two or more distinct N-grams, over all reads), as `engram stats`
prints it. Times are ratios against the full scan of the same run.

    python -m bench.bench_sample [FOLDER...]
"""

from __future__ import annotations

import sys
import sysconfig
import tempfile
from pathlib import Path

from bench.bench_addressing import cpu_name
from bench.bench_scan import DEFAULT
from bench.common import machine
from engram_core.layout import load_layout
from engram_inspect.corpus.scan import scan


def collision_rates(summary: dict) -> dict[int, float]:
    out = {}
    for layer in summary["layers"]:
        heads = [h for h in summary["heads"] if h["layer"] == layer]
        reads = sum(h["reads"] for h in heads)
        out[layer] = sum(h["collision_rate"] * h["reads"] for h in heads) / max(reads, 1)
    return out


def main() -> None:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    paths = sys.argv[1:] or [str(stdlib / d) for d in DEFAULT]
    layout = load_layout("deepseek-v4.1-flash")
    print(f"machine: {machine()}, {cpu_name()}")
    with tempfile.TemporaryDirectory() as d:
        full = scan(layout, paths, Path(d) / "full", shard_bytes=1 << 20)
        for frac in (None, 0.1, 0.25):
            s = (
                full
                if frac is None
                else scan(
                    layout, paths, Path(d) / f"s{frac}", shard_bytes=1 << 20, sample_tokens=int(full["tokens"] * frac)
                )
            )
            rates = "  ".join(f"layer {k} {v:.4f}" for k, v in collision_rates(s).items())
            print(
                f"{'full' if frac is None else f'sample {frac:g}'}: asked {s['sample_tokens']}, scanned "
                f"{s['tokens']:,} tokens, {s['shards']} shards, {s['seconds']} s "
                f"({s['seconds'] / full['seconds']:.2f}x full); collision rate {rates}"
            )


if __name__ == "__main__":
    main()
