"""The memory map in the model's own space: PCA and UMAP of value-space vectors, and what to colour them by.

All heads, orders and both Engram layers share one map, because every row is first
carried into the residual stream by its head's W_V slice (see valuespace.py). Maps
are cached like the raw-row maps of projection.py (same file layout, scope
"value-pooled"), so the shipped model's are precomputed beside its weights.

Colours, one value per row (flat order, see rows.py):
- kind of the top promoted token: punctuation, name (a capitalised word), keyword (Python's), other;
- domain of the row's most frequent corpus N-gram: plays or code (where most of its occurrences are);
- crowding: the share of the row's corpus hits held by its top N-gram (crowded below one half);
- mean alpha over the corpus-sample positions that read the row (rowstats.py).
"""

from __future__ import annotations

import keyword
import unicodedata
from pathlib import Path

import numpy as np

from engram_core import Checkpoint

from .collisions import CollisionIndex
from .ngram_keys import position_keys
from .projection import MAX_POINTS, Progress, Projection, _meta, cached_projection, check_request, sample_rows, umap_fit
from .rows import RowAddress, RowLayout, layer_table
from .valuespace import head_slice, value_vectors

SCOPE = "value-pooled"
KINDS = ("punctuation", "name", "keyword", "other")
DOMAINS = ("plays", "code")


def token_kind(text: str) -> str:
    """Kind of a decoded token: punctuation (no letter or digit, whitespace included), keyword, name, other."""
    word = text.strip()
    if not any(ch.isalnum() for ch in word):
        return "punctuation"
    if keyword.iskeyword(word) or keyword.issoftkeyword(word):
        return "keyword"  # before names: True, False and None are capitalised keywords
    if word.isidentifier() and unicodedata.category(word[0]) == "Lu":
        return "name"
    return "other"


def token_kinds(ck: Checkpoint) -> np.ndarray:
    """Index into KINDS of every raw token id: (V,) int8."""
    V = ck.model.cfg.backbone.vocab_size
    return np.asarray([KINDS.index(token_kind(ck.tokenizer.decode([i]))) for i in range(V)], dtype=np.int8)


# --- value-space PCA and UMAP -------------------------------------------------------------------


def value_pca_axes(ck: Checkpoint) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean (D,), two principal axes (2, D) and their variance ratios over the value vectors of every row.

    The D x D scatter is summed head by head from each table's Dh x Dh scatter
    (sum_h W_h R_h^T R_h W_h^T), so the 0.4M x D vectors are never built.
    """
    layout = RowLayout.of(ck)
    D = ck.model.cfg.backbone.d_model
    total, scatter = np.zeros(D), np.zeros((D, D))
    for layer in layout.layers:
        table = layer_table(ck, layer).astype(np.float64)
        start = layout.flat_range(layer).start
        for order in layout.spec.orders:
            for head in range(layout.spec.heads_per_ngram):
                r = layout.flat_range(layer, order, head)
                rows = table[r.start - start : r.stop - start]
                w = head_slice(ck, layer, order, head).astype(np.float64)  # (D, Dh)
                total += w @ rows.sum(0)
                scatter += w @ (rows.T @ rows) @ w.T
    n = layout.total
    mean = total / n
    _, var, vt = np.linalg.svd(scatter - n * np.outer(mean, mean))
    ratio = var / var.sum() if var.sum() > 0 else np.zeros_like(var)
    axes = vt[:2]
    signs = np.sign(axes[np.arange(2), np.abs(axes).argmax(axis=1)])  # same rows, same picture
    return mean, axes * np.where(signs == 0, 1.0, signs)[:, None], ratio[:2]


def value_projection(
    ck: Checkpoint,
    method: str,
    progress: Progress | None = None,
    recompute: bool = False,
    seed: int = 0,
    max_points: int = MAX_POINTS,
    cache_path: str | Path | None = None,
) -> Projection:
    """PCA or UMAP of a seeded sample of every row's value vector, one map for all layers; cached on disk."""
    check_request(method, max_points)
    layout = RowLayout.of(ck)
    meta = {**_meta(method, SCOPE, seed, max_points), "rows": "", "space": "value"}

    def compute(report: Progress) -> Projection:
        picked = sample_rows(np.arange(layout.total, dtype=np.int64), max_points, seed)
        report(1, 4, f"value vectors of {len(picked):,} rows")
        explained = None
        if method == "pca":
            mean, axes, ratio = value_pca_axes(ck)
            coords = ((value_vectors(ck, picked) - mean) @ axes.T).astype(np.float32)
            explained = (float(ratio[0]), float(ratio[1]))
        else:
            report(2, 4, f"fitting UMAP on {len(picked):,} value vectors (a minute or more)")
            coords = umap_fit(value_vectors(ck, picked), seed=seed)
        layer, order, head, _ = layout.decode(picked)
        return Projection(method, SCOPE, picked, coords, layer, order, head, explained)

    return cached_projection(ck, layout, f"projection-{method}-{SCOPE}", meta, compute, progress, recompute, cache_path)


