"""Exact cosine neighbours and 2-D projections over the shipped model's memory rows.

Builds the faiss index over every Engram row (all layers pooled), times 200 single
queries (k=10, target p50 <= 20 ms), checks a few answers against brute-force
numpy, times the answers of /neighbours and `engram neighbours` (value space over
every row, raw rows of the query's own head), then times a pooled PCA and a pooled
UMAP of MAX_POINTS (50,000) rows.

    python bench/bench_neighbours.py            # projections go to a temporary folder
    python bench/bench_neighbours.py --save     # ...or to the cache beside the checkpoint
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import machine
from engram_core import load_checkpoint
from engram_inspect.memory.neighbours import NeighbourIndex, nearest_ngram, row_neighbours
from engram_inspect.memory.projection import MAX_POINTS, compute_projection
from engram_inspect.memory.rows import RowLayout, all_rows, row_vectors


def bench_queries(ck, n: int = 200, k: int = 10) -> None:
    t0 = time.perf_counter()
    index = NeighbourIndex.build(ck)
    build = time.perf_counter() - t0
    layout = RowLayout.of(ck)
    picks = np.random.default_rng(0).choice(layout.total, n, replace=False)
    for f in picks[:5]:  # warm-up
        index.nearest_rows(layout.address(int(f)), k)
    times = []
    for f in picks:
        t0 = time.perf_counter()
        index.nearest_rows(layout.address(int(f)), k)
        times.append(time.perf_counter() - t0)
    ms = np.asarray(times) * 1e3
    print(f"index: {len(index):,} rows x {index.index.d} dims, layers {index.layers}, built in {build:.2f} s")
    p50, p95 = np.percentile(ms, [50, 95])
    print(f"nearest_rows k={k}, {n} single queries: p50 {p50:.2f} ms, p95 {p95:.2f} ms (target <= 20 ms)")

    pooled = row_vectors(ck, all_rows(ck))
    pooled /= np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-30)
    for f in picks[:10]:  # exactness against brute force
        sims = pooled @ pooled[f]
        sims[f] = -np.inf
        want = np.sort(sims)[::-1][:k]
        got = [nb.similarity for nb in index.nearest_rows(layout.address(int(f)), k)]
        np.testing.assert_allclose(got, want, atol=1e-5)
    print("  10 answers checked against brute-force numpy: similarities equal to 1e-5")

    t0 = time.perf_counter()
    for text in ["Alexander the Great", "By the way", "Princess of Wales"]:
        nearest_ngram(ck, index, text, layer=ck.model.engram_layers[0], order=3, k=k)
    print(f"nearest_ngram (all 4 heads) x 3 texts: {(time.perf_counter() - t0) / 3 * 1e3:.1f} ms per text")


def bench_spaces(ck, n: int = 100, k: int = 10) -> None:
    """Single queries of `row_neighbours` in each space, as the endpoint and the command answer them."""
    from engram_inspect.memory.valuespace import ValueIndex

    t0 = time.perf_counter()
    index = ValueIndex(ck)
    print(f"value index over {RowLayout.of(ck).total:,} rows built in {time.perf_counter() - t0:.2f} s")
    layout = RowLayout.of(ck)
    picks = np.random.default_rng(1).choice(layout.total, n, replace=False)
    for space in ("value", "raw"):
        for f in picks[:5]:  # warm-up
            row_neighbours(ck, layout.address(int(f)), k, space, value_index=index)
        times = []
        for f in picks:
            t0 = time.perf_counter()
            row_neighbours(ck, layout.address(int(f)), k, space, value_index=index)
            times.append(time.perf_counter() - t0)
        p50, p95 = np.percentile(np.asarray(times) * 1e3, [50, 95])
        print(f"row_neighbours space={space} k={k}, {n} single queries: p50 {p50:.2f} ms, p95 {p95:.2f} ms")


def bench_projection(ck, method: str, cache: Path | None) -> None:
    marks: list[tuple[float, str]] = []
    t0 = time.perf_counter()
    p = compute_projection(
        ck,
        method,
        "pooled",
        recompute=True,
        cache_path=cache,
        progress=lambda d, t, m: marks.append((time.perf_counter(), m)),
    )
    total = time.perf_counter() - t0
    print(f"{method.upper()} pooled, {len(p.rows):,} rows (cap {MAX_POINTS:,}): {total:.1f} s")
    prev = t0
    for t, m in marks:
        print(f"  +{t - prev:6.2f} s  {m}")
        prev = t
    path = cache or next(ck.path.glob(f"projection-{method}-pooled-*.npz"))
    print(f"  file {path.name}: {path.stat().st_size / 2**20:.2f} MiB")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="assets/default-model")
    ap.add_argument("--save", action="store_true", help="write the projections to the checkpoint's cache")
    args = ap.parse_args()
    print(f"machine: {machine()}")
    ck = load_checkpoint(args.model)
    bench_queries(ck)
    bench_spaces(ck)
    with tempfile.TemporaryDirectory() as tmp:
        for method in ["pca", "umap"]:
            bench_projection(ck, method, None if args.save else Path(tmp) / f"{method}.npz")


if __name__ == "__main__":
    main()
