"""The read stream a cache sees: documents addressed under a layout, interleaved over
concurrent requests, cut into chunks, in whole rows or in pages.

- A document is a request. With S streams, S requests decode at once and the stream
  takes one token from each in turn (round robin); when a request ends the next document
  takes its place, as under continuous batching. S = 1 is the documents in order.
- A token reads H rows of every Engram layer (`engram_core.addressing.local_rows`), in
  head order. Nothing but the current documents and one chunk is held in memory.
- Granularity "row": a read is a row. "page": a row of `row_bytes` at row r occupies bytes
  [r * row_bytes, (r + 1) * row_bytes) of its layer's table, and a read is every 4 KiB
  page those bytes touch (one or two for rows under a page).

Dimensions: L Engram layers, n tokens of a chunk, H heads per layer.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from engram_core.addressing import local_rows
from engram_core.layout import MemoryLayout

PAGE_BYTES = 4096
CHUNK_TOKENS = 1 << 16  # tokens per chunk handed to the kernels


def document_rows(layout: MemoryLayout, docs: list[np.ndarray]) -> list[np.ndarray]:
    """Global rows of each document, (L, T, H) each: one addressing call for the batch."""
    if not docs:
        return []
    lens = np.array([len(d) for d in docs], np.int64)
    raw = np.concatenate(docs)
    cids = layout.compress(raw)
    rows = local_rows(cids, layout.look_back(raw, np.concatenate([[0], np.cumsum(lens)[:-1]])), layout)  # (L, T, H)
    rows = rows + np.stack([layout.offsets[layer] for layer in layout.layers])[:, None, :]
    return np.split(rows, np.cumsum(lens)[:-1], axis=1)


def interleave(
    layout: MemoryLayout, docs: Iterable[np.ndarray], streams: int, batch: int = 256
) -> Iterator[np.ndarray]:
    """(L, n, H) blocks of the round-robin stream of `streams` concurrent requests."""
    if streams < 1:
        raise ValueError(f"streams must be at least 1, got {streams}")
    it = iter(docs)
    pending: list[np.ndarray] = []

    def next_doc() -> np.ndarray | None:
        while not pending:
            got = [d for d in (next(it, None) for _ in range(batch)) if d is not None]
            if not got:
                return None
            pending.extend(r for r in document_rows(layout, [d for d in got if len(d)]) if r.shape[1])
            if len(got) < batch and not pending:
                return None
        return pending.pop(0)

    slots = [r for r in (next_doc() for _ in range(streams)) if r is not None]
    while slots:
        n = min(s.shape[1] for s in slots)
        yield np.stack([s[:, :n] for s in slots], axis=2).reshape(len(layout.layers), n * len(slots), -1)
        keep = []
        for s in slots:
            if s.shape[1] > n:
                keep.append(s[:, n:])
            else:
                nxt = next_doc()
                if nxt is not None:
                    keep.append(nxt)
        slots = keep


def rechunk(blocks: Iterable[np.ndarray], size: int, look: int) -> Iterator[tuple[np.ndarray, int]]:
    """(rows (L, n + peek, H), n): chunks of `size` served tokens followed by up to `look`
    tokens of what comes next (fewer at the end of the stream)."""
    buf: list[np.ndarray] = []
    held = 0
    for b in blocks:
        buf.append(b)
        held += b.shape[1]
        while held >= size + look:
            cat = np.concatenate(buf, axis=1)
            yield cat[:, : size + look], size
            buf, held = [cat[:, size:]], cat.shape[1] - size
    if held:
        cat = np.concatenate(buf, axis=1)
        while cat.shape[1]:
            n = min(size, cat.shape[1])
            yield cat[:, : n + look], n
            cat = cat[:, n:]


@dataclass(frozen=True)
class Units:
    """One layer's reads of a chunk as cache units."""

    units: np.ndarray  # (U,) row or page ids, in reading order
    tok_ptr: np.ndarray  # (n + peek + 1,) offsets of each token's units; peek tokens padded with none
    read_ptr: np.ndarray  # (reads + 1,) offsets of each read's units (served tokens only)
    n_tok: int  # served tokens
    reads: int  # row reads of the served tokens


def to_units(rows: np.ndarray, n_tok: int, look: int, granularity: str, row_bytes: int) -> Units:
    """rows (T, H) of one layer (served then peeked tokens) -> units; the peek is padded to `look`."""
    T, H = rows.shape
    flat = rows.reshape(-1)
    if granularity == "row":
        per_read = np.ones(len(flat), np.int64)
        units = flat
    else:
        first = flat * row_bytes // PAGE_BYTES
        last = (flat * row_bytes + row_bytes - 1) // PAGE_BYTES
        per_read = last - first + 1
        starts = np.repeat(first - np.cumsum(np.concatenate([[0], per_read[:-1]])), per_read)
        units = starts + np.arange(int(per_read.sum()))
    read_ptr = np.concatenate([[0], np.cumsum(per_read)])
    tok_ptr = read_ptr[::H]  # (T + 1,)
    pad = n_tok + look + 1 - len(tok_ptr)
    if pad > 0:  # the stream ended inside the peek: the missing tokens read nothing
        tok_ptr = np.concatenate([tok_ptr, np.full(pad, tok_ptr[-1])])
    served = n_tok * H
    return Units(units.astype(np.int64), tok_ptr.astype(np.int64), read_ptr[: served + 1], n_tok, served)


def row_hits(unit_hit: np.ndarray, read_ptr: np.ndarray) -> np.ndarray:
    """A read hits when every unit it touches hits."""
    if len(read_ptr) <= 1:
        return np.zeros(0, np.bool_)
    return np.minimum.reduceat(unit_hit, read_ptr[:-1]).astype(np.bool_)


def units_of_rows(rows: np.ndarray, counts: np.ndarray, granularity: str, row_bytes: int):
    """(units, counts) of rows read `counts` times each: pages collect the reads of their rows."""
    if granularity == "row":
        return rows, counts
    u = to_units(rows.reshape(-1, 1), len(rows), 0, "page", row_bytes)
    per_read = np.diff(u.read_ptr)
    pages, inv = np.unique(u.units, return_inverse=True)
    return pages, np.bincount(inv, weights=np.repeat(counts, per_read)).astype(np.int64)
