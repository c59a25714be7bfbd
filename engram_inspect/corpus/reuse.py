"""Hot-row cache arithmetic on a stream of row ids: reuse distances, LRU and best-static hits,
the rank-frequency (Zipf) curve.

- The best static cache holds the most-read rows, so its hit rate at size C is the share of
  reads that go to the top C rows (`static_hits`, or exactly from the histogram of reads per
  row, `static_from_hist`).
- LRU hits where the reuse distance (distinct rows read since the last read of this row) is
  below C; distances come from a Fenwick tree over a spatially sampled stream (rows kept by a
  hash of their id, at rate R, distances scaled by 1/R: the SHARDS estimator, Waldspurger et
  al., FAST 2015). R = 1 is exact.

Arrays in, arrays out; nothing here knows a memory layout.
"""

from __future__ import annotations

import numba
import numpy as np

# cache sizes in rows: 2^(k/2), 1 .. 2^31 (every V4.1 layer table fits below the top)
CACHE_SIZES = np.unique(np.round(2.0 ** (np.arange(63) / 2)).astype(np.int64))
_SAMPLE_MOD = 1 << 24


@numba.njit(cache=False)
def _reuse_distances(prev: np.ndarray) -> np.ndarray:
    """Per access, distinct items since the previous access of the same item (-1: first access)."""
    n = len(prev)
    tree = np.zeros(n + 1, np.int64)  # Fenwick tree: 1 at the latest access of each item
    out = np.empty(n, np.int64)
    for i in range(n):
        p = prev[i]
        if p < 0:
            out[i] = -1
        else:
            s = 0  # sum over (p, i): prefix(i) - prefix(p + 1)
            j = i
            while j > 0:
                s += tree[j]
                j -= j & -j
            j = p + 1
            while j > 0:
                s -= tree[j]
                j -= j & -j
            out[i] = s
            j = p + 1
            while j <= n:
                tree[j] -= 1
                j += j & -j
        j = i + 1
        while j <= n:
            tree[j] += 1
            j += j & -j
    return out


@numba.njit(cache=False)
def previous_access(stream: np.ndarray) -> np.ndarray:
    """Index of the previous access of the same item, -1 for a first access.

    An open-addressing hash table sized by the stream (never by the table), one pass.
    """
    n = len(stream)
    cap = 1
    while cap < 2 * n + 2:
        cap *= 2
    keys = np.full(cap, -1, np.int64)
    last = np.empty(cap, np.int64)
    out = np.empty(n, np.int64)
    for i in range(n):
        key = stream[i]
        # subtle: a hash unrelated to `sample_mask`'s, whose kept ids would otherwise crowd a few slots
        x = (key ^ (key >> 31)) * 0x7FB5D329728EA185
        slot = (x ^ (x >> 27)) & (cap - 1)
        while keys[slot] != -1 and keys[slot] != key:
            slot = (slot + 1) & (cap - 1)
        if keys[slot] == key:
            out[i] = last[slot]
        else:
            keys[slot] = key
            out[i] = -1
        last[slot] = i
    return out


def sample_mask(rows: np.ndarray, rate: float) -> np.ndarray:
    """Rows kept by the spatial sample: a fixed hash of the row id, so a row is always in or out."""
    return ((rows * 0x9E3779B1) % _SAMPLE_MOD) < int(rate * _SAMPLE_MOD)


def lru_hits(stream: np.ndarray, sizes: np.ndarray = CACHE_SIZES, rate: float = 1.0) -> np.ndarray:
    """LRU hits of a (sampled) read stream at each cache size, sizes in rows of the full stream."""
    d = _reuse_distances(previous_access(stream))
    d = np.sort(d[d >= 0])
    # a read hits an LRU cache of C rows when fewer than C other rows came between (scaled by 1/R)
    return np.searchsorted(d, sizes * rate, side="left").astype(np.int64)


def static_hits(hits_per_row: np.ndarray, sizes: np.ndarray = CACHE_SIZES) -> np.ndarray:
    """Hits of the best static cache (the C most-read rows) at each size."""
    top = np.cumsum(np.sort(hits_per_row)[::-1])
    if len(top) == 0:
        return np.zeros(len(sizes), np.int64)
    return top[np.minimum(sizes, len(top)) - 1]


def static_from_hist(hist: np.ndarray, sizes: np.ndarray = CACHE_SIZES) -> np.ndarray:
    """Reads served by the C most-read rows, from the histogram of reads per row (exact)."""
    values = np.arange(len(hist))[::-1]
    rows = hist[::-1]  # most-read first
    cum_rows = np.cumsum(rows)
    cum_reads = np.cumsum(rows * values)
    i = np.searchsorted(cum_rows, sizes, side="left")  # the value group where the C-th row falls
    i = np.minimum(i, len(rows) - 1)
    before_rows = cum_rows[i] - rows[i]
    before_reads = cum_reads[i] - rows[i] * values[i]
    take = np.minimum(sizes, cum_rows[-1]) - before_rows
    return before_reads + np.maximum(take, 0) * values[i]


def zipf_curve(hist: np.ndarray, points: int = 64) -> list[tuple[int, int]]:
    """(rank, reads) of the rank-frequency curve at log-spaced ranks."""
    values = np.arange(len(hist))[::-1]
    cum_rows = np.cumsum(hist[::-1])
    n = int(cum_rows[-1]) if len(cum_rows) else 0
    if n == 0:
        return []
    ranks = np.unique(np.round(np.logspace(0, np.log10(n), points)).astype(np.int64))
    return [(int(r), int(values[np.searchsorted(cum_rows, r)])) for r in ranks]