# --- per-row colours ------------------------------------------------------------------------------


def top_ngram_per_row(index: CollisionIndex, layer: int, order: int, head: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row of one head: index (into keys[order]) of its most frequent N-gram (-1: none), and its hits."""
    ptr = index.indptr[(layer, order, head)]
    members = index.perm[(layer, order)][head].astype(np.int64)  # N-gram indices in row order
    counts = index.counts[order][members]
    row_of = np.repeat(np.arange(len(ptr) - 1), np.diff(ptr))
    hits = np.bincount(row_of, weights=counts, minlength=len(ptr) - 1)
    best = np.full(len(ptr) - 1, -1, dtype=np.int64)
    if len(members):
        by = np.lexsort((-counts, row_of))  # within a row, most frequent first (ties: key order, stable)
        first = np.ones(len(by), dtype=bool)
        first[1:] = row_of[by][1:] != row_of[by][:-1]
        best[row_of[by][first]] = members[by][first]
    return best, hits


def plays_counts(ck: Checkpoint, streams: dict[str, np.ndarray], order: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted packed N-grams of one order in the plays streams, and their counts.

    The code's count of an N-gram is then the index's count minus this one (the index
    counts exactly these streams), so the 9M code tokens are never counted twice.
    """
    spec = ck.model.cfg.memory.hash_spec
    comp = ck.model.compression.cpu().numpy()
    keys = [
        position_keys(comp[np.asarray(s, np.int64)], order, spec.vocab_size, spec.pad_id)
        for name, s in streams.items()
        if name.endswith("/plays")
    ]
    uniq, counts = np.unique(np.concatenate(keys) if keys else np.zeros(0, np.int64), return_counts=True)
    return uniq, counts


def lookup_counts(table: tuple[np.ndarray, np.ndarray], keys: np.ndarray) -> np.ndarray:
    """Counts of packed N-grams `keys` in one domain's (sorted keys, counts); 0 where absent."""
    uniq, counts = table
    i = np.clip(np.searchsorted(uniq, keys), 0, max(len(uniq) - 1, 0))
    found = (uniq[i] == keys) if len(uniq) else np.zeros(len(keys), bool)
    return np.where(found, counts[i] if len(uniq) else 0, 0)


def row_colours(
    ck: Checkpoint, index: CollisionIndex, streams: dict[str, np.ndarray], mean_alpha: np.ndarray, tops: np.ndarray
) -> dict[str, np.ndarray]:
    """Per flat row: kind of top token (index into KINDS), domain of top N-gram (index into DOMAINS, -1 none),
    top N-gram share (NaN: no hits), crowded (bool), mean alpha (NaN: not read in the sample)."""
    layout = RowLayout.of(ck)
    spec = layout.spec
    share = np.full(layout.total, np.nan, dtype=np.float32)
    domain = np.full(layout.total, -1, dtype=np.int8)
    for order in spec.orders:
        plays = lookup_counts(plays_counts(ck, streams, order), index.keys[order])
        code = index.counts[order] - plays
        for layer in spec.layer_ids:
            for head in range(spec.heads_per_ngram):
                best, hits = top_ngram_per_row(index, layer, order, head)
                start = layout.flat(RowAddress(layer, order, head, 0))
                seen = best >= 0
                s = np.full(len(best), np.nan, dtype=np.float32)
                s[seen] = index.counts[order][best[seen]] / hits[seen]
                share[start : start + len(best)] = s
                d = np.full(len(best), -1, dtype=np.int8)
                d[seen] = np.where(plays[best[seen]] >= code[best[seen]], 0, 1)
                domain[start : start + len(best)] = d
    return {
        "kind": token_kinds(ck)[tops],
        "domain": domain,
        "top_share": share,
        "crowded": share < 0.5,
        "mean_alpha": mean_alpha.astype(np.float32),
    }
