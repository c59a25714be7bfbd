"""Nearest neighbours of Engram memory rows by cosine similarity (exact, faiss).

Rows are L2-normalised once and held in a `faiss.IndexFlatIP`, so inner product is
cosine and every answer is exact (no approximate index: ~0.4M rows x 32 dims is
~55 MB and a brute-force query takes a few ms). An N-gram typed by the user is
hashed exactly as the model hashes it (`EngramLM.hash_rows`), so the row looked up
is the row the model reads at the last position.

`NeighbourIndex` compares raw rows of any heads (the old map's space); `row_neighbours`
and `ngram_neighbours` answer where a neighbour means something: value space (every
head and layer) or raw rows of the query's own head only (valuespace.py says why).

This module does not know which N-grams hash to a row; pass any object with
`ngrams_at` (e.g. the collision index) to label neighbours.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Protocol

import faiss
import numpy as np
import torch

from engram_core import Checkpoint
from engram_core.hashing import suffix_ngrams
from engram_core.tokenizer import encode

from .rows import RowAddress, RowLayout, layer_table
from .valuespace import ValueIndex, raw_nearest_in_head

# faiss answers a handful of queries with one scan per query; with threads, the
# OpenMP barriers cost more than the scan on a busy 2-core machine (2 ms with 1
# thread vs 16 ms with 2, bench/bench_neighbours.py). Batches of at least this
# many queries go through BLAS, where threads do pay.
BATCH_QUERIES = 20


class NgramSource(Protocol):
    """Anything that can say which N-grams land on a row, with their counts."""

    def ngrams_at(self, layer: int, order: int, head: int, row: int) -> list[tuple[tuple[int, ...], int]]: ...


@dataclass(frozen=True)
class Neighbour:
    address: RowAddress
    similarity: float  # cosine similarity to the query, in [-1, 1]
    ngrams: list[tuple[tuple[int, ...], int]] = field(default_factory=list)  # (N-gram, count), when labelled


@dataclass(frozen=True)
class NgramNeighbours:
    """One head's row for a typed N-gram, and that row's neighbours."""

    address: RowAddress
    ngram: tuple[int, ...]  # compressed ids, oldest first; pad where the text is shorter than the order
    neighbours: list[Neighbour]


def _normalised(x: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    # subtle: a zero row (never trained, or knocked out) stays zero and so has cosine 0 with everything
    return x / np.maximum(norms, np.finfo(np.float32).tiny)


def _check_k(k: int) -> None:
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")


class NeighbourIndex:
    """Exact cosine kNN over the rows of some Engram layers; positions are flat row ids minus a per-layer shift."""

    def __init__(self, layout: RowLayout, tables: dict[int, np.ndarray], threads: int | None = None) -> None:
        for layer, t in tables.items():
            layout.check_layer(layer)
            if t.ndim != 2 or t.shape[0] != layout.layer_size(layer):
                raise ValueError(
                    f"layer {layer}'s table has shape {t.shape}, the layout needs {layout.layer_size(layer)} rows"
                )
        if not tables:
            raise ValueError("no layers to index")
        self.layout = layout
        self.layers = tuple(layer for layer in layout.layers if layer in tables)
        self.threads = threads or max(1, min(2, os.cpu_count() or 1))
        self._start: dict[int, int] = {}  # layer -> its first position in the index
        pos = 0
        for layer in self.layers:
            self._start[layer] = pos
            pos += tables[layer].shape[0]
        vectors = _normalised(np.concatenate([tables[layer] for layer in self.layers]))
        self.index = faiss.IndexFlatIP(vectors.shape[1])
        self.index.add(vectors)
        # index position -> flat id: layers are contiguous in both, so one shift per layer
        self._flat = np.concatenate(
            [np.arange(layout.flat_range(layer).start, layout.flat_range(layer).stop) for layer in self.layers]
        )

    @classmethod
    def build(cls, ck: Checkpoint, layers: tuple[int, ...] | list[int] | None = None) -> NeighbourIndex:
        """Index every row of the given Engram layers (all of them by default)."""
        layout = RowLayout.of(ck)
        layers = layout.layers if layers is None else tuple(layers)
        return cls(layout, {layer: layer_table(ck, layer) for layer in layers})

    def __len__(self) -> int:
        return self.index.ntotal

    def _position(self, address: RowAddress) -> int:
        self.layout.check(address)
        if address.layer not in self._start:
            raise ValueError(f"layer {address.layer} is not in this index (it covers layers {self.layers})")
        return self._start[address.layer] + self.layout.global_row(address)

    def vector(self, address: RowAddress) -> np.ndarray:
        """The row's L2-normalised vector as indexed."""
        return self.index.reconstruct(self._position(address))

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Cosine similarities and flat row ids, (Q, k) each, best first; k is capped at the index size."""
        _check_k(k)
        q = _normalised(np.atleast_2d(queries))
        if q.shape[1] != self.index.d:
            raise ValueError(f"query vectors must have {self.index.d} dims, got {q.shape[1]}")
        faiss.omp_set_num_threads(self.threads if len(q) >= BATCH_QUERIES else 1)
        sims, pos = self.index.search(q, min(k, len(self)))
        return sims, self._flat[pos]

    def _neighbours(
        self, sims: np.ndarray, flat: np.ndarray, k: int, exclude: int | None, labels: NgramSource | None
    ) -> list[Neighbour]:
        out = []
        for s, f in zip(sims, flat, strict=True):
            if f == exclude:
                continue
            a = self.layout.address(int(f))
            ngrams = list(labels.ngrams_at(a.layer, a.order, a.head, a.row)) if labels is not None else []
            out.append(Neighbour(a, float(s), ngrams))
        return out[:k]

    def nearest_vector(self, vec: np.ndarray, k: int = 10, labels: NgramSource | None = None) -> list[Neighbour]:
        """The k rows most cosine-similar to one vector of d_head numbers."""
        vec = np.asarray(vec, dtype=np.float32)
        if vec.ndim != 1:
            raise ValueError(f"expected one vector, got shape {vec.shape}")
        sims, flat = self.search(vec, k)
        return self._neighbours(sims[0], flat[0], k, None, labels)

    def nearest_rows(self, address: RowAddress, k: int = 10, labels: NgramSource | None = None) -> list[Neighbour]:
        """The k rows most cosine-similar to `address`'s row, the row itself left out."""
        _check_k(k)
        me = self.layout.flat(address)
        # ask for one more, then drop the query by id, not by rank: an exact duplicate may outrank it
        sims, flat = self.search(self.vector(address), k + 1)
        return self._neighbours(sims[0], flat[0], k, me, labels)


