"""The Ray executor of `engram scan`: the map steps and the group-by reduce as one Ray Data pipeline.

read -> tokenise, compress, hash (and the model's gates) in `map_batches`, one shard a
batch, each writing its part -> every part expanded into partial counts per block (one
line per N-gram a head files under a row, per row's gate total, per top context) ->
a hash shuffle on (layer, order, head, row) and `reduce_block` on each partition (a group by) -> Parquet under
`OUT_DIR/reduced/`. The driver then streams those files once into rows.parquet,
ngrams.parquet and contexts.parquet and the per-head summary (histograms, never a
group-by), so its memory is one Parquet batch. The steps are those of the in-process
executor (`scan.run_map`, `traffic.count_keys`, `scan_gates.top_k`, `scan_gates.sum_by_key`), so the files agree.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np

from engram_core.addressing import mix_rows
from engram_core.layout import MemoryLayout

from .traffic import Summary, _bits, ngram_head_mixes, unpack

KEYS = ["layer", "order", "head", "row"]
ROW, NGRAM, CONTEXT, GATE = 0, 1, 2, 3  # kinds of line: a row's totals, a collided N-gram, a top context, a gate total
EXPANSION = 48  # bytes of shuffled lines per byte of part (measured 42 for V4.1, 4.4 with gates: docs/scale.md)
PARTITION_BYTES = 32 << 20
COLUMNS = {"kind": np.int8, "hi": np.int64, "lo": np.int64, "count": np.int64, "q": np.int64, "n": np.int64}


def start(address: str | None, workers: int):
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if not ray.is_initialized():
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False  # our progress lines say it once
    return ray


def run_ray(layout_name: str, shards, parts, rate, progress, address: str | None, workers: int) -> None:
    """The map steps as a Ray Data pipeline: one shard per batch, `workers` concurrent tasks."""
    from .shards import Shard, run_map

    ray = start(address, workers)

    def map_batch(batch: dict) -> dict:
        from engram_core.layout import load_layout

        lay = _worker_layout(layout_name, load_layout)
        lines = [
            run_map(
                lay,
                Shard(k, tuple(json.loads(p)), tuple(json.loads(sp)) if sp else None, json.loads(c)),
                Path(parts),
                rate,
            )
            for k, p, sp, c in zip(batch["kind"], batch["paths"], batch["span"], batch["cap"], strict=True)
        ]
        return {"line": [json.dumps(x) for x in lines]}

    items = [
        {"kind": s.kind, "paths": json.dumps(list(s.paths)), "span": json.dumps(s.span) if s.span else ""}
        | {"cap": json.dumps(s.cap)}  # --sample-tokens: each shard's own cap, a plain int (or null) as in its key
        for s in shards
    ]
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    pool = ray.data.TaskPoolStrategy(size=workers)
    for row in ds.map_batches(map_batch, batch_size=1, compute=pool).iter_rows():
        progress(json.loads(row["line"]))


_LAYOUTS: dict = {}


def _worker_layout(name: str, load):
    if name not in _LAYOUTS:  # once per worker process: the V4.1 compression takes about a second
        _LAYOUTS[name] = load(name)
    return _LAYOUTS[name]


def _lines(kind: int, layer, order, head, row, doc=None, **cols) -> dict:
    n = len(row)
    out = {
        "layer": np.broadcast_to(np.asarray(layer, np.int32), n).copy(),
        "order": np.broadcast_to(np.asarray(order, np.int8), n).copy(),
        "head": np.broadcast_to(np.asarray(head, np.int8), n).copy(),
        "row": np.asarray(row, np.int64),
    }
    for c, t in COLUMNS.items():
        out[c] = np.full(n, kind, t) if c == "kind" else np.asarray(cols.get(c, np.zeros(n)), t)
    out["doc"] = np.asarray(doc if doc is not None else [""] * n, dtype=object)
    return out


def expand_part(layout: MemoryLayout, path: Path) -> dict:
    """A part's partial counts as lines keyed by (layer, order, head, row): the map side of the shuffle."""
    from .scan_gates import head_of_rows
    from .shards import _load, load_gates

    counts, _ = _load(path)
    spec, bits, blocks = layout.spec, _bits(layout), []
    for n, (hi, lo, cnt) in sorted(counts.ngrams.items()):
        grams = unpack(hi, lo, n, bits)
        for layer in layout.layers:
            for j, mix in ngram_head_mixes(grams, layout, layer):
                rows = mix_rows(mix, spec.primes[layer][j]) + layout.offsets[layer][j]
                blocks.append(_lines(NGRAM, layer, n, spec.head_address(j)[1], rows, hi=hi, lo=lo, count=cnt))
    if layout.has_backbone:
        gates, ctx, names = load_gates(path)
        for layer in layout.layers:
            r, q, k = gates[layer]
            blocks.append(_lines(GATE, layer, *head_of_rows(layout, layer, r), r, q=q, n=k))
            r, q, d, o = ctx[layer]
            doc = [names[i] for i in d]
            blocks.append(_lines(CONTEXT, layer, *head_of_rows(layout, layer, r), r, doc, q=q, n=o))
    return {c: np.concatenate([b[c] for b in blocks]) for c in blocks[0]}


