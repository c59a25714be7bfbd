"""N-grams as int64 keys, hashed to rows and grouped by row: the arithmetic of the collision index.

An N-gram of order n (compressed ids, oldest token first) is packed into one int64 key,
base V' with the oldest token most significant, so sorted keys are sorted N-grams. The
distinct keys are hashed once per head (ENGRAM.md §2-3) and grouped by the row they reach.
A corpus is named by its fingerprint, so whatever is counted remembers what it counted.

U distinct N-grams of one order, P rows (the prime) of one head, n order.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping

import numpy as np

from engram_core import HashSpec
from engram_core.hashing import hash_ids

HASH_CHUNK = 1 << 18  # distinct N-grams hashed per call, to bound the (chunk, n, H) temporaries

Streams = Iterable[np.ndarray] | Mapping[str, np.ndarray]


# --- packing N-grams into int64 keys -----------------------------------------------------------


def check_packable(vocab_size: int, order: int) -> None:
    """Refuse orders whose N-grams do not fit one int64 key (V'^n must stay below 2^63)."""
    if vocab_size**order > np.iinfo(np.int64).max:
        raise ValueError(
            f"N-grams of order {order} over {vocab_size} compressed ids do not fit an int64 key "
            f"({vocab_size}^{order} > 2^63 - 1); the collision index cannot pack them"
        )


def position_keys(cids: np.ndarray, order: int, vocab_size: int, pad_id: int) -> np.ndarray:
    """Packed suffix N-gram of every position of one sequence: (T,) int64 (§2).

    Positions before the sequence start read the pad id, as the model does.
    """
    cids = np.asarray(cids, dtype=np.int64)
    T = len(cids)
    key = np.zeros(T, dtype=np.int64)
    for k in reversed(range(order)):  # oldest token (delay order-1) first: most significant
        delayed = np.full(T, pad_id, dtype=np.int64)
        if k < T:
            delayed[k:] = cids[: T - k]
        key = key * vocab_size + delayed
    return key


def pack_ngram(ngram: tuple[int, ...], vocab_size: int) -> int:
    key = 0
    for x in ngram:
        key = key * vocab_size + int(x)
    return key


def unpack_keys(keys: np.ndarray, order: int, vocab_size: int) -> np.ndarray:
    """Packed keys back to N-grams: (U, order) int64, oldest token first."""
    out = np.empty((len(keys), order), dtype=np.int64)
    rest = np.asarray(keys, dtype=np.int64)
    for j in reversed(range(order)):
        rest, out[:, j] = np.divmod(rest, vocab_size)
    return out


# --- hashing distinct N-grams and grouping them by row -------------------------------------------


def ngram_rows(ngrams: np.ndarray, spec: HashSpec, layer: int) -> np.ndarray:
    """Rows of the order-n heads for each N-gram in (U, n): (heads_per_ngram, U) int64.

    Each N-gram is hashed as a length-n sequence with `engram_core.hashing.hash_ids`
    and read at its last position, where the order-n suffix is exactly the N-gram:
    the very function the model calls, so rows are bit-identical to what it reads.
    """
    U, order = ngrams.shape
    first = spec.head_index(order, 0)
    out = np.empty((spec.heads_per_ngram, U), dtype=np.int64)
    for start in range(0, U, HASH_CHUNK):
        chunk = ngrams[start : start + HASH_CHUNK]
        rows = hash_ids(chunk, spec, layer)[:, -1, first : first + spec.heads_per_ngram]  # (chunk, heads)
        out[:, start : start + len(chunk)] = rows.numpy().T
    return out


def group_by_row(rows: np.ndarray, prime: int) -> tuple[np.ndarray, np.ndarray]:
    """CSR grouping: N-gram indices sorted by row, and where each row's run starts (P + 1,)."""
    # subtle: a stable sort keeps each row's N-grams in key order (deterministic files); on
    # uint16 numpy uses a linear-time radix sort, 6x faster than on int64 for the usual primes
    sortable = rows.astype(np.uint16) if prime <= 1 << 16 else rows
    perm = np.argsort(sortable, kind="stable").astype(np.int32)
    indptr = np.zeros(prime + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=prime), out=indptr[1:])
    return perm, indptr


def as_list(streams: Streams) -> list[np.ndarray]:
    return [np.asarray(s) for s in (streams.values() if isinstance(streams, Mapping) else streams)]


def corpus_fingerprint(streams: Streams) -> str:
    """A short hash of the raw token streams, so an index remembers what it counted."""
    h = hashlib.sha256()
    for s in as_list(streams):
        a = np.ascontiguousarray(s, dtype=np.int64)
        h.update(str(len(a)).encode())
        h.update(a.astype(np.uint32).tobytes())
    return h.hexdigest()[:16]
