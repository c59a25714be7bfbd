"""Compiled cache kernels over a stream of reads: LRU, CLOCK, k-way set-associative LRU,
with a prefetcher, and the optimal offline policy (Belady's MIN).

A read is a unit id (a table row, or a 4 KiB page of one): a non-negative int64. The
dynamic policies keep their whole state in arrays (`state` below) so that a stream is
fed in chunks and a simulation of a billion reads never holds the stream. Each kernel
writes, per read, whether it hit and the slot the unit occupies afterwards; the real
row cache of `offload.py` places rows with the same kernels, so a simulated hit and a
measured hit are the same event.

State of a cache of C slots (`new_state`):
- `keys`, `vals`: an open-addressing hash table unit -> slot (linear probing, backward-shift
  deletion, -1 empty), 2^k >= 2C entries. Set-associative caches do not use it.
- `slot_key` (C,): the unit in each slot, -1 empty.
- `a`, `b` (C,): LRU's prev/next links; CLOCK's reference bit in `a`; set-associative's
  last-use stamp in `a`.
- `meta`: [count, head (MRU), tail (LRU), hand, tick, queue head, queue length, 0].
- `qrow`, `qneed`: the prefetch queue, a ring of (unit, token that needs it).

Everything is `nogil`: the offload cache places one layer's rows while another layer's run.
"""

from __future__ import annotations

import numba
import numpy as np

LRU, CLOCK, SET_ASSOC = 0, 1, 2
NEVER = np.iinfo(np.int64).max  # Belady: next use of a unit never read again
_M = 0x7FB5D329728EA185


@numba.njit(inline="always")
def _hash(key):
    x = (key ^ (key >> 31)) * _M
    return x ^ (x >> 27)


@numba.njit(inline="always")
def _find(keys, key):
    """The entry holding `key`, or the empty entry where it would go."""
    mask = len(keys) - 1
    i = _hash(key) & mask
    while keys[i] != -1 and keys[i] != key:
        i = (i + 1) & mask
    return i


@numba.njit(inline="always")
def _delete(keys, vals, i):
    """Empty entry i, shifting back the entries of its probe run (no tombstones)."""
    mask = len(keys) - 1
    j = i
    while True:
        j = (j + 1) & mask
        if keys[j] == -1:
            break
        home = _hash(keys[j]) & mask
        # leave keys[j] where it is when its home lies cyclically in (i, j]
        if (i <= j and i < home <= j) or (i > j and (home > i or home <= j)):
            continue
        keys[i] = keys[j]
        vals[i] = vals[j]
        i = j
    keys[i] = -1


@numba.njit(inline="always")
def _unlink(a, b, meta, s):
    p, n = a[s], b[s]
    if p >= 0:
        b[p] = n
    else:
        meta[1] = n
    if n >= 0:
        a[n] = p
    else:
        meta[2] = p


@numba.njit(inline="always")
def _push_front(a, b, meta, s):
    a[s] = -1
    b[s] = meta[1]
    if meta[1] >= 0:
        a[meta[1]] = s
    meta[1] = s
    if meta[2] < 0:
        meta[2] = s


@numba.njit(inline="always")
def _access(policy, ways, key, keys, vals, slot_key, a, b, meta):
    """One read of `key`: (hit, slot it now occupies)."""
    cap = len(slot_key)
    if policy == SET_ASSOC:
        sets = cap // ways
        base = (_hash(key) & 0x7FFFFFFFFFFFFFFF) % sets * ways
        meta[4] += 1
        victim, oldest = base, NEVER
        for s in range(base, base + ways):
            if slot_key[s] == key:
                a[s] = meta[4]
                return True, s
            stamp = a[s] if slot_key[s] != -1 else -1  # an empty way goes first
            if stamp < oldest:
                victim, oldest = s, stamp
        slot_key[victim] = key
        a[victim] = meta[4]
        return False, victim
    i = _find(keys, key)
    if keys[i] == key:
        s = vals[i]
        if policy == LRU:
            if meta[1] != s:
                _unlink(a, b, meta, s)
                _push_front(a, b, meta, s)
        else:
            a[s] = 1
        return True, s
    if meta[0] < cap:
        s = meta[0]
        meta[0] += 1
    else:
        if policy == LRU:
            s = meta[2]
            _unlink(a, b, meta, s)
        else:  # CLOCK: the hand clears reference bits until it meets a clear one
            while a[meta[3]] == 1:
                a[meta[3]] = 0
                meta[3] = (meta[3] + 1) % cap
            s = meta[3]
            meta[3] = (meta[3] + 1) % cap
        _delete(keys, vals, _find(keys, slot_key[s]))
        i = _find(keys, key)  # the deletion may have moved entries
    keys[i] = key
    vals[i] = s
    slot_key[s] = key
    if policy == LRU:
        _push_front(a, b, meta, s)
    else:
        a[s] = 1  # a unit enters referenced (second chance)
    return False, s


