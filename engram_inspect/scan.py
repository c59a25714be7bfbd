"""`engram scan`: corpus statistics of a memory layout as map and reduce steps, two executors.

Map (per shard of documents): read, tokenise, compress, hash; count N-grams and
replay the shard's reads through LRU caches (`traffic.map_shard`); the partial
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

import hashlib
import json
import os
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from engram_core.layout import MemoryLayout

from .scan_sample import parse_sample_tokens, shard_caps, tokenize_capped
from .scan_tables import TableWriter, empty_ngrams_table, empty_rows_table, ngrams_table, rows_table
from .traffic import ShardCounts, Summary, cache_curves, head_rows, map_shard, merge, zipf_curve

TEXT_SUFFIXES = (".txt", ".md", ".py")
SHARD_BYTES = 4 << 20  # text bytes per shard of a folder: bounds a map step's memory
DEFAULT_SAMPLE_RATE = 1 / 16  # LRU replay sample (SHARDS); fixed so every executor samples the same reads


class ScanError(ValueError):
    """Bad scan input (no such path, nothing to scan); one line."""


@dataclass(frozen=True)
class Shard:
    """A unit of map work: some files, or one JSONL/Parquet file."""

    kind: str  # "files", "jsonl" or "parquet"
    paths: tuple[str, ...]
    span: tuple[int, int] | None = None  # byte range of a JSONL file, cut at line ends
    cap: int | None = None  # --sample-tokens: the most tokens this shard's map keeps (None: all)

    @property
    def key(self) -> str:
        # the cap joins the identity only when set: a full scan keeps its old part names, and a
        # resumed scan under another --sample-tokens never reuses a part made under a different cap
        ident = [self.kind, self.paths, self.span] + ([self.cap] if self.cap is not None else [])
        return hashlib.sha256(json.dumps(ident).encode()).hexdigest()[:16]


def jsonl_shards(path: Path, shard_bytes: int) -> list[Shard]:
    """A JSONL file cut into byte ranges of about `shard_bytes`, each ending at a line end."""
    size, start, out = path.stat().st_size, 0, []
    with open(path, "rb") as f:
        while start < size:
            f.seek(min(start + shard_bytes, size))
            f.readline()
            end = min(f.tell(), size)
            out.append(Shard("jsonl", (str(path),), (start, end)))
            start = end
    return out or [Shard("jsonl", (str(path),), (0, 0))]


def plan_shards(paths: list[str], shard_bytes: int = SHARD_BYTES) -> list[Shard]:
    """Deterministic shards of every input: folders in file-name order, grouped by size."""
    shards: list[Shard] = []
    for p in paths:
        path = Path(p)
        if not path.exists():
            raise ScanError(f"no such path: {p}")
        if path.is_dir():
            found = sorted(f for f in path.rglob("*") if f.is_file())
            files = [str(f) for f in found if f.suffix in TEXT_SUFFIXES]
            group, size = [], 0
            for f in files:
                group.append(f)
                size += os.path.getsize(f)
                if size >= shard_bytes:
                    shards.append(Shard("files", tuple(group)))
                    group, size = [], 0
            if group:
                shards.append(Shard("files", tuple(group)))
            for f in found:  # JSONL and Parquet files inside a folder are their own shards
                if f.suffix == ".jsonl":
                    shards.extend(jsonl_shards(f, shard_bytes))
                elif f.suffix == ".parquet":
                    shards.append(Shard("parquet", (str(f),)))
        elif path.suffix == ".jsonl":
            shards.extend(jsonl_shards(path, shard_bytes))
        elif path.suffix == ".parquet":
            shards.append(Shard("parquet", (str(path),)))
        elif path.suffix in TEXT_SUFFIXES:
            shards.append(Shard("files", (str(path),)))
        else:
            raise ScanError(f"{p}: give folders of .txt/.md/.py files, .jsonl with a text field, or .parquet")
    if not shards:
        raise ScanError("no documents found in " + ", ".join(paths))
    return shards


def read_shard(shard: Shard) -> tuple[list[str], list[str], list[str]]:
    """(documents, their names, problems): a corrupt or unreadable file is reported, never fatal.

    A document's name is its file, `FILE@BYTE` for a JSONL line, `FILE#INDEX` for a Parquet row.
    """
    docs, names, problems = [], [], []
    for p in shard.paths:
        try:
            if shard.kind == "files":
                texts, ids = [Path(p).read_bytes().decode("utf-8")], [p]
            elif shard.kind == "jsonl":
                with open(p, "rb") as f:
                    f.seek(shard.span[0])
                    raw = f.read(shard.span[1] - shard.span[0])
                texts, ids, at = [], [], shard.span[0]
                for line in raw.split(b"\n"):
                    if line.strip():
                        texts.append(json.loads(line.decode("utf-8"))["text"])
                        ids.append(f"{p}@{at}")
                    at += len(line) + 1
            else:
                import pyarrow.parquet as pq

                texts = pq.read_table(p, columns=["text"]).column("text").to_pylist()
                ids = [f"{p}#{i}" for i in range(len(texts))]
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as e:
            where = f"{p} bytes {shard.span[0]}-{shard.span[1]}" if shard.span else p
            problems.append(f"{where}: {type(e).__name__}: {str(e)[:120]}")
            continue  # the whole file is skipped: half a file would skew its counts silently
        keep = [i for i, t in enumerate(texts) if isinstance(t, str)]
        docs.extend(texts[i] for i in keep)
        names.extend(ids[i] for i in keep)
    return docs, names, problems


def _save(path: Path, counts: ShardCounts, problems: list[str], seconds: float, gates=None) -> None:
    gates, ctx, names = gates or ({}, {}, [])
    arrays = {
        "meta": np.frombuffer(
            json.dumps(
                {
                    "tokens": counts.tokens,
                    "documents": counts.documents,
                    "problems": problems,
                    "seconds": seconds,
                    "sampled": {str(k): v for k, v in counts.sampled.items()},
                    "doc_names": names,
                }
            ).encode(),
            dtype=np.uint8,
        )
    }
    for n, (hi, lo, cnt) in counts.ngrams.items():
        arrays[f"ngrams{n}"] = np.stack([hi, lo, cnt])
    for layer, hits in counts.lru_hits.items():
        arrays[f"lru{layer}"] = hits
    for layer in gates:
        arrays[f"gate{layer}"], arrays[f"ctx{layer}"] = gates[layer], ctx[layer]
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)  # atomic: a killed run never leaves a half-written part


def _load(path: Path) -> tuple[ShardCounts, dict]:
    with np.load(path) as z:
        meta = json.loads(z["meta"].tobytes())
        ngrams = {int(k[6:]): tuple(z[k]) for k in z.files if k.startswith("ngrams")}
        lru = {int(k[3:]): z[k] for k in z.files if k.startswith("lru")}
    sampled = {int(k): v for k, v in meta["sampled"].items()}
    return ShardCounts(ngrams, lru, sampled, meta["tokens"], meta["documents"]), meta


def load_gates(path: Path) -> tuple[dict, dict, list[str]]:
    """A part's per-row gate sums and top contexts (empty for a layout without a backbone)."""
    with np.load(path) as z:
        gates = {int(k[4:]): z[k] for k in z.files if k.startswith("gate")}
        ctx = {int(k[3:]): z[k] for k in z.files if k.startswith("ctx")}
        names = json.loads(z["meta"].tobytes())["doc_names"]
    return gates, ctx, names


