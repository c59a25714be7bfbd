"""Memory rows in the model's own space: each row through its head's slice of W_V (ENGRAM.md §4-5).

A raw row is d_head numbers in its own head's coordinates; it enters the residual
stream only as v = W_V e, and e is the concatenation of the heads' rows, order-major
then head-minor (§4). So row r of head index h (= head_index(order, head)) writes
W_V[:, h*d_head:(h+1)*d_head] @ r: its value-space vector, d_model wide. Rows of
different heads, orders and layers can be compared there (both layers write to the
same residual stream); raw-row cosine only means something within one head.

What a row promotes is read along the direct path only: value vector -> final
RMSNorm -> tied unembedding. The conv, the gate and every later layer are ignored.
Because RMSNorm divides by a positive number, the *ranking* of tokens is that of
(g * v) @ wte.T, which factors through the row: r @ (W_h^T diag(g) wte^T), a
(d_head, V) matrix per head; that makes top tokens of all rows cheap.

N rows, D model width, Dh row width, V vocabulary, H heads of a layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import faiss
import numpy as np
import torch

from engram_core import Checkpoint

from .rows import RowAddress, RowLayout, layer_table

CHUNK = 1 << 14  # rows per matmul in the bulk passes, to bound the (chunk, V) temporaries


def head_slice(ck: Checkpoint, layer: int, order: int, head: int) -> np.ndarray:
    """W_V's columns that head (order, head) of `layer` feeds: (D, Dh) float32."""
    layout = RowLayout.of(ck)
    layout.check(RowAddress(layer, order, head, 0))
    dh = ck.model.cfg.memory.d_head
    h = layout.spec.head_index(order, head)
    w_v = ck.model.blocks[layer].engram.readout.w_v.weight.detach().float().numpy()  # (D, H*Dh)
    return w_v[:, h * dh : (h + 1) * dh]


def _tables(layout: RowLayout):
    """(layer, order, head, flat range) of every table, in flat order."""
    for layer in layout.layers:
        for order in layout.spec.orders:
            for head in range(layout.spec.heads_per_ngram):
                yield layer, order, head, layout.flat_range(layer, order, head)


def value_vectors(ck: Checkpoint, flat: np.ndarray) -> np.ndarray:
    """Value-space vectors of flat row ids: (N, D) float32, in the order given."""
    layout = RowLayout.of(ck)
    flat = np.asarray(flat, dtype=np.int64)
    out = np.empty((flat.size, ck.model.cfg.backbone.d_model), dtype=np.float32)
    if flat.size:
        layout.decode(flat)  # a clear error for ids out of range
    for layer, order, head, r in _tables(layout):
        sel = (flat >= r.start) & (flat < r.stop)
        if sel.any():
            start = layout.flat_range(layer).start
            rows = layer_table(ck, layer)[flat[sel] - start]  # (n, Dh)
            out[sel] = rows @ head_slice(ck, layer, order, head).T  # (n, D)
    return out


def value_vector(ck: Checkpoint, address: RowAddress) -> np.ndarray:
    """One row's value-space vector (D,)."""
    return value_vectors(ck, np.asarray([RowLayout.of(ck).flat(address)]))[0]


def direct_logits(ck: Checkpoint, value: np.ndarray) -> np.ndarray:
    """Logits (..., V) of value vectors along the direct path: final RMSNorm, then the tied unembedding."""
    with torch.no_grad():
        v = torch.as_tensor(np.asarray(value, dtype=np.float32))
        return torch.nn.functional.linear(ck.model.norm(v), ck.model.wte.weight.float()).numpy()


@dataclass(frozen=True)
class Promotes:
    """What a row writes along the direct path: the tokens its logits raise and lower most."""

    top_ids: list[int]  # raw token ids, highest logit first
    top_logits: list[float]
    bottom_ids: list[int]  # lowest logit first
    bottom_logits: list[float]


def promotes(ck: Checkpoint, address: RowAddress, k: int = 10) -> Promotes:
    """Top k promoted and suppressed tokens of one row's value vector (direct path)."""
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    logits = direct_logits(ck, value_vector(ck, address))
    order = np.argsort(-logits, kind="stable")
    top, bottom = order[:k], order[::-1][:k]
    return Promotes(
        [int(i) for i in top],
        [float(logits[i]) for i in top],
        [int(i) for i in bottom],
        [float(logits[i]) for i in bottom],
    )


def _rank_matrix(ck: Checkpoint, layer: int, order: int, head: int) -> torch.Tensor:
    """(Dh, V): a row times this has the ranking of its direct-path logits (see the module docstring)."""
    g = ck.model.norm.weight.detach().float()
    w = torch.as_tensor(head_slice(ck, layer, order, head))  # (D, Dh)
    return (w.T * g) @ ck.model.wte.weight.detach().float().T


def top_tokens(ck: Checkpoint) -> np.ndarray:
    """The top promoted raw token id of every row (flat order): (rows,) int32."""
    layout = RowLayout.of(ck)
    out = np.empty(layout.total, dtype=np.int32)
    with torch.no_grad():
        for layer, order, head, r in _tables(layout):
            m = _rank_matrix(ck, layer, order, head)
            start = layout.flat_range(layer).start
            table = torch.as_tensor(layer_table(ck, layer))
            for lo in range(r.start, r.stop, CHUNK):
                hi = min(lo + CHUNK, r.stop)
                out[lo:hi] = (table[lo - start : hi - start] @ m).argmax(-1).numpy()
    return out


# --- neighbours in value space ------------------------------------------------------------------