def _group_key(g: dict) -> np.ndarray:
    """(layer, order, head, row) as one sortable int64: row below 2^40, the rest above."""
    head = (g["layer"].astype(np.int64) * 16 + g["order"]) * 256 + g["head"]
    return head * (1 << 40) + g["row"]


def reduce_block(g: dict) -> dict:
    """Group by (layer, order, head, row) over one hash partition (every line of a key is in it):
    each row's distinct N-grams and reads, gate totals, top contexts and, when it holds two or
    more N-grams, those N-grams. Vectorised: one sort per partition, not a call per row."""
    from .scan_gates import sum_by_key, top_k

    key, kind = _group_key(g), g["kind"]
    ng, ga, cx = kind == NGRAM, kind == GATE, kind == CONTEXT
    k, hi, lo, cnt = key[ng], g["hi"][ng], g["lo"][ng], g["count"][ng]
    order = np.lexsort((lo, hi, k))
    k, hi, lo, cnt = k[order], hi[order], lo[order], cnt[order]
    new = np.ones(len(k), bool)
    new[1:] = (k[1:] != k[:-1]) | (hi[1:] != hi[:-1]) | (lo[1:] != lo[:-1])
    first = np.flatnonzero(new)
    k, hi, lo, cnt = k[first], hi[first], lo[first], np.add.reduceat(cnt, first) if len(first) else cnt[:0]
    rows, ngrams, hits = sum_by_key(k, np.ones(len(k), np.int64), cnt)  # per row: distinct N-grams, reads
    gk, gq, gn = sum_by_key(key[ga], g["q"][ga], g["n"][ga])
    at = np.minimum(np.searchsorted(gk, rows), max(len(gk) - 1, 0))
    has = (gk[at] == rows) if len(gk) else np.zeros(len(rows), bool)
    q = np.where(has, gq[at] if len(gk) else 0, 0)
    n = np.where(has, gn[at] if len(gk) else 0, 0)
    pick = {c: g[c][ng][order][first] for c in KEYS}
    row_at = np.searchsorted(k, rows)  # the first N-gram line of each row carries its key columns
    out = [_lines(ROW, *(pick[c][row_at] for c in KEYS), hi=ngrams, lo=np.zeros(len(rows)), count=hits, q=q, n=n)]
    shared = np.repeat(ngrams >= 2, ngrams)  # N-gram lines are grouped by row, rows in key order
    out.append(_lines(NGRAM, *(pick[c][shared] for c in KEYS), hi=hi[shared], lo=lo[shared], count=cnt[shared]))
    if cx.any():
        doc = np.asarray(g["doc"][cx]).astype(str)
        keep = top_k(key[cx], g["q"][cx], doc, g["n"][cx])
        c = {col: g[col][cx][keep] for col in (*KEYS, "q", "n")}
        out.append(_lines(CONTEXT, *(c[col] for col in KEYS), doc[keep], q=c["q"], n=c["n"]))
    return {c: np.concatenate([o[c] for o in out]) for c in out[0]}


