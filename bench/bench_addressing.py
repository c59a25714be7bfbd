"""DeepSeek-V4.1-Flash addressing: compression build time, rows/s against a per-head NumPy
reference, and table rows read per second from a memory-mapped FP8 file.

    python -m bench.bench_addressing
"""

from __future__ import annotations

import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import machine, timeit
from engram_core.addressing import local_rows, look_back, reference_rows
from engram_core.compression import build_compression
from engram_core.layout import load_layout, v41_tokenizer_path
from engram_core.tables import open_tables, write_mini_shard


def chained_reference(cids: np.ndarray, run: np.ndarray, layout) -> np.ndarray:
    """A stronger baseline: blocked shifts built once, each order's XOR chain shared, `mix % p` per head."""
    spec = layout.spec
    T = len(cids)
    shifts = []
    for k in range(spec.max_ngram):
        s = np.full(T, spec.pad_id, dtype=np.int64)
        s[k:] = cids[: T - k]
        s[run <= k] = spec.pad_id  # the look-back reached a dead token or the start
        shifts.append(s)
    out = np.empty((len(layout.layers), T, spec.heads_per_layer), dtype=np.int64)
    for i, layer in enumerate(layout.layers):
        m = spec.multipliers[layer]
        for n in spec.orders:
            mix = shifts[0] * m[0]
            for k in range(1, n):
                mix = np.bitwise_xor(mix, shifts[k] * m[k])
            for h in range(spec.heads_per_ngram):
                j = spec.head_index(n, h)
                out[i, :, j] = mix % spec.primes[layer][j]
    return out


def cpu_name() -> str:
    try:
        return next(
            x.split(":", 1)[1].strip()
            for x in subprocess.check_output(["lscpu"], text=True).splitlines()
            if x.startswith("Model name")
        )
    except (OSError, StopIteration, subprocess.CalledProcessError):
        return "unknown CPU"


def main() -> None:
    from tokenizers import Tokenizer

    print(f"machine: {machine()}, {cpu_name()}")
    tok = Tokenizer.from_file(str(v41_tokenizer_path()))
    t0 = time.perf_counter()
    comp = build_compression(tok)
    print(
        f"compression of the V4 tokenizer ({comp.raw_size:,} ids -> {comp.size:,}): "
        f"{time.perf_counter() - t0:.2f} s (target <= 5 s)"
    )
    layout = load_layout("deepseek-v4.1-flash")
    rng = np.random.default_rng(0)
    T = 1 << 16
    cids = rng.integers(0, layout.spec.vocab_size, T)
    run = look_back(T, rng.random(T) < 0.01)
    ours_rows = local_rows(cids, run, layout)
    assert np.array_equal(ours_rows, reference_rows(cids, run, layout))
    assert np.array_equal(ours_rows, chained_reference(cids, run, layout))
    ours = timeit(lambda: local_rows(cids, run, layout), repeat=10, warmup=1)
    print(
        f"addressing {T:,} tokens, 2 layers x 24 heads, 1 % dead (outputs identical): ours {ours * 1e3:.1f} ms "
        f"({T / ours / 1e6:.2f}M tokens/s)"
    )
    for name, fn in (
        ("per-head reference (each head from scratch, `%`)", reference_rows),
        ("chained reference (XOR chain shared per order, `%` per head)", chained_reference),
    ):
        ref = timeit(lambda fn=fn: fn(cids, run, layout), repeat=5, warmup=1)
        print(f"  {name}: {ref * 1e3:.1f} ms, ours {ref / ours:.1f}x faster (target >= 5x the per-head reference)")
    qwen = load_layout("qwen3.8-flash-next")  # raw ids, EOS (1 %) restarting N-grams
    ids = rng.integers(0, qwen.vocab_size, T)
    ids[rng.random(T) < 0.01] = qwen.restart_after
    run = look_back(T, None, qwen.starts(ids))
    q_rows = local_rows(ids, run, qwen)
    assert np.array_equal(q_rows, reference_rows(ids, run, qwen))
    ours = timeit(lambda: local_rows(ids, run, qwen), repeat=10, warmup=1)
    ref = timeit(lambda: reference_rows(ids, run, qwen), repeat=5, warmup=1)
    print(
        f"Qwen3.8-Flash-Next PLE addressing, {T:,} tokens, 1 layer x 16 heads, 1 % EOS (identical): ours "
        f"{ours * 1e3:.1f} ms, per-head reference {ref * 1e3:.1f} ms: {ref / ours:.1f}x faster (target >= 5x)"
    )
    lc = load_layout("longcat-flash-lite")  # raw ids, EOS (1 %) dead: it reads row 0 and stops N-grams
    ids = rng.integers(0, lc.vocab_size, T)
    ids[rng.random(T) < 0.01] = lc.dead_token
    run = lc.look_back(ids)
    assert np.array_equal(local_rows(ids, run, lc), reference_rows(ids, run, lc))
    ours = timeit(lambda: local_rows(ids, run, lc), repeat=10, warmup=1)
    ref = timeit(lambda: reference_rows(ids, run, lc), repeat=5, warmup=1)
    print(
        f"LongCat-Flash-Lite N-gram embedders, {T:,} tokens, 1 layer x 12 heads, 1 % EOS (identical): ours "
        f"{ours * 1e3:.1f} ms, per-head reference {ref * 1e3:.1f} ms: {ref / ours:.1f}x faster (target >= 5x)"
    )
    with tempfile.TemporaryDirectory() as d:
        n_rows = 1 << 18  # 66 MiB of FP8 rows: larger than the caches, small enough for /tmp
        x = rng.normal(size=(n_rows, 256)).astype(np.float32)
        write_mini_shard(Path(d) / "t.safetensors", {1: x})
        del x
        table = open_tables(d)[1]
        rows = rng.integers(0, n_rows, 4096)
        per = timeit(lambda: table.read(rows), repeat=20, warmup=2)
        print(
            f"table rows from a memory-mapped FP8 file, 4,096 random rows a batch: {len(rows) / per:,.0f} rows/s "
            f"({len(rows) * 264 / per / 2**20:,.0f} MiB/s of stored rows)"
        )


if __name__ == "__main__":
    main()