def run_map(layout: MemoryLayout, shard: Shard, parts: Path, rate: float) -> dict:
    """The map step of one shard (skipped when its part exists); returns its progress line."""
    out = parts / f"{shard.key}.npz"
    if out.exists():
        return {"shard": shard.key, "skipped": True, **{k: _load(out)[1][k] for k in ("tokens", "documents")}}
    t0 = time.perf_counter()
    texts, names, problems = read_shard(shard)
    docs = tokenize_capped(layout, texts, shard.cap)
    names = names[: len(docs)]  # a capped shard keeps its first documents
    counts = map_shard(layout, docs, rate)
    gates = None
    if layout.has_backbone:  # the model reads the shard: gate sums and top contexts per row
        from engram_core.addressing import look_back

        from .scan_gates import map_gates

        lens = np.array([len(d) for d in docs], np.int64)
        cids = layout.compress(np.concatenate(docs) if docs else np.zeros(0, np.int64))
        run = look_back(len(cids), None, np.concatenate([[0], np.cumsum(lens)[:-1]]) if len(docs) else lens)
        gates = (*map_gates(layout, docs, cids, run), names)
    seconds = time.perf_counter() - t0
    _save(out, counts, problems, seconds, gates)
    if os.environ.get("ENGRAM_SCAN_CRASH_AFTER") == shard.key:  # tests: a crash right after this shard
        os._exit(137)
    return {"shard": shard.key, "skipped": False, "tokens": counts.tokens, "documents": counts.documents}


def run_local(layout, shards, parts, rate, progress: Callable[[dict], None]) -> None:
    for shard in shards:
        progress(run_map(layout, shard, parts, rate))


def fold_parts(paths: list[Path], batch: int = 8) -> tuple[ShardCounts, list[str]]:
    """Merge the parts a few at a time into a running total: memory holds the distinct
    N-grams so far plus `batch` parts, not every part of the corpus at once."""
    total, pending, problems = None, [], []
    for i, path in enumerate(paths):
        counts, meta = _load(path)
        pending.append(counts)
        problems += meta["problems"]
        if len(pending) == batch or i == len(paths) - 1:
            total = merge(([total] if total is not None else []) + pending)
            pending = []
    return total, problems


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


