"""Views of table rows read from disk: norms, cosine among rows, faiss neighbours.

Arrays in, arrays out; the rows come from `engram_core.tables` (memory-mapped,
only the rows asked for are read).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from engram_core.cli import UserError
from engram_core.tables import TableTensor

MAX_COSINE_ROWS = 512  # distinct rows per layer in the cosine matrix; beyond it the JSON grows quadratically


def unit(x: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(n > 0, n, 1.0)


def row_norms(table: TableTensor, rows: np.ndarray) -> np.ndarray:
    """L2 norm of each row, in the order asked (rows may repeat)."""
    uniq, inv = np.unique(np.asarray(rows, dtype=np.int64), return_inverse=True)
    return np.linalg.norm(table.read(uniq), axis=1)[inv]


def cosine_matrix(table: TableTensor, rows: np.ndarray) -> np.ndarray:
    """Cosine similarity among the given rows: (k, k)."""
    x = unit(table.read(np.asarray(rows, dtype=np.int64)))
    return x @ x.T


def neighbours(table: TableTensor, queries: np.ndarray, pool: np.ndarray, k: int) -> list[list[tuple[int, float]]]:
    """For each query row, its k nearest rows by cosine within `pool` (itself excluded)."""
    import faiss

    pool = np.unique(np.asarray(pool, dtype=np.int64))
    if pool.size == 0:
        return [[] for _ in queries]
    index = faiss.IndexFlatIP(table.width)
    index.add(unit(table.read(pool)).astype(np.float32))
    q = unit(table.read(np.asarray(queries, dtype=np.int64))).astype(np.float32)
    sims, idx = index.search(q, min(k + 1, pool.size))
    out = []
    for qi, row in enumerate(np.asarray(queries).tolist()):
        found = [(int(pool[j]), float(s)) for j, s in zip(idx[qi], sims[qi], strict=True) if j >= 0 and pool[j] != row]
        out.append(found[:k])
    return out


def sample_rows(layout, files: list[str], tokens: int) -> dict[int, object]:
    """Global rows read by the first `tokens` tokens of the sample files, per layer."""
    from engram_core.addressing import local_rows

    texts = []
    for f in files:
        try:
            texts.append(Path(f).read_text(encoding="utf-8", errors="replace"))
        except OSError as e:
            raise UserError(f"cannot read {f}: {e.strerror}") from e
    ids = np.concatenate([layout.encode(t) for t in texts]) if texts else np.zeros(0, np.int64)
    ids = ids[:tokens]
    cids = layout.compress(ids)
    local = local_rows(cids, layout.look_back(ids), layout)
    return {layer: (local[i] + layout.offsets[layer]).reshape(-1) for i, layer in enumerate(layout.layers)}


def tables_report(layout, folder: str, addresses, corpus: list[str], sample_tokens: int, k: int) -> dict:
    """What `engram address --tables` adds to its JSON: per layer, the norms of the rows the text
    reads, the cosine among its distinct rows and, with `k`, their nearest rows among those the
    first `sample_tokens` tokens of the `corpus` files read."""
    from engram_core.tables import open_tables

    tables = open_tables(folder, layout)
    rows = addresses.rows  # (L, T, H)
    views: dict = {"norms": {}, "cosine": {}, "neighbours": {}, "missing_layers": []}
    pool = sample_rows(layout, corpus, sample_tokens) if k else {}
    for i, layer in enumerate(layout.layers):
        if layer not in tables:
            views["missing_layers"].append(layer)
            continue
        t = tables[layer]
        views["norms"][str(layer)] = row_norms(t, rows[i].reshape(-1)).reshape(rows[i].shape).round(6).tolist()
        distinct = np.unique(rows[i])[:MAX_COSINE_ROWS]
        views["cosine"][str(layer)] = {
            "rows": distinct.tolist(),
            "matrix": cosine_matrix(t, distinct).round(6).tolist(),
        }
        if k:
            found = neighbours(t, distinct, pool[layer], k)
            views["neighbours"][str(layer)] = {str(r): nb for r, nb in zip(distinct.tolist(), found, strict=True)}
    return views
