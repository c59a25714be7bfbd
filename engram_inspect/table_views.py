"""Views of table rows read from disk: norms, cosine among rows, faiss neighbours.

Arrays in, arrays out; the rows come from `engram_core.tables` (memory-mapped,
only the rows asked for are read).
"""

from __future__ import annotations

import numpy as np

from engram_core.tables import TableTensor


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
    index = faiss.IndexFlatIP(table.values.shape[1])
    index.add(unit(table.read(pool)).astype(np.float32))
    q = unit(table.read(np.asarray(queries, dtype=np.int64))).astype(np.float32)
    sims, idx = index.search(q, min(k + 1, pool.size))
    out = []
    for qi, row in enumerate(np.asarray(queries).tolist()):
        found = [(int(pool[j]), float(s)) for j, s in zip(idx[qi], sims[qi], strict=True) if j >= 0 and pool[j] != row]
        out.append(found[:k])
    return out
