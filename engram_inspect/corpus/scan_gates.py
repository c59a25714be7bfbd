"""The gate side of `engram scan` for a checkpoint with a backbone: gate-weighted row usage and top contexts.

Map (per shard): the model reads each document in windows of `block_size` tokens (a
fresh context per window, as in training; the read path is `activations`, the one
capture path), and every position's alpha (mean over branches) is filed under the
rows its N-grams read in the document (N-grams never cross documents, and reach back
across window edges, as the collision index files them). Per (layer, row): the summed
alpha and the number of reads, and the K reads with the highest alpha (document,
token offset, alpha).

Alphas are summed as integers of 2^-24 (`GATE_SCALE`): integer sums do not depend on
the order the executors add partial sums in, so the local and Ray files are equal.

T tokens of a shard, H heads per layer, W windows.
"""

from __future__ import annotations

import numpy as np

from engram_core.layout import MemoryLayout

from .traffic import sampled_stream

GATE_SCALE = 1 << 24
TOP_K = 8  # top contexts kept per row (a row page lists a handful)
WINDOW_BATCH = 8  # windows per forward (rowstats.BATCH: measured fastest on 2 cores)

_MODELS: dict = {}


def backbone(name: str):
    """The checkpoint's model, loaded once per process (each Ray worker loads its own)."""
    if name not in _MODELS:
        from engram_core import load_checkpoint

        _MODELS[name] = load_checkpoint(name).model.eval()
    return _MODELS[name]


def window_alpha(model, docs: list[np.ndarray]) -> dict[int, np.ndarray]:
    """Per Engram layer, alpha (mean over branches) at every position of the concatenated docs, (T,)."""
    import torch

    from ..base.activations import GATE, activations, memory_names

    T = model.cfg.backbone.block_size
    lens = [len(d) for d in docs]
    starts = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
    wins = [(d, s) for d, n in enumerate(lens) for s in range(0, n, T)]
    layers = list(model.engram_layers)
    out = {ly: np.zeros(int(starts[-1]), np.float32) for ly in layers}
    if not wins:
        return out
    ids = np.zeros((len(wins), T), np.int64)  # the tail of a short window is filler: the model is causal
    for w, (d, s) in enumerate(wins):
        piece = docs[d][s : s + T]
        ids[w, : len(piece)] = piece
    names = memory_names(layers, (GATE,))
    _, cache = activations(model, torch.from_numpy(ids), names, logits=False, batch=WINDOW_BATCH)
    for ly, name in zip(layers, names, strict=True):
        alpha = cache[name].float().mean(-1).numpy()  # (W, T)
        for w, (d, s) in enumerate(wins):
            n = min(T, lens[d] - s)
            out[ly][starts[d] + s : starts[d] + s + n] = alpha[w, :n]
    return out


def top_k(key: np.ndarray, q: np.ndarray, doc: np.ndarray, off: np.ndarray, k: int = TOP_K) -> np.ndarray:
    """Indices of the k entries per key with the highest q, ties by (doc, offset): a total order."""
    order = np.lexsort((off, doc, -q, key))
    ks = key[order]
    first = np.flatnonzero(np.concatenate([[True], ks[1:] != ks[:-1]])) if len(ks) else np.zeros(0, np.int64)
    rank = np.arange(len(ks)) - np.repeat(first, np.diff(np.concatenate([first, [len(ks)]])))
    return order[rank < k]


def sum_by_key(key: np.ndarray, *vals: np.ndarray) -> tuple[np.ndarray, ...]:
    """Distinct keys, sorted, and each value column summed per key (integers: exact)."""
    if len(key) == 0:
        return (key, *vals)
    order = np.argsort(key, kind="stable")
    ks = key[order]
    first = np.flatnonzero(np.concatenate([[True], ks[1:] != ks[:-1]]))
    return (ks[first], *(np.add.reduceat(v[order], first) for v in vals))


def map_gates(layout: MemoryLayout, docs: list[np.ndarray], cids, run) -> tuple[dict, dict]:
    """({layer: (3, R) row, alpha sum, reads}, {layer: (4, C) row, alpha, document index, offset}) of a shard."""
    alpha = window_alpha(backbone(layout.name), docs)
    lens = np.array([len(d) for d in docs], np.int64)
    doc = np.repeat(np.arange(len(docs)), lens)
    off = np.arange(len(doc)) - np.repeat(np.concatenate([[0], np.cumsum(lens)[:-1]]), lens) if len(doc) else doc
    H = layout.spec.heads_per_layer
    gates, ctx = {}, {}
    for layer in layout.layers:
        rows = sampled_stream(layout, cids, run, layer, 1.0)  # (T * H,) token-major: every read, in order
        q = np.repeat(np.round(alpha[layer].astype(np.float64) * GATE_SCALE).astype(np.int64), H)
        gates[layer] = np.stack(sum_by_key(rows, q, np.ones(len(rows), np.int64)))
        d, o = np.repeat(doc, H), np.repeat(off, H)
        keep = top_k(rows, q, d, o)
        ctx[layer] = np.stack([rows[keep], q[keep], d[keep], o[keep]])
    return gates, ctx


def fold_gates(total: dict, gates: dict) -> dict:
    """Running per-row totals plus one part's."""
    out = {}
    for layer in sorted(set(total) | set(gates)):
        cols = [x[layer] for x in (total, gates) if layer in x]
        out[layer] = np.stack(sum_by_key(*(np.concatenate([c[i] for c in cols]) for i in range(3))))
    return out


def fold_contexts(total: dict, ctx: dict, names: list[str]) -> dict:
    """Running top contexts ({layer: (rows, q, doc names, offsets)}) plus one part's."""
    out = {}
    for layer in sorted(set(total) | set(ctx)):
        parts = [total[layer]] if layer in total else []
        if layer in ctx:
            r, q, d, o = ctx[layer]
            parts.append((r, q, np.asarray(names, dtype=object)[d].astype(str) if len(d) else np.zeros(0, str), o))
        r, q, d, o = (np.concatenate([p[i] for p in parts]) for i in range(4))
        keep = top_k(r, q, d, o)
        out[layer] = (r[keep], q[keep], d[keep], o[keep])
    return out


def head_of_rows(layout: MemoryLayout, layer: int, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(order, head) of global rows of a layer."""
    j = np.searchsorted(layout.offsets[layer], rows, side="right") - 1
    n = layout.spec.heads_per_ngram
    return (2 + j // n).astype(np.int8), (j % n).astype(np.int8)


def contexts_table(layout: MemoryLayout, ctx: dict):
    import pyarrow as pa

    cols = {k: [] for k in ("layer", "order", "head", "row", "doc", "offset", "alpha")}
    for layer, (r, q, d, o) in sorted(ctx.items()):
        order, head = head_of_rows(layout, layer, r)
        for k, v in zip(cols, (np.full(len(r), layer, np.int32), order, head, r, d, o, q / GATE_SCALE), strict=True):
            cols[k].append(np.asarray(v))
    types = {"doc": pa.string()}
    return pa.table({k: pa.array(np.concatenate(v) if v else [], type=types.get(k)) for k, v in cols.items()})
