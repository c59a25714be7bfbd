"""Hot-row caches for DeepSeek-V4.1-Flash's layout on the shipped corpus and on held-out text
(`engram cache-sim`'s code), the prefetch lookahead that empties the critical path, and the
simulator's throughput per policy against a plain Python loop over the same stream.

    python -m bench.bench_cachesim [--tokens 1000000] [--out bench/cachesim]

Prints the capacity each policy needs for 80/90/95 % hits at 1, 4 and 16 streams, the hit
rate at the public setting (2 GiB a layer, 16-way set-associative), the misses left on the
critical path against prefetch lookahead, and reads per second per policy.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections import OrderedDict
from dataclasses import replace
from pathlib import Path

import numpy as np

from engram_core.layout import load_layout
from engram_inspect.serving.caches import Cache, StaticSet, belady_hits, flat_ptr
from engram_inspect.serving.simulate import Grid, parse_capacities, simulate
from engram_inspect.serving.sizing import words
from engram_inspect.serving.sources import domain_docs

CAPACITIES = "64MiB,256MiB,512MiB,1GiB,2GiB,4GiB,8GiB"


def cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def materialise(layout, split: str, tokens: int) -> list[np.ndarray]:
    """The first `tokens` tokens of a split, tokenised once (the grid replays them many times)."""
    out, n = [], 0
    for d in domain_docs(layout, ["plays", "code"], split)():
        out.append(d[: tokens - n])
        n += len(out[-1])
        if n >= tokens:
            break
    return out


def sizing(layout, docs, static_from, tokens: int) -> list[dict]:
    """LRU, 16-way set-associative and static at 1, 4 and 16 streams; Belady (the bound) at 1."""
    grid = Grid(
        policies=("lru", "set-assoc", "static"),
        capacities=tuple(parse_capacities(CAPACITIES)),
        ways=16,
        max_tokens=tokens,
    )
    records = []
    for s in (1, 4, 16):
        t0 = time.perf_counter()
        g = replace(grid, policies=grid.policies + ("belady",)) if s == 1 else grid
        records += simulate(layout, lambda: docs, g, s, "row", static_from)
        print(f"  {s} streams: {time.perf_counter() - t0:.0f} s", flush=True)
    return records


def prefetch(layout, docs, tokens: int) -> list[dict]:
    H = layout.spec.heads_per_layer
    out = []
    for streams in (1, 4):
        for bw in (H, 2 * H):
            for look in (0, 1, 2, 4, 8):
                g = Grid(policies=("lru",), capacities=tuple(parse_capacities("1GiB")), max_tokens=tokens)
                g = replace(g, lookahead=look, bandwidth=bw if look else 0)
                for r in simulate(layout, lambda: docs, g, streams):
                    out.append({**r, "bandwidth_rows": bw})
    return out


def python_lru(stream: np.ndarray, cap: int) -> int:
    cache, hits = OrderedDict(), 0
    for x in stream.tolist():
        if x in cache:
            cache.move_to_end(x)
            hits += 1
        else:
            cache[x] = True
            if len(cache) > cap:
                cache.popitem(last=False)
    return hits


def throughput(n: int = 20_000_000) -> list[dict]:
    """Reads per second per policy on a Zipf stream over a V4.1-sized row space, one core."""
    rng = np.random.default_rng(0)
    n -= n % 24
    stream = (rng.zipf(1.05, n) * 2654435761 % 384_006_168).astype(np.int64)
    cap = 1 << 20
    out = []
    t0 = time.perf_counter()
    python_lru(stream[:1_000_000], cap)
    base = 1_000_000 / (time.perf_counter() - t0)
    out.append({"policy": "lru (Python OrderedDict, baseline)", "reads_per_s": base})
    H = 24  # reads a token makes in a V4.1 layer
    for policy, ways in (("lru", 0), ("clock", 0), ("set-assoc", 16)):
        Cache(policy, 1024, ways).feed(stream[:9600], flat_ptr(400, H), 400)  # compiled before timing
        for c in (1 << 16, cap):
            cache = Cache(policy, c, ways)
            t0 = time.perf_counter()
            cache.feed(stream, flat_ptr(n // H, H), n // H)
            out.append({"policy": f"{policy}, {c:,} rows", "reads_per_s": n / (time.perf_counter() - t0)})
    t0 = time.perf_counter()
    StaticSet.from_stream(stream, cap).hits(stream)
    out.append({"policy": "static (train + serve)", "reads_per_s": n / (time.perf_counter() - t0)})
    belady_hits(stream[:10_000], 1024)
    t0 = time.perf_counter()
    belady_hits(stream, cap)
    out.append({"policy": "belady", "reads_per_s": n / (time.perf_counter() - t0)})
    for r in out:
        r["vs_python"] = r["reads_per_s"] / base
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=500_000)
    ap.add_argument("--out", default="bench/cachesim")
    args = ap.parse_args()
    print(f"CPU: {cpu()}")
    result: dict = {"cpu": cpu(), "tokens": args.tokens}
    result["throughput"] = throughput()
    for r in result["throughput"]:
        print(f"  {r['policy']:>36}: {r['reads_per_s'] / 1e6:6.2f}M reads/s ({r['vs_python']:.1f}x the Python loop)")
    layout = load_layout("deepseek-v4.1-flash")
    t0 = time.perf_counter()
    train = materialise(layout, "train", args.tokens)
    val = materialise(layout, "val", args.tokens)
    print(f"tokenised {sum(map(len, train)):,} + {sum(map(len, val)):,} tokens in {time.perf_counter() - t0:.0f} s")
    print("shipped corpus (train split), static trained on the same traffic:")
    result["train"] = sizing(layout, train, None, args.tokens)
    print("held-out text (val split), static trained on the train split:")
    result["val"] = sizing(layout, val, lambda: train, args.tokens)
    for name in ("train", "val"):
        for line in words(result[name], f"{name}: "):
            print(line)
        for r in result[name]:
            if r["policy"] == "set-assoc" and r["capacity"] == "2GiB":
                print(f"  {name} 2 GiB 16-way, layer {r['layer']}, {r['streams']} streams: {r['hit_rate']:.1%}")
    print("prefetch, LRU 1 GiB a layer, held-out text:")
    result["prefetch"] = prefetch(layout, val, min(args.tokens, 300_000))
    for r in result["prefetch"]:
        print(
            f"  layer {r['layer']} {r['streams']} streams bandwidth {r['bandwidth_rows']} rows/token "
            f"lookahead {r['lookahead']}: {r['misses_per_token']:.4f} misses/token on the critical path"
        )
    Path(args.out + ".json").write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}.json")


if __name__ == "__main__":
    main()
