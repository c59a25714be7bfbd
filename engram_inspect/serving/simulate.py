"""A grid of hot-row caches run over one pass of a trace: one line per (layer, policy,
capacity, streams, granularity).

Figures per line (a read is one row read by one head at one token):
- `hit_rate`: reads served wholly from the cache; `misses_per_token`: reads that waited
  for storage (with a prefetcher: the misses left on the critical path);
- `bytes_per_token`: bytes read from storage per token, prefetches included;
- pages: `unit_hit_rate` (page hits) and `amplification` (bytes read per byte of the
  rows that missed: 4096 / row_bytes when every page holds one useful row);
- static: the most-read units of a training stream, loaded before the stream (its
  first reads hit); every other policy starts cold. Belady (MIN, with bypass) holds the
  stream of its layer in memory (8 bytes a read; `belady_max_reads`).

Capacities are per layer, in rows (`100000`) or bytes (`64MiB`, `1.5GiB`, `512KiB`). In
bytes they become whole units (rows, or 4 KiB pages) and, set-associative, whole sets.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from engram_core.layout import MemoryLayout

from .caches import DYNAMIC, POLICIES, Cache, CacheSimError, StaticSet, belady_hits, check_policy
from .traces import CHUNK_TOKENS, PAGE_BYTES, interleave, rechunk, row_hits, to_units, units_of_rows

GRANULARITIES = ("row", "page")
_UNITS = {"": 1, "b": 1, "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "kb": 10**3, "mb": 10**6, "gb": 10**9}
BELADY_MAX_READS = 100_000_000  # 0.8 GB of stream and as much again of next uses


@dataclass(frozen=True)
class Capacity:
    """A per-layer capacity as given: a row count, or bytes."""

    text: str
    rows: int | None = None
    nbytes: int | None = None

    def units(self, granularity: str, row_bytes: int, ways: int | None) -> int:
        """Cache slots: rows or pages; bytes round down to whole sets."""
        if self.rows is not None and granularity == "row":
            n = self.rows
            if ways and n % ways:
                raise CacheSimError(f"{ways} ways do not divide a capacity of {n:,} rows")
        else:  # bytes, or rows held in pages: whole units, whole sets
            nbytes = self.nbytes if self.nbytes is not None else self.rows * row_bytes
            n = nbytes // (row_bytes if granularity == "row" else PAGE_BYTES)
            if ways:
                n -= n % ways
        if n <= 0:
            raise CacheSimError(f"capacity {self.text} holds no whole {granularity}{' set' if ways else ''}")
        return n


def parse_capacity(text: str) -> Capacity:
    """'100000' (rows), '64MiB', '1.5GiB', '512KiB' (bytes per layer)."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(text))
    if not m or m.group(2).lower() not in _UNITS:
        raise CacheSimError(f"capacity {text!r}: give rows (100000) or bytes (64MiB, 1.5GiB, 512KiB)")
    value, unit = float(m.group(1)), m.group(2).lower()
    if unit == "":
        if value != int(value):
            raise CacheSimError(f"capacity {text!r}: a row count is a whole number")
        if value <= 0:
            raise CacheSimError(f"capacity must be positive, got {text!r}")
        return Capacity(str(text), rows=int(value))
    nbytes = int(value * _UNITS[unit])
    if nbytes <= 0:
        raise CacheSimError(f"capacity must be positive, got {text!r}")
    return Capacity(str(text), nbytes=nbytes)


def parse_capacities(text: str) -> list[Capacity]:
    return [parse_capacity(c) for c in str(text).split(",") if c.strip()]


@dataclass(frozen=True)
class Grid:
    """What one simulation runs: every policy at every capacity, per layer."""

    policies: tuple[str, ...] = ("lru", "clock", "set-assoc", "static", "belady")
    capacities: tuple[Capacity, ...] = ()
    ways: int = 16
    lookahead: int = 0  # prefetch: tokens ahead of the reader
    bandwidth: int = 0  # prefetch: units fetched per token
    max_tokens: int | None = None
    belady_max_reads: int = BELADY_MAX_READS

    def check(self) -> None:
        if not self.capacities:
            raise CacheSimError("give at least one capacity")
        for p in self.policies:
            check_policy(p, self.ways, self.ways if p == "set-assoc" else None)  # names and ways only
        if self.lookahead < 0 or self.bandwidth < 0:
            raise CacheSimError("--lookahead and --bandwidth cannot be negative")
        if self.lookahead and not self.bandwidth:
            raise CacheSimError("a prefetch lookahead needs --bandwidth B (units fetched per token, B >= 1)")
        if self.max_tokens is not None and self.max_tokens <= 0:
            raise CacheSimError(f"--max-tokens must be positive, got {self.max_tokens}")