def cmd_scan(args) -> None:
    import sys

    from engram_core.cli import UserError
    from engram_core.layout import load_layout

    try:
        if args.ray or args.ray_address:
            import importlib.util

            if importlib.util.find_spec("ray") is None:
                raise ScanError("--ray needs the optional extra: pip install 'engram-inspector[scale]'")
        if args.ray_address:
            check_ray_address(args.ray_address)
        if not 0 < args.sample_rate <= 1:
            raise ScanError(f"--sample-rate must lie in (0, 1], got {args.sample_rate}")
        if args.workers < 1:
            raise ScanError(f"--workers must be at least 1, got {args.workers}")
        if args.shard_bytes < 1:
            raise ScanError(f"--shard-bytes must be positive, got {args.shard_bytes}")
        sample = None if args.sample_tokens is None else parse_sample_tokens(args.sample_tokens)
        shards = plan_shards(args.paths, args.shard_bytes)  # no such path: before the model loads
        layout = load_layout(args.model)
    except ValueError as e:
        raise UserError(str(e)) from e
    executor = "ray" if (args.ray or args.ray_address) else "local"

    def progress(p: dict) -> None:
        rate = p["tokens"] / max(p["seconds"], 1e-9)
        state = "done before, skipped" if p["skipped"] else "done"
        print(
            f"shard {p['shards']}/{p['total_shards']} {state}; so far {p['documents']:,} documents, "
            f"{p['tokens']:,} tokens, {rate:,.0f} tokens/s",
            file=sys.stderr,
        )

    del shards
    s = scan(
        layout,
        args.paths,
        args.output,
        executor,
        args.ray_address,
        args.workers,
        args.sample_rate,
        progress,
        args.shard_bytes,
        sample,
    )
    print(
        f"{s['tokens']:,} tokens, {s['documents']:,} documents in {s['seconds']} s ({s['tokens_per_s']:,} tokens/s), "
        f"{s['skipped_files']} files skipped{_sampled(s)}, peak RSS {s['peak_rss_mib']:,} MiB: {args.output}"
    )


def _sampled(s: dict) -> str:
    return f" (a sample: {s['sample_tokens']:,} tokens asked for)" if s.get("sample_tokens") else ""


def print_scan(out_dir: str) -> None:
    """`engram stats OUT_DIR`: the per-layer summary of a finished scan."""
    from engram_core.cli import UserError

    try:
        s = json.loads((Path(out_dir) / "summary.json").read_text())
        import pyarrow.parquet as pq

        cache = pq.read_table(Path(out_dir) / "cache.parquet").to_pylist()
    except (OSError, ValueError) as e:
        raise UserError(f"{out_dir} is not a finished scan (summary.json, cache.parquet): {e}") from e
    print(
        f"{s['model']}: {s['tokens']:,} tokens, {s['documents']:,} documents, {s['shards']} shards, "
        f"{s['skipped_files']} files skipped ({s['executor']}, {s['seconds']} s){_sampled(s)}"
    )
    for layer in s["layers"]:
        heads = [h for h in s["heads"] if h["layer"] == layer]
        reads = sum(h["reads"] for h in heads)
        rate = sum(h["collision_rate"] * h["reads"] for h in heads) / max(reads, 1)
        curve = [c for c in cache if c["layer"] == layer and c["mib"] <= 1024]
        at = f"; 1 GiB cache: LRU {curve[-1]['lru']:.3f}, static {curve[-1]['static']:.3f}" if curve else ""
        print(
            f"layer {layer}: {sum(h['rows_hit'] for h in heads):,} rows hit, {reads:,} reads, "
            f"collision rate {rate:.4f}{at}"
        )


def add_scan_command(sub) -> None:
    s = sub.add_parser("scan", help="corpus statistics of a memory layout into OUT_DIR (in-process, or on Ray)")
    s.add_argument("paths", nargs="+", metavar="PATH", help="folders of .txt/.md/.py, .jsonl (text), .parquet (text)")
    s.add_argument("--model", default="deepseek-v4.1-flash", help="deepseek-v4.1-flash or a checkpoint folder")
    s.add_argument("-o", "--output", required=True, metavar="OUT_DIR")
    s.add_argument("--ray", action="store_true", help="run the map steps on a local Ray cluster")
    s.add_argument("--ray-address", help="join an existing Ray cluster at HOST:PORT")
    s.add_argument("--workers", type=int, default=2, help="concurrent Ray map tasks")
    s.add_argument("--sample-rate", type=float, default=DEFAULT_SAMPLE_RATE, help="LRU replay sample rate")
    s.add_argument("--shard-bytes", type=int, default=SHARD_BYTES, help="text bytes per shard of a folder")
    s.add_argument(
        "--sample-tokens",
        metavar="N",
        help="scan about N tokens spread evenly over the corpus (each shard keeps its first N/shards tokens)",
    )
    s.set_defaults(fn=cmd_scan)
