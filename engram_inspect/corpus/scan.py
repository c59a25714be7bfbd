"""Corpus statistics of a memory layout as map and reduce steps, two executors.

Map (per shard of documents, `shards`): read, tokenise, compress, hash; count N-grams
and replay the shard's reads through LRU caches (`traffic.map_shard`); the partial
counts go to `OUT_DIR/parts/<shard>.npz`, written atomically, so a rerun after a
crash skips finished shards. Reduce: merge the partial counts (a group-by on the
N-gram) and expand them head by head into `rows.parquet`, `ngrams.parquet`,
`cache.parquet` and `summary.json` (docs/scale.md). For a checkpoint with a backbone
the map also runs the model (`scan_gates`): rows.parquet gains `gate_sum` and
`gate_hits`, and `contexts.parquet` holds each row's top contexts.

The in-process executor runs the map steps one after another and reduces in-process;
`--ray` / `--ray-address` runs the same map function as a Ray Data pipeline
(`map_batches`) and the reduce as a Ray Data group by (layer, order, head, row)
(`scan_ray`).
"""

from __future__ import annotations

import json
import resource
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np

from engram_core.layout import MemoryLayout

from .reuse import zipf_curve
from .scan_sample import shard_caps
from .scan_tables import TableWriter, empty_ngrams_table, empty_rows_table, ngrams_table, rows_table
from .shards import DEFAULT_SAMPLE_RATE, SHARD_BYTES, ScanError, Shard, fold_parts, load_gates, plan_shards, run_map
from .traffic import ShardCounts, Summary, cache_curves, head_rows


def run_local(layout, shards, parts, rate, progress: Callable[[dict], None]) -> None:
    for shard in shards:
        progress(run_map(layout, shard, parts, rate))


def fold_part_gates(paths: list[Path]) -> tuple[dict, dict]:
    """Per-row gate totals and top contexts over every part, folded one part at a time."""
    from .scan_gates import fold_contexts, fold_gates

    gates, ctx = {}, {}
    for path in paths:
        g, c, names = load_gates(path)
        gates, ctx = fold_gates(gates, g), fold_contexts(ctx, c, names)
    return gates, ctx


def finish(layout, shards, parts: Path, rate: float, summary: Summary) -> dict:
    """cache.parquet and the summary, from the head statistics and the parts' cache counts."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    lru, sampled, tokens, documents, problems_all = {}, {}, 0, 0, []
    for s in shards:
        with np.load(parts / f"{s.key}.npz") as z:
            meta = json.loads(z["meta"].tobytes())
            for k in z.files:
                if k.startswith("lru"):
                    lru[int(k[3:])] = lru.get(int(k[3:]), 0) + z[k]
        for k, v in meta["sampled"].items():
            sampled[int(k)] = sampled.get(int(k), 0) + v
        tokens, documents, problems_all = (
            tokens + meta["tokens"],
            documents + meta["documents"],
            problems_all + meta["problems"],
        )
    counts = ShardCounts({}, lru, sampled, tokens, documents)
    pq.write_table(pa.Table.from_pylist(cache_curves(layout, summary, counts)), parts.parent / "cache.parquet")
    return {
        "model": layout.name,
        "layout_digest": layout.digest,
        "part_order": [s.key for s in shards],  # the corpus order of parts/<key>.npz
        "layers": list(layout.layers),
        "tokens": tokens,
        "documents": documents,
        "shards": len(shards),
        "skipped_files": len(problems_all),
        "problems": problems_all,
        "lru_sample_rate": rate,
        "heads": summary.heads,
        "zipf": {str(k): zipf_curve(h) for k, h in summary.hit_hist.items()},
    }


def reduce_parts(layout: MemoryLayout, shards: list[Shard], parts: Path, out_dir: Path, rate: float) -> dict:
    """The in-process reduce: merge every shard's part into rows/ngrams/contexts/cache Parquet; the summary."""
    paths = [parts / f"{s.key}.npz" for s in shards]
    counts, _ = fold_parts(paths)
    gates, ctx = fold_part_gates(paths) if layout.has_backbone else ({}, {})
    summary = Summary()
    rows_w = TableWriter(out_dir / "rows.parquet", empty_rows_table(layout.has_backbone))
    ngrams_w = TableWriter(out_dir / "ngrams.parquet", empty_ngrams_table())
    for hr in head_rows(layout, counts):
        summary.add(hr)
        gate = None
        if layout.has_backbone:  # every row a head reads has a gate total: the same positions
            g = gates[hr.layer]
            i = np.searchsorted(g[0], hr.rows)
            gate = (g[1][i], g[2][i])
        rows_w.write(rows_table(hr.layer, hr.order, hr.head, hr.rows, hr.ngrams, hr.hits, gate))
        ngrams_w.write(ngrams_table(hr.layer, hr.order, hr.head, *hr.collided()))
    rows_w.close()
    ngrams_w.close()
    if layout.has_backbone:
        import pyarrow.parquet as pq

        from .scan_gates import contexts_table

        pq.write_table(contexts_table(layout, ctx), out_dir / "contexts.parquet")
    del counts
    return finish(layout, shards, parts, rate, summary)