@dataclass
class _Line:
    """One cache of the grid and its running counts."""

    layer: int
    policy: str
    capacity: Capacity
    units: int
    cache: Cache | StaticSet | None  # None: Belady, run at the end
    reads: int = 0
    hits: int = 0
    unit_reads: int = 0
    unit_hits: int = 0
    missed_bytes: int = 0  # bytes of the rows that missed

    def add(self, unit_hit: np.ndarray, read_ptr: np.ndarray, row_bytes: int) -> None:
        hit = row_hits(unit_hit, read_ptr)
        self.reads += len(hit)
        self.hits += int(hit.sum())
        self.unit_reads += len(unit_hit)
        self.unit_hits += int(unit_hit.sum())
        self.missed_bytes += int((~hit).sum()) * row_bytes


Docs = Callable[[], Iterable[np.ndarray]]  # a fresh iterator of raw-id documents per pass


def static_counts(layout: MemoryLayout, docs: Docs, granularity: str, max_tokens: int | None) -> dict[int, tuple]:
    """Per layer, (units, reads) of a training stream (order does not matter: one stream)."""
    acc: dict[int, list] = {layer: [] for layer in layout.layers}
    seen = 0
    for rows, n in rechunk(interleave(layout, docs(), 1), CHUNK_TOKENS, 0):
        if max_tokens is not None:
            n = min(n, max_tokens - seen)
        for i, layer in enumerate(layout.layers):
            u, c = np.unique(rows[i, :n].reshape(-1), return_counts=True)
            acc[layer].append((u, c))
            if len(acc[layer]) >= 16:
                acc[layer] = [_merge(acc[layer])]
        seen += n
        if max_tokens is not None and seen >= max_tokens:
            break
    out = {}
    for layer, parts in acc.items():
        rows, counts = _merge(parts) if parts else (np.zeros(0, np.int64), np.zeros(0, np.int64))
        out[layer] = units_of_rows(rows, counts, granularity, layout.row_bytes)
    return out


