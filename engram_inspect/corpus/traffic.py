"""Row traffic of a corpus under a memory layout, sparse: collisions, Zipf and hot-row cache curves.

Written as a map step over shards of documents (`map_shard` -> `ShardCounts`) and a
reduce step (`reduce_counts` -> `Traffic`), so one process (`scan.py`'s local executor)
and Ray Data run the same code. Nothing is ever sized by a table (V4.1: 384M rows a
layer): N-grams are counted by sorting, rows exist only where hit.

- An N-gram is the padded suffix of compressed ids a position reads (ENGRAM.md §2,
  §10): slots before a document start take the pad, so N-grams never cross documents.
- Hot-row caches (`reuse`): the best static cache and LRU, from a spatially sampled
  stream of the rows read (the SHARDS estimator). Each shard is replayed from a cold cache.

Dimensions: T tokens, K distinct N-grams, H heads per layer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from engram_core.addressing import mix_rows, slot_values
from engram_core.layout import MemoryLayout

from .reuse import CACHE_SIZES, lru_hits, sample_mask, static_from_hist, zipf_curve


@dataclass
class ShardCounts:
    """What one shard of documents contributes: mergeable by addition."""

    ngrams: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]  # order -> (hi, lo, count), sorted
    lru_hits: dict[int, np.ndarray]  # layer -> (len(CACHE_SIZES),) sampled LRU hits per cache size
    sampled: dict[int, int]  # layer -> sampled reads
    tokens: int = 0
    documents: int = 0
    streams: dict[int, np.ndarray] | None = None  # layer -> sampled reads, kept for one replay of a whole corpus


@dataclass
class Traffic:
    """Corpus statistics of one layout: per-head collisions, Zipf and cache curves."""

    heads: list[dict]  # one line per (layer, order, head): rows hit, N-grams, collision rate
    cache: list[dict]  # one line per (layer, size): rows, mib, lru, static hit rates
    zipf: dict[int, list[tuple[int, int]]]  # layer -> (rank, reads) at log-spaced ranks
    tokens: int
    documents: int
    sample_rate: float


# -- N-gram keys --------------------------------------------------------------------------------


def _bits(layout: MemoryLayout) -> int:
    return int(layout.spec.vocab_size - 1).bit_length()


def ngram_matrix(cids: np.ndarray, run: np.ndarray, order: int, pad: int) -> np.ndarray:
    """(T, order) padded suffix N-grams, newest token first (slot k = token t-k)."""
    T = len(cids)
    out = np.full((T, order), pad, dtype=np.int64)
    for k in range(order):
        out[k:, k] = cids[: T - k] if T > k else out[k:, k]
        out[run <= k, k] = pad
    return out


def pack(grams: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact two-word key of each N-gram: slots 0..2 in lo, the rest in hi (bits <= 20)."""
    if bits > 20 or grams.shape[1] > 6:
        raise ValueError("N-gram keys hold at most 6 slots of 20-bit ids")
    lo = np.zeros(len(grams), dtype=np.int64)
    hi = np.zeros(len(grams), dtype=np.int64)
    for k in range(grams.shape[1]):
        word, shift = (lo, k * bits) if k < 3 else (hi, (k - 3) * bits)
        word |= grams[:, k] << shift
    return hi, lo


def unpack(hi: np.ndarray, lo: np.ndarray, order: int, bits: int) -> np.ndarray:
    mask = (1 << bits) - 1
    return np.stack([((lo if k < 3 else hi) >> ((k % 3) * bits)) & mask for k in range(order)], axis=1)


def count_keys(hi: np.ndarray, lo: np.ndarray, weight: np.ndarray | None = None):
    """Distinct (hi, lo) pairs, sorted, with their summed weights."""
    if len(lo) == 0:
        z = np.zeros(0, np.int64)
        return z, z, z
    order = np.lexsort((lo, hi))
    hi, lo = hi[order], lo[order]
    new = np.ones(len(lo), dtype=bool)
    new[1:] = (hi[1:] != hi[:-1]) | (lo[1:] != lo[:-1])
    starts = np.flatnonzero(new)
    w = np.ones(len(lo), np.int64) if weight is None else weight[order]
    return hi[starts], lo[starts], np.add.reduceat(w, starts)


# -- the sampled read stream ---------------------------------------------------------------------


