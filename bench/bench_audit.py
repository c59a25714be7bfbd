"""`engram audit` over full-size released tables written as sparse files: rows per second on rows
that hold data, the whole pass's wall time, and peak memory.

    python -m bench.bench_audit [--dense-rows 2000000]

Three tables: DeepSeek-V4.1-Flash's layer 1 (384,006,168 FP8 rows of 256 values + 8 E8M0 scales,
101 GB), Qwen3.8-Flash-Next's PLE (320,001,536 bf16 rows of 160 values in 128 shards, 102 GB) and
LongCat-Flash-Lite's 12 N-gram embedders (122,683,536 bf16 rows of 256 values, one tensor each, 63 GB).
The first `--dense-rows` rows of each hold trained-like values (written to disk); the rest is hole.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import numpy as np

from engram_core.layout import load_layout
from engram_core.tables import quantize_fp8, write_sparse_shards
from engram_inspect.corpus.audit import audit


def v41_table(folder: Path, dense: int) -> None:
    lay = load_layout("deepseek-v4.1-flash")
    n = lay.num_embeddings(1)
    names = ["layers.1.engram.embed.weight", "layers.1.engram.embed.scale"]
    # values and scales are two tensors of different shapes: write the header by hand, two regions
    import json
    import struct

    item_v, item_s = n * 256, n * 8
    header = {
        names[0]: {"dtype": "F8_E4M3", "shape": [n, 256], "data_offsets": [0, item_v]},
        names[1]: {"dtype": "F8_E8M0", "shape": [n, 8], "data_offsets": [item_v, item_v + item_s]},
    }
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    rng = np.random.default_rng(0)
    with open(folder / "model.safetensors", "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        start = f.tell()
        for a in range(0, dense, 1 << 18):
            b = min(a + (1 << 18), dense)
            q, s = quantize_fp8((rng.standard_normal((b - a, 256)) * 0.05).astype(np.float32))
            f.seek(start + a * 256)
            f.write(q.tobytes())
            f.seek(start + item_v + a * 8)
            f.write(s.tobytes())
        f.truncate(start + item_v + item_s)


def qwen_table(folder: Path, dense: int) -> None:
    lay = load_layout("qwen3.8-flash-next")
    per = lay.stored_rows(1) // 128
    names = [f"model.language_model.layers.1.ple.ple_embedding.ngram_embedding.shard_{i}.weight" for i in range(128)]
    write_sparse_shards(folder / "model.safetensors", names, (per, 160), "BF16")
    fill_bf16(folder / "model.safetensors", dense, 160)


def fill_bf16(path: Path, dense: int, width: int) -> None:
    """Trained-like bf16 values in the first `dense` rows of a file of `width`-value rows."""
    import torch

    rng = np.random.default_rng(0)
    with open(path, "r+b") as f:
        n = int.from_bytes(f.read(8), "little")
        for a in range(0, dense, 1 << 18):
            b = min(a + (1 << 18), dense)
            x = torch.from_numpy((rng.standard_normal((b - a, width)) * 0.05).astype(np.float32)).to(torch.bfloat16)
            f.seek(8 + n + a * width * 2)
            f.write(x.view(torch.int16).numpy().tobytes())


def longcat_table(folder: Path, dense: int) -> None:
    from engram_core.families.longcat import TABLE

    lay = load_layout("longcat-flash-lite")
    sizes = list(lay.spec.primes[0])
    names = [TABLE.format(e) for e in range(len(sizes))]
    write_sparse_shards(folder / "model.safetensors", names, [(s, 256) for s in sizes], "BF16")
    fill_bf16(folder / "model.safetensors", dense, 256)


def run(name: str, model: str, make, dense: int) -> None:
    with tempfile.TemporaryDirectory(dir=Path.home()) as tmp:
        folder = Path(tmp)
        t0 = time.perf_counter()
        make(folder, dense)
        made = time.perf_counter() - t0
        lay = load_layout(model)
        marks = []

        def tick(done, total):
            marks.append((time.perf_counter(), done))

        t0 = time.perf_counter()
        report = audit(lay, folder, progress=tick)
        wall = time.perf_counter() - t0
        # rows/s where rows hold data: the blocks up to the last dense row
        t_dense = next(t for t, d in marks if d >= dense) - t0
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        size = (folder / "model.safetensors").stat().st_size
        print(
            f"{name}: {report.rows:,} rows ({size / 1e9:.0f} GB, {dense:,} dense, written in {made:.0f} s); "
            f"dense rows {dense / t_dense:,.0f} rows/s; whole pass {wall:.1f} s; peak RSS {rss:,.0f} MiB; "
            f"findings: {[f.kind for f in report.findings]}"
        )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dense-rows", type=int, default=2_000_000)
    args = ap.parse_args()
    run("V4.1 layer 1, FP8", "deepseek-v4.1-flash", v41_table, args.dense_rows)
    run("Qwen3.8-Flash-Next PLE, bf16", "qwen3.8-flash-next", qwen_table, args.dense_rows)
    run("LongCat-Flash-Lite N-gram embedders, bf16", "longcat-flash-lite", longcat_table, args.dense_rows)


if __name__ == "__main__":
    main()