def _merge(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    u = np.concatenate([p[0] for p in parts])
    c = np.concatenate([p[1] for p in parts])
    keys, inv = np.unique(u, return_inverse=True)
    return keys, np.bincount(inv, weights=c).astype(np.int64)


def simulate(
    layout: MemoryLayout,
    docs: Docs,
    grid: Grid,
    streams: int = 1,
    granularity: str = "row",
    static_from: Docs | dict[int, tuple] | None = None,
    progress: Callable[[int], None] | None = None,
    chunk: int = CHUNK_TOKENS,
) -> list[dict]:
    """Every (layer, policy, capacity) of `grid` over one pass of the trace of `docs`.

    `static_from`: the training stream of the static policy (documents, or per-layer
    (rows, reads) counts such as a scan's); None trains it on the trace itself, which makes
    it the best static set of that trace.
    """
    grid.check()
    if granularity not in GRANULARITIES:
        raise CacheSimError(f"unknown granularity {granularity!r}: row or page")
    if streams < 1:
        raise CacheSimError(f"streams must be at least 1, got {streams}")
    rb = layout.row_bytes
    ways = grid.ways
    lines: list[_Line] = []
    counts = None
    if "static" in grid.policies:
        if isinstance(static_from, dict):
            counts = {la: units_of_rows(*static_from[la], granularity, rb) for la in static_from}
        else:
            counts = static_counts(layout, static_from or docs, granularity, None if static_from else grid.max_tokens)
    queue = 0
    if grid.lookahead:
        # units a token can read: H rows, each over at most 1 + ceil(row_bytes / page) pages
        per_token = layout.spec.heads_per_layer * (1 if granularity == "row" else 2 + rb // PAGE_BYTES)
        queue = (grid.lookahead + 1) * per_token + 1
    for layer in layout.layers:
        for policy in grid.policies:
            for cap in grid.capacities:
                n = cap.units(granularity, rb, ways if policy == "set-assoc" else None)
                if policy in DYNAMIC:
                    look = grid.lookahead
                    cache = Cache(policy, n, ways if policy == "set-assoc" else 0, look, grid.bandwidth, queue)
                elif policy == "static":
                    u, c = counts.get(layer, (np.zeros(0, np.int64),) * 2)
                    cache = StaticSet.from_counts(u, c, n)
                else:
                    cache = None
                lines.append(_Line(layer, policy, cap, n, cache))
    belady_units: dict[int, list] = {layer: [] for layer in layout.layers} if "belady" in grid.policies else {}
    belady_ptr: dict[int, list] = {layer: [] for layer in layout.layers}
    belady_size = 0
    tokens = 0
    for rows, n in rechunk(interleave(layout, docs(), streams), chunk, grid.lookahead):
        if grid.max_tokens is not None:
            n = min(n, grid.max_tokens - tokens)
            rows = rows[:, : n + grid.lookahead]
        for i, layer in enumerate(layout.layers):
            u = to_units(rows[i], n, grid.lookahead, granularity, rb)
            for line in lines:
                if line.layer != layer:
                    continue
                if isinstance(line.cache, Cache):
                    line.add(line.cache.feed(u.units, u.tok_ptr, n)[0], u.read_ptr, rb)
                elif isinstance(line.cache, StaticSet):
                    line.add(line.cache.hits(u.units[: u.read_ptr[-1]]), u.read_ptr, rb)
            if layer in belady_units:
                served = u.units[: u.read_ptr[-1]]
                belady_size += len(served)
                if belady_size > grid.belady_max_reads:
                    raise CacheSimError(
                        f"belady holds the whole stream in memory: more than {grid.belady_max_reads:,} reads; "
                        "simulate a prefix (--max-tokens) or leave belady out"
                    )
                belady_units[layer].append(served)
                belady_ptr[layer].append(np.diff(u.read_ptr))
        tokens += n
        if progress:
            progress(tokens)
        if grid.max_tokens is not None and tokens >= grid.max_tokens:
            break
    for line in lines:
        if line.policy == "belady":
            stream = np.concatenate(belady_units[line.layer]) if belady_units[line.layer] else np.zeros(0, np.int64)
            per_read = np.concatenate(belady_ptr[line.layer]) if belady_ptr[line.layer] else np.zeros(0, np.int64)
            line.add(belady_hits(stream, line.units), np.concatenate([[0], np.cumsum(per_read)]), rb)
    return [_record(line, layout, grid, streams, granularity, tokens, static_from) for line in lines]


def _record(
    line: _Line, layout: MemoryLayout, grid: Grid, streams: int, granularity: str, tokens: int, static_from
) -> dict:
    unit_bytes = layout.row_bytes if granularity == "row" else PAGE_BYTES
    prefetched = int(line.cache.stats[0]) if isinstance(line.cache, Cache) else 0
    read_bytes = (line.unit_reads - line.unit_hits + prefetched) * unit_bytes
    misses = line.reads - line.hits
    return {
        "layer": line.layer,
        "policy": line.policy,
        "ways": grid.ways if line.policy == "set-assoc" else None,
        "capacity": line.capacity.text,
        "capacity_units": line.units,
        "capacity_mib": line.units * unit_bytes / 2**20,
        "table_units": -(-layout.num_embeddings(line.layer) * layout.row_bytes // unit_bytes),  # the whole table
        "streams": streams,
        "granularity": granularity,
        "lookahead": grid.lookahead if line.policy in DYNAMIC else 0,
        "bandwidth": grid.bandwidth if line.policy in DYNAMIC and grid.lookahead else 0,
        "tokens": tokens,
        "reads": line.reads,
        "hits": line.hits,
        "hit_rate": line.hits / line.reads if line.reads else 0.0,
        "misses_per_token": misses / tokens if tokens else 0.0,
        "bytes_per_token": read_bytes / tokens if tokens else 0.0,
        "unit_hit_rate": line.unit_hits / line.unit_reads if line.unit_reads else 0.0,
        "amplification": read_bytes / line.missed_bytes if line.missed_bytes else None,
        "prefetched": prefetched,
        "static_trained_on": ("trace" if static_from is None else "given") if line.policy == "static" else None,
    }


def capacity_for(records: list[dict], target: float) -> dict[tuple, dict | None]:
    """Per (layer, policy, streams, granularity): the smallest capacity run reaching `target` hits."""
    out: dict[tuple, dict | None] = {}
    for r in sorted(records, key=lambda r: r["capacity_mib"]):
        key = (r["layer"], r["policy"], r["streams"], r["granularity"])
        out.setdefault(key, None)
        if out[key] is None and r["hit_rate"] >= target:
            out[key] = r
    return out


__all__ = [
    "POLICIES",
    "GRANULARITIES",
    "Capacity",
    "CacheSimError",
    "Grid",
    "capacity_for",
    "parse_capacities",
    "parse_capacity",
    "simulate",
    "static_counts",
]