class ValueIndex:
    """Exact cosine kNN between value-space vectors, stored as raw rows (faiss, one index per table).

    cos(W_a r, q) = (W_a^T q_hat) . (r / |W_a r|), so each table keeps its rows scaled by
    their value norms (Dh wide, not D) and a query is mapped into each head's
    coordinates; the per-table answers are exact and merged. 16x less memory than
    holding the D-wide vectors, and just as exact.
    """

    def __init__(self, ck: Checkpoint, layers: tuple[int, ...] | None = None) -> None:
        self.layout = RowLayout.of(ck)
        self.layers = self.layout.layers if layers is None else tuple(layers)
        for layer in self.layers:
            self.layout.check_layer(layer)
        self.parts = []  # (flat start, W (D, Dh), faiss index)
        for layer, order, head, r in _tables(self.layout):
            if layer not in self.layers:
                continue
            w = head_slice(ck, layer, order, head)
            start = self.layout.flat_range(layer).start
            rows = layer_table(ck, layer)[r.start - start : r.stop - start]
            norms = np.linalg.norm(rows @ w.T, axis=1, keepdims=True)
            # subtle: a row that writes nothing (zero value vector) has cosine 0 with everything
            scaled = np.ascontiguousarray(rows / np.maximum(norms, np.finfo(np.float32).tiny), dtype=np.float32)
            index = faiss.IndexFlatIP(rows.shape[1])
            index.add(scaled)
            self.parts.append((r.start, np.ascontiguousarray(w, dtype=np.float32), index))

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Cosine similarities and flat ids of the k nearest rows to value-space queries (Q, D), best first."""
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        q = np.atleast_2d(np.asarray(queries, dtype=np.float32))
        q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), np.finfo(np.float32).tiny)
        faiss.omp_set_num_threads(1 if len(q) < 20 else 2)
        sims, ids = [], []
        for start, w, index in self.parts:
            s, i = index.search(np.ascontiguousarray(q @ w), min(k, index.ntotal))
            sims.append(s)
            ids.append(i + start)
        sims, ids = np.concatenate(sims, axis=1), np.concatenate(ids, axis=1)
        best = np.argsort(-sims, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(sims, best, 1), np.take_along_axis(ids, best, 1)

    def nearest(self, ck: Checkpoint, address: RowAddress, k: int = 10) -> list[tuple[RowAddress, float]]:
        """The k rows whose value vectors are most cosine-similar to this row's, itself left out."""
        me = self.layout.flat(address)
        sims, ids = self.search(value_vector(ck, address)[None], k + 1)
        out = [(self.layout.address(int(i)), float(s)) for s, i in zip(sims[0], ids[0], strict=True) if i != me]
        return out[:k]


def raw_nearest_in_head(ck: Checkpoint, address: RowAddress, k: int = 10) -> list[tuple[RowAddress, float]]:
    """Raw-row cosine neighbours, only among the rows of the same head (the one space where it means something)."""
    layout = RowLayout.of(ck)
    r = layout.flat_range(address.layer, address.order, address.head)
    start = layout.flat_range(address.layer).start
    rows = layer_table(ck, address.layer)[r.start - start : r.stop - start]
    unit = rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), np.finfo(np.float32).tiny)
    sims = unit @ unit[layout.flat(address) - r.start]
    sims[address.row] = -np.inf  # leave the row itself out
    best = np.argsort(-sims, kind="stable")[:k]
    return [(RowAddress(address.layer, address.order, address.head, int(i)), float(sims[i])) for i in best]


# --- how alike neighbours are in what they write ----------------------------------------------


def _raw_neighbours(ck: Checkpoint, layout: RowLayout, layer: int, queries: np.ndarray, k: int) -> np.ndarray:
    """Flat ids (Q, k) of raw-row cosine neighbours among all rows of the layer (the old map's space)."""
    start = layout.flat_range(layer).start
    table = layer_table(ck, layer)
    unit = np.ascontiguousarray(table / np.maximum(np.linalg.norm(table, axis=1, keepdims=True), 1e-30), np.float32)
    index = faiss.IndexFlatIP(unit.shape[1])
    index.add(unit)
    _, ids = index.search(unit[queries - start], k + 1)
    return ids + start


def neighbour_agreement(
    ck: Checkpoint, layer: int, tops: np.ndarray, n_queries: int = 2000, k: int = 10, seed: int = 0
) -> dict[str, float]:
    """Share of a row's k nearest neighbours (within its layer) that promote the same top token.

    Raw space (cosine of raw rows, across heads, as a naive map does) against value
    space; random pairs of the layer's rows give the chance level. `tops` is
    `top_tokens(ck)`. Queries are a seeded sample of the layer's rows.
    """
    layout = RowLayout.of(ck)
    r = layout.flat_range(layer)
    rng = np.random.default_rng(seed)
    queries = np.sort(rng.choice(np.arange(r.start, r.stop), size=min(n_queries, len(r)), replace=False))

    def share(neighbours: np.ndarray) -> float:
        keep = neighbours != queries[:, None]  # drop the query itself wherever it appears,
        keep &= np.cumsum(keep, axis=1) <= k  # then keep the first k others
        same = (tops[neighbours] == tops[queries][:, None]) & keep
        return float(same.sum() / keep.sum())

    raw = _raw_neighbours(ck, layout, layer, queries, k)
    _, value = ValueIndex(ck, (layer,)).search(value_vectors(ck, queries), k + 1)
    rand = rng.integers(r.start, r.stop, size=(len(queries), k))
    return {"raw": share(raw), "value": share(value), "random": share(rand), "queries": len(queries), "k": k}