def reduce_ray(layout: MemoryLayout, shards, parts: Path, out_dir: Path, address: str | None, workers: int) -> Path:
    """Group the parts' partial counts by (layer, order, head, row) on Ray; the reduced lines go to Parquet."""
    ray = start(address, workers)
    name = layout.name

    def expand(batch: dict) -> dict:
        from engram_core.layout import load_layout

        return expand_part(_worker_layout(name, load_layout), Path(batch["part"][0]))

    reduced = out_dir / "reduced"
    shutil.rmtree(reduced, ignore_errors=True)  # a reduce cut short before: its files are redone
    items = [{"part": str(parts / f"{s.key}.npz")} for s in shards]
    ds = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(expand, batch_size=1)
    # the group by: a hash shuffle on the key puts every line of a row in one partition, whose
    # lines one vectorised call reduces (map_groups would call Python once per row: 100k+ rows
    # a head). Partitions are sized so that none is split into two blocks (128 MiB at most).
    part_bytes = sum((parts / f"{s.key}.npz").stat().st_size for s in shards)
    partitions = max(2 * workers, -(-part_bytes * EXPANSION // PARTITION_BYTES))
    ds = ds.repartition(partitions, keys=KEYS).map_batches(reduce_block, batch_size=None, batch_format="numpy")
    ds.write_parquet(str(reduced))
    return reduced


def write_reduced(layout: MemoryLayout, reduced: Path, out_dir: Path) -> Summary:
    """Stream the reduced lines into rows/ngrams/contexts Parquet; the per-head summary."""
    import pyarrow.parquet as pq

    from .scan_gates import contexts_table
    from .scan_tables import TableWriter, empty_ngrams_table, empty_rows_table, ngrams_table, rows_table

    spec, bits = layout.spec, _bits(layout)
    heads = {
        (ly, n, h): np.zeros(6, np.int64)
        for n in spec.orders
        for ly in layout.layers
        for h in range(spec.heads_per_ngram)
    }
    hist = {ly: np.zeros(1, np.int64) for ly in layout.layers}
    rows_w = TableWriter(out_dir / "rows.parquet", empty_rows_table(layout.has_backbone))
    ngrams_w = TableWriter(out_dir / "ngrams.parquet", empty_ngrams_table())
    # contexts.parquet exists exactly when the in-process scan writes it: with a backbone
    ctx_w = TableWriter(out_dir / "contexts.parquet", contexts_table(layout, {}) if layout.has_backbone else None)
    for f in sorted(reduced.glob("*.parquet")):
        for batch in pq.ParquetFile(f).iter_batches(batch_size=1 << 16):
            b = {c: batch.column(c).to_numpy(zero_copy_only=False) for c in batch.schema.names}
            for (ly, n, h), sel in _heads(b):
                k = b["kind"][sel]
                r, ngr, hits = b["row"][sel][k == ROW], b["hi"][sel][k == ROW], b["count"][sel][k == ROW]
                if len(r):
                    gate = (b["q"][sel][k == ROW], b["n"][sel][k == ROW]) if layout.has_backbone else None
                    rows_w.write(rows_table(ly, n, h, r, ngr, hits, gate))
                    _tally(heads[(ly, n, h)], ngr, hits)
                    c = np.bincount(hits)
                    size = max(len(c), len(hist[ly]))
                    hist[ly] = np.pad(hist[ly], (0, size - len(hist[ly]))) + np.pad(c, (0, size - len(c)))
                m = k == NGRAM
                if m.any():
                    grams = unpack(b["hi"][sel][m], b["lo"][sel][m], n, bits)[:, ::-1]
                    ngrams_w.write(ngrams_table(ly, n, h, b["row"][sel][m], grams, b["count"][sel][m]))
                m = k == CONTEXT
                if m.any():
                    rows, q, d, o = b["row"][sel][m], b["q"][sel][m], b["doc"][sel][m].astype(str), b["n"][sel][m]
                    ctx_w.write(contexts_table(layout, {ly: (rows, q, d, o)}))
    for w in (rows_w, ngrams_w, ctx_w):
        w.close()
    summary = Summary(hit_hist=hist)
    for (ly, n, h), t in sorted(heads.items(), key=lambda kv: (kv[0][1], layout.layers.index(kv[0][0]), kv[0][2])):
        summary.heads.append(
            {
                "layer": ly,
                "order": n,
                "head": h,
                "rows_hit": int(t[0]),
                "ngrams": int(t[1]),
                "reads": int(t[2]),
                "rows_shared": int(t[3]),
                "collision_rate": float(t[4]) / int(t[2]) if t[2] else 0.0,
                "max_ngrams_per_row": int(t[5]),
            }
        )
    shutil.rmtree(reduced)
    return summary


def _heads(b: dict):
    """(layer, order, head) and the selection of a batch's lines that belong to it."""
    key = np.stack([b["layer"].astype(np.int64), b["order"].astype(np.int64), b["head"].astype(np.int64)], 1)
    for u in np.unique(key, axis=0):
        yield tuple(int(x) for x in u), np.flatnonzero((key == u).all(1))


def _tally(t: np.ndarray, ngrams: np.ndarray, hits: np.ndarray) -> None:
    """rows hit, N-grams, reads, rows shared, reads of shared rows, most N-grams in a row."""
    shared = ngrams >= 2
    t[:5] += [len(ngrams), ngrams.sum(), hits.sum(), shared.sum(), hits[shared].sum()]
    t[5] = max(t[5], ngrams.max())