def sampled_stream(layout: MemoryLayout, cids, run, layer: int, rate: float, chunk: int = 1 << 18) -> np.ndarray:
    """The layer's global rows in reading order (token by token, heads order-major), sampled."""
    spec, parts = layout.spec, []
    for a in range(0, len(cids), chunk):
        b = min(a + chunk, len(cids))
        lead = max(0, a - spec.max_ngram)  # the tokens a chunk's first N-grams reach back to
        rows = np.empty((b - lead, spec.heads_per_layer), dtype=np.int64)  # (T, H)
        slots = slot_values(cids[lead:b], run[lead:b], spec.pad_id, spec.max_ngram)
        for j, mix in spec.head_mixes(slots, layer):
            rows[:, j] = mix_rows(mix, spec.primes[layer][j]) + layout.offsets[layer][j]
        flat = rows[a - lead :].reshape(-1)
        parts.append(flat if rate >= 1.0 else flat[sample_mask(flat, rate)])
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)


# -- map and reduce ------------------------------------------------------------------------------


def map_shard(layout: MemoryLayout, docs: list[np.ndarray], sample_rate: float = 1.0, keep_stream=False) -> ShardCounts:
    """Counts of one shard: `docs` are raw-id arrays, one per document."""
    lens = np.array([len(d) for d in docs], dtype=np.int64)
    raw = np.concatenate(docs) if docs else np.zeros(0, np.int64)
    cids = layout.compress(raw)
    starts = np.concatenate([[0], np.cumsum(lens)[:-1]]) if len(docs) else np.zeros(0, np.int64)
    run = layout.look_back(raw, starts)
    bits, spec = _bits(layout), layout.spec
    ngrams = {n: count_keys(*pack(ngram_matrix(cids, run, n, spec.pad_id), bits)) for n in spec.orders}
    lru, sampled, streams = {}, {}, {}
    for layer in layout.layers:
        stream = sampled_stream(layout, cids, run, layer, sample_rate)
        if keep_stream:
            streams[layer] = stream  # replayed once with the other shards' (`replay`)
        else:
            lru[layer] = lru_hits(stream, CACHE_SIZES, sample_rate)  # this shard from a cold cache
        sampled[layer] = len(stream)
    return ShardCounts(ngrams, lru, sampled, int(len(cids)), len(docs), streams if keep_stream else None)


def merge(parts: list[ShardCounts]) -> ShardCounts:
    """The sum of shard counts (N-gram counts re-keyed, cache hits added)."""
    orders = sorted({n for p in parts for n in p.ngrams})
    ngrams = {}
    for n in orders:
        cols = [p.ngrams[n] for p in parts if n in p.ngrams]
        ngrams[n] = count_keys(
            *(np.concatenate([c[i] for c in cols]) for i in range(2)), np.concatenate([c[2] for c in cols])
        )
    layers = sorted({layer for p in parts for layer in p.sampled})
    lru = {
        layer: sum((p.lru_hits[layer] for p in parts if layer in p.lru_hits), np.zeros(len(CACHE_SIZES), np.int64))
        for layer in layers
    }
    sampled = {layer: sum(p.sampled.get(layer, 0) for p in parts) for layer in layers}
    streams = None
    if all(p.streams is not None for p in parts) and parts:
        streams = {layer: np.concatenate([p.streams[layer] for p in parts]) for layer in parts[0].streams}
    return ShardCounts(ngrams, lru, sampled, sum(p.tokens for p in parts), sum(p.documents for p in parts), streams)


def _head_rows(local: np.ndarray, count: np.ndarray):
    """Distinct rows of one head with their distinct N-grams and reads, and the N-gram order."""
    order = np.argsort(local, kind="stable")
    r = local[order]
    starts = np.flatnonzero(np.concatenate([[True], r[1:] != r[:-1]])) if len(r) else np.zeros(0, np.int64)
    ngrams = np.diff(np.concatenate([starts, [len(r)]]))
    hits = np.add.reduceat(count[order], starts) if len(r) else np.zeros(0, np.int64)
    return r[starts], ngrams, hits, order


def ngram_head_mixes(grams: np.ndarray, layout: MemoryLayout, layer: int):
    """(head index, mix) of every head of one order on explicit (K, n) N-grams, newest slot first."""
    n = grams.shape[1]
    return layout.spec.head_mixes([grams[:, k] for k in range(n)], layer, orders=(n,))