@numba.njit(nogil=True)
def run(
    policy,
    ways,
    units,
    tok_ptr,
    n_tok,
    base,
    look,
    bandwidth,
    keys,
    vals,
    slot_key,
    a,
    b,
    meta,
    qrow,
    qneed,
    hit,
    slot,
    stats,
):
    """Serve tokens 0..n_tok-1 of a chunk; token t reads units[tok_ptr[t]:tok_ptr[t+1]].

    With look > 0 the chunk carries `look` more tokens to peek at: after token t is served,
    the rows of token t + look join the prefetch queue, and up to `bandwidth` queued units
    still ahead of the reader are fetched (a unit already cached is touched for free).
    `base` is the chunk's first token in the whole stream. stats += [prefetched, dropped].
    """
    qcap = len(qrow)
    for t in range(n_tok):
        for u in range(tok_ptr[t], tok_ptr[t + 1]):
            h, s = _access(policy, ways, units[u], keys, vals, slot_key, a, b, meta)
            hit[u] = h
            slot[u] = s
        if look == 0:
            continue
        need = base + t + look
        for u in range(tok_ptr[t + look], tok_ptr[t + look + 1]):
            if meta[6] == qcap:  # full: the oldest request is dropped (it would come too late)
                meta[5] = (meta[5] + 1) % qcap
                meta[6] -= 1
                stats[1] += 1
            j = (meta[5] + meta[6]) % qcap
            qrow[j] = units[u]
            qneed[j] = need
            meta[6] += 1
        budget = bandwidth
        while budget > 0 and meta[6] > 0:
            j = meta[5]
            meta[5] = (meta[5] + 1) % qcap
            meta[6] -= 1
            if qneed[j] <= base + t:
                continue  # its token was already served
            h, s = _access(policy, ways, qrow[j], keys, vals, slot_key, a, b, meta)
            if not h:
                budget -= 1
                stats[0] += 1


@numba.njit(nogil=True)
def next_use(stream):
    """Per read, the index of the next read of the same unit (NEVER when there is none)."""
    n = len(stream)
    cap = 1
    while cap < 2 * n + 2:
        cap *= 2
    keys = np.full(cap, -1, np.int64)
    last = np.empty(cap, np.int64)
    out = np.empty(n, np.int64)
    for i in range(n - 1, -1, -1):
        k = _find(keys, stream[i])
        if keys[k] == stream[i]:
            out[i] = last[k]
        else:
            keys[k] = stream[i]
            out[i] = NEVER
        last[k] = i
    return out


@numba.njit(inline="always")
def _sift_up(heap, nxt, pos, i):
    while i > 0:
        p = (i - 1) // 2
        if nxt[heap[p]] >= nxt[heap[i]]:
            break
        heap[p], heap[i] = heap[i], heap[p]
        pos[heap[p]] = p
        pos[heap[i]] = i
        i = p


@numba.njit(inline="always")
def _sift_down(heap, nxt, pos, i, n):
    while True:
        left, right, m = 2 * i + 1, 2 * i + 2, i
        if left < n and nxt[heap[left]] > nxt[heap[m]]:
            m = left
        if right < n and nxt[heap[right]] > nxt[heap[m]]:
            m = right
        if m == i:
            break
        heap[m], heap[i] = heap[i], heap[m]
        pos[heap[m]] = m
        pos[heap[i]] = i
        i = m


@numba.njit(nogil=True)
def belady(stream, nxt, cap, hit):
    """MIN: on a miss with a full cache, drop whichever of the cached units and the new one
    is read again last (the new one is then not kept). A max-heap of slots by next use."""
    m = 1
    while m < 2 * cap + 2:
        m *= 2
    keys = np.full(m, -1, np.int64)
    vals = np.empty(m, np.int64)
    slot_key = np.full(cap, -1, np.int64)
    slot_next = np.empty(cap, np.int64)
    heap = np.empty(cap, np.int64)  # slots, the farthest next use on top
    pos = np.empty(cap, np.int64)
    n = 0
    for i in range(len(stream)):
        key = stream[i]
        k = _find(keys, key)
        if keys[k] == key:
            hit[i] = True
            s = vals[k]
            slot_next[s] = nxt[i]
            _sift_up(heap, slot_next, pos, pos[s])
            _sift_down(heap, slot_next, pos, pos[s], n)
            continue
        hit[i] = False
        if nxt[i] == NEVER:
            continue  # never read again: keeping it cannot help
        if n < cap:
            s = n
            heap[n] = s
            pos[s] = n
            n += 1
        else:
            s = heap[0]
            if slot_next[s] <= nxt[i]:
                continue  # every cached unit is read again sooner: bypass
            _delete(keys, vals, _find(keys, slot_key[s]))
            k = _find(keys, key)
        keys[k] = key
        vals[k] = s
        slot_key[s] = key
        slot_next[s] = nxt[i]
        _sift_up(heap, slot_next, pos, pos[s])
        _sift_down(heap, slot_next, pos, pos[s], n)