def scan(
    layout: MemoryLayout,
    paths: list[str],
    out_dir: str | Path,
    executor: str = "local",
    address: str | None = None,
    workers: int = 2,
    rate: float = DEFAULT_SAMPLE_RATE,
    progress: Callable[[dict], None] | None = None,
    shard_bytes: int = SHARD_BYTES,
    sample_tokens: int | None = None,
) -> dict:
    """Scan the corpus under PATHs into OUT_DIR; returns the summary (also in summary.json).

    `sample_tokens` N scans about N tokens spread evenly over the corpus: every shard keeps
    at most N / shards tokens (`shard_caps`), so the sample is at most N tokens.
    """
    shards = plan_shards(paths, shard_bytes)
    shards = [replace(s, cap=c) for s, c in zip(shards, shard_caps(sample_tokens, len(shards)), strict=True)]
    out_dir = Path(out_dir)
    parts = out_dir / "parts"
    parts.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    done = {"tokens": 0, "documents": 0, "shards": 0}

    def tick(line: dict) -> None:
        for k in ("tokens", "documents"):
            done[k] += line[k]
        done["shards"] += 1
        if progress:
            # cumulative documents and tokens (shards done before a crash included), and this shard's state
            progress({**line, **done, "total_shards": len(shards), "seconds": time.perf_counter() - t0})

    if executor == "ray":
        from .scan_ray import reduce_ray, run_ray, write_reduced

        run_ray(layout.name, shards, parts, rate, tick, address, workers)
        map_seconds = time.perf_counter() - t0
        reduced = reduce_ray(layout, shards, parts, out_dir, address, workers)
        summary = finish(layout, shards, parts, rate, write_reduced(layout, reduced, out_dir))
    else:
        run_local(layout, shards, parts, rate, tick)
        map_seconds = time.perf_counter() - t0
        summary = reduce_parts(layout, shards, parts, out_dir, rate)
    seconds = time.perf_counter() - t0
    summary.update(
        executor=executor,
        workers=workers if executor == "ray" else 1,
        seconds=round(seconds, 2),
        map_seconds=round(map_seconds, 2),
        tokens_per_s=round(summary["tokens"] / max(seconds, 1e-9)),
        peak_rss_mib=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        sample_tokens=sample_tokens,  # asked for (None: the whole corpus); "tokens" is what was scanned
        sample_tokens_per_shard=max((s.cap or 0) for s in shards) or None,
    )
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


# -- command ------------------------------------------------------------------------------------


def check_ray_address(address: str, timeout: float = 3.0) -> None:
    """One clear line for an address nothing answers on (ray.init would wait for minutes)."""
    import socket

    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise ScanError(f"--ray-address takes HOST:PORT, got {address!r}")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as e:
        raise ScanError(f"cannot reach a Ray cluster at {address}: {e.strerror or e}") from e