@dataclass
class HeadRows:
    """The rows one head reads over the corpus, sorted by row, with their N-grams."""

    layer: int
    order: int
    head: int
    rows: np.ndarray  # (R,) global rows hit
    ngrams: np.ndarray  # (R,) distinct N-grams per row
    hits: np.ndarray  # (R,) reads per row
    grams: np.ndarray  # (K, order) N-grams grouped by row, newest slot first
    counts: np.ndarray  # (K,) occurrences of each N-gram

    def collided(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(rows, N-grams oldest token first, counts) of the N-grams that share a row with another."""
        keep = np.repeat(self.ngrams >= 2, self.ngrams)
        return np.repeat(self.rows, self.ngrams)[keep], self.grams[keep][:, ::-1], self.counts[keep]


def head_rows(layout: MemoryLayout, counts: ShardCounts):
    """Yield `HeadRows` for every (layer, order, head): one head's arrays in memory at a time."""
    spec, bits = layout.spec, _bits(layout)
    for n, (hi, lo, cnt) in sorted(counts.ngrams.items()):
        grams = unpack(hi, lo, n, bits)
        for layer in layout.layers:
            for j, mix in ngram_head_mixes(grams, layout, layer):
                h = spec.head_address(j)[1]
                rows, ngrams, hits, order = _head_rows(mix_rows(mix, spec.primes[layer][j]), cnt)
                yield HeadRows(layer, n, h, rows + layout.offsets[layer][j], ngrams, hits, grams[order], cnt[order])


@dataclass
class Summary:
    """Per-head and per-layer statistics accumulated head by head (histograms, never per-row arrays)."""

    heads: list[dict] = field(default_factory=list)
    hit_hist: dict[int, np.ndarray] = field(default_factory=dict)  # layer -> rows with exactly v reads

    def add(self, hr: HeadRows) -> None:
        total = int(hr.hits.sum())
        shared = hr.ngrams >= 2
        self.heads.append(
            {
                "layer": hr.layer,
                "order": hr.order,
                "head": hr.head,
                "rows_hit": int(len(hr.rows)),
                "ngrams": int(hr.ngrams.sum()),
                "reads": total,
                "rows_shared": int(shared.sum()),
                # share of N-gram occurrences whose row also holds another N-gram (as collisions.py)
                "collision_rate": float(hr.hits[shared].sum()) / total if total else 0.0,
                "max_ngrams_per_row": int(hr.ngrams.max()) if len(hr.ngrams) else 0,
            }
        )
        hist = np.bincount(hr.hits) if len(hr.hits) else np.zeros(1, np.int64)
        prev = self.hit_hist.get(hr.layer, np.zeros(0, np.int64))
        size = max(len(prev), len(hist))
        self.hit_hist[hr.layer] = np.pad(prev, (0, size - len(prev))) + np.pad(hist, (0, size - len(hist)))


def cache_curves(layout: MemoryLayout, summary: Summary, counts: ShardCounts) -> list[dict]:
    """Hit rate against cache size (rows, MiB) per layer, for LRU and the best static cache."""
    out = []
    for layer in layout.layers:
        hist = summary.hit_hist.get(layer, np.zeros(1, np.int64))
        reads = int((hist * np.arange(len(hist))).sum())
        static = static_from_hist(hist)
        lru = counts.lru_hits.get(layer, np.zeros(len(CACHE_SIZES), np.int64))
        sampled = max(counts.sampled.get(layer, 0), 1)
        for i, size in enumerate(CACHE_SIZES.tolist()):
            if size > layout.num_embeddings(layer):
                break
            mib = size * layout.row_bytes / 2**20
            lru_rate, static_rate = float(lru[i]) / sampled, float(static[i]) / max(reads, 1)
            out.append({"layer": layer, "rows": size, "mib": mib, "lru": lru_rate, "static": static_rate})
    return out


LRU_SAMPLE_READS = 4_000_000  # sampled reads per layer for the LRU replay (SHARDS); the error is ~1 % at this size


def default_rate(layout: MemoryLayout, tokens: int) -> float:
    reads = max(tokens * layout.spec.heads_per_layer, 1)
    return min(1.0, LRU_SAMPLE_READS / reads)


def corpus_traffic(
    layout: MemoryLayout, docs: list[np.ndarray], sample_rate: float | None = None, shard_tokens: int = 1 << 21
) -> Traffic:
    """Statistics of one corpus (raw-id documents), its read stream replayed once through the caches."""
    tokens = sum(len(d) for d in docs)
    rate = default_rate(layout, tokens) if sample_rate is None else sample_rate
    parts, shard, size = [], [], 0
    for d in docs:
        shard.append(d)
        size += len(d)
        if size >= shard_tokens:
            parts.append(map_shard(layout, shard, rate, keep_stream=True))
            shard, size = [], 0
    if shard or not parts:
        parts.append(map_shard(layout, shard, rate, keep_stream=True))
    counts = merge(parts)
    del parts
    counts.lru_hits = {layer: lru_hits(s, CACHE_SIZES, rate) for layer, s in counts.streams.items()}
    counts.streams = None
    summary = Summary()
    for hr in head_rows(layout, counts):
        summary.add(hr)
    zipf = {layer: zipf_curve(h) for layer, h in summary.hit_hist.items()}
    cache = cache_curves(layout, summary, counts)
    return Traffic(summary.heads, cache, zipf, counts.tokens, counts.documents, rate)
