"""A corpus cut into shards, and each shard's map step: read, tokenise, compress, hash,
count (`traffic.map_shard`), and the partial counts saved as `OUT_DIR/parts/<shard>.npz`,
atomically, so a rerun after a crash skips finished shards. Both executors of `scan`
run `run_map` and read the parts back with `fold_parts` (in-process) or `_load`
(Ray's reduce); a layout summary folds them too.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engram_core.layout import MemoryLayout

from .scan_sample import tokenize_capped
from .traffic import ShardCounts, map_shard, merge

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


def _save(path: Path, counts: ShardCounts, problems: list[str], seconds: float, gates=None, docs=()) -> None:
    gates, ctx, names = gates or ({}, {}, [])
    arrays = {
        # the token stream itself (raw ids, document lengths): what `engram cache-sim` replays
        "ids": np.concatenate(docs).astype(np.int32) if len(docs) else np.zeros(0, np.int32),
        "doc_lens": np.array([len(d) for d in docs], np.int64),
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
        ),
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


def load_stream(path: Path) -> list[np.ndarray] | None:
    """A part's documents as raw-id arrays; None for a part written before streams were kept."""
    with np.load(path) as z:
        if "ids" not in z.files:
            return None
        ids, lens = z["ids"].astype(np.int64), z["doc_lens"]
    return np.split(ids, np.cumsum(lens)[:-1]) if len(lens) else []


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
        from .scan_gates import map_gates

        lens = np.array([len(d) for d in docs], np.int64)
        raw = np.concatenate(docs) if docs else np.zeros(0, np.int64)
        cids = layout.compress(raw)
        run = layout.look_back(raw, np.concatenate([[0], np.cumsum(lens)[:-1]]) if len(docs) else lens)
        gates = (*map_gates(layout, docs, cids, run), names)
    seconds = time.perf_counter() - t0
    _save(out, counts, problems, seconds, gates, docs)
    if os.environ.get("ENGRAM_SCAN_CRASH_AFTER") == shard.key:  # tests: a crash right after this shard
        os._exit(137)
    return {"shard": shard.key, "skipped": False, "tokens": counts.tokens, "documents": counts.documents}


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