def ngram_rows(ck: Checkpoint, text: str, layer: int) -> tuple[np.ndarray, list[int]]:
    """Head-local rows (H,) the model reads at the text's last token in `layer`, and the compressed ids used."""
    if not isinstance(text, str) or not text:
        raise ValueError("text is empty: type at least one token to look up its N-gram")
    RowLayout.of(ck).check_layer(layer)
    ids, _ = encode(ck.tokenizer, text)
    if not ids:
        raise ValueError(f"text {text!r} encodes to no tokens")
    # only the last max_ngram tokens reach the last position's hashes (§2); the pad fills in before them
    tail = torch.tensor([ids[-ck.model.cfg.memory.max_ngram :]])
    rows = ck.model.hash_rows(tail)[layer]  # (1, T, H): the model's own path, compression then eq. 1
    return rows[0, -1].cpu().numpy(), ck.model.compression[tail][0].tolist()


def ngram_addresses(
    ck: Checkpoint, text: str, layer: int, order: int, head: int | None = None
) -> tuple[list[RowAddress], tuple[int, ...]]:
    """The rows the suffix N-gram of `text` reads on every head of `order` in `layer` (or just `head`'s),
    and that N-gram (compressed ids, oldest first)."""
    layout = RowLayout.of(ck)
    spec = layout.spec
    layout.check(RowAddress(layer, order, 0 if head is None else head, 0))
    rows, cids = ngram_rows(ck, text, layer)
    ngram = tuple(int(x) for x in suffix_ngrams([cids], spec, order)[0, -1])
    heads = range(spec.heads_per_ngram) if head is None else [head]
    return [RowAddress(layer, order, h, int(rows[spec.head_index(order, h)])) for h in heads], ngram


def nearest_ngram(
    ck: Checkpoint,
    index: NeighbourIndex,
    text: str,
    layer: int,
    order: int,
    head: int | None = None,
    k: int = 10,
    labels: NgramSource | None = None,
) -> list[NgramNeighbours]:
    """Neighbours (raw cosine over `index`'s rows) of the row(s) the suffix N-gram of `text` reads: one entry
    per head, or just `head`'s."""
    _check_k(k)
    addresses, ngram = ngram_addresses(ck, text, layer, order, head)
    return [NgramNeighbours(a, ngram, index.nearest_rows(a, k, labels)) for a in addresses]


# --- neighbours in a space where they mean something (issue 8 §4) ---------------------------------

SPACES = ("value", "raw")


def row_neighbours(
    ck: Checkpoint,
    address: RowAddress,
    k: int = 10,
    space: str = "value",
    labels: NgramSource | None = None,
    value_index: ValueIndex | None = None,
) -> list[Neighbour]:
    """The k nearest rows of `address`, itself left out, best first.

    `value`: cosine of value-space vectors (each row through its head's W_V slice), over every
    head, order and layer, which all write to the same residual stream. `raw`: cosine of raw rows,
    among the rows of the address's own head only; across heads raw rows share no coordinates.
    Pass `value_index` to reuse one across queries (building it takes about a second).
    """
    _check_k(k)
    if space not in SPACES:
        raise ValueError(f"unknown neighbour space {space!r}: choose value or raw")
    RowLayout.of(ck).check(address)
    if space == "value":
        found = (value_index or ValueIndex(ck)).nearest(ck, address, k)
    else:
        found = [(a, s) for a, s in raw_nearest_in_head(ck, address, k) if a != address]
    return [
        Neighbour(a, s, list(labels.ngrams_at(a.layer, a.order, a.head, a.row)) if labels is not None else [])
        for a, s in found
    ]


def ngram_neighbours(
    ck: Checkpoint,
    text: str,
    layer: int,
    order: int,
    head: int | None = None,
    k: int = 10,
    space: str = "value",
    labels: NgramSource | None = None,
    value_index: ValueIndex | None = None,
) -> list[NgramNeighbours]:
    """`row_neighbours` of the row(s) the suffix N-gram of `text` reads: one entry per head, or just `head`'s."""
    _check_k(k)
    if space not in SPACES:
        raise ValueError(f"unknown neighbour space {space!r}: choose value or raw")
    addresses, ngram = ngram_addresses(ck, text, layer, order, head)
    if space == "value" and value_index is None:
        value_index = ValueIndex(ck)
    return [NgramNeighbours(a, ngram, row_neighbours(ck, a, k, space, labels, value_index)) for a in addresses]
