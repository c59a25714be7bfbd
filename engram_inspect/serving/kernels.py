"""Compiled cache kernels over a stream of reads: LRU, CLOCK, k-way set-associative LRU,
with a prefetcher, and the optimal offline policy (Belady's MIN).

A read is a unit id (a table row, or a 4 KiB page of one): a non-negative int64. The
dynamic policies keep their whole state in arrays (`state` below) so that a stream is
fed in chunks and a simulation of a billion reads never holds the stream. Each kernel
writes, per read, whether it hit and the slot the unit occupies afterwards; the real
row cache of `offload.py` places rows with the same kernels, so a simulated hit and a
measured hit are the same event.

State of a cache of C slots (`new_state`):
- `tab` (2^k, 2): an open-addressing hash table of (unit, slot) pairs (linear probing,
  backward-shift deletion, -1 empty), 2^k >= 2 x slots; a pair shares a cache line.
  Set-associative caches do not use it.
- LRU and CLOCK fill slots in order, so their slot arrays start small and grow (doubling,
  `rehash`) until they reach C: a 8 GiB cache over a short trace holds what the trace read.
- `slot_key` (C,): the unit in each slot, -1 empty.
- `link` (C, 2): LRU's prev/next links; CLOCK's reference bit and set-associative's
  last-use stamp in column 0.
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
def _find(tab, key):
    """The entry holding `key`, or the empty entry where it would go."""
    mask = tab.shape[0] - 1
    i = _hash(key) & mask
    while tab[i, 0] != -1 and tab[i, 0] != key:
        i = (i + 1) & mask
    return i


@numba.njit(inline="always")
def _delete(tab, i):
    """Empty entry i, shifting back the entries of its probe run (no tombstones)."""
    mask = tab.shape[0] - 1
    j = i
    while True:
        j = (j + 1) & mask
        if tab[j, 0] == -1:
            break
        home = _hash(tab[j, 0]) & mask
        # leave entry j where it is when its home lies cyclically in (i, j]
        if (i <= j and i < home <= j) or (i > j and (home > i or home <= j)):
            continue
        tab[i, 0] = tab[j, 0]
        tab[i, 1] = tab[j, 1]
        i = j
    tab[i, 0] = -1


@numba.njit(inline="always")
def _unlink(link, head, tail, s):
    """Take slot s out of the LRU list: (head, tail)."""
    p, n = link[s, 0], link[s, 1]
    if p >= 0:
        link[p, 1] = n
    else:
        head = n
    if n >= 0:
        link[n, 0] = p
    else:
        tail = p
    return head, tail


@numba.njit(inline="always")
def _push_front(link, head, tail, s):
    """Make slot s the most recent: (head, tail)."""
    link[s, 0] = -1
    link[s, 1] = head
    if head >= 0:
        link[head, 0] = s
    return s, (s if tail < 0 else tail)


@numba.njit(inline="always")
def _access(policy, ways, cap, key, tab, slot_key, link, count, head, tail, hand, tick):
    """One read of `key`: (hit, slot it now occupies, count, head, tail, hand, tick).

    The scalars of the state travel as values, not through an array, so they stay in registers.
    """
    if policy == SET_ASSOC:
        sets = cap // ways
        base = (_hash(key) & 0x7FFFFFFFFFFFFFFF) % sets * ways
        tick += 1
        victim, oldest = base, NEVER
        for s in range(base, base + ways):
            if slot_key[s] == key:
                link[s, 0] = tick
                return True, s, count, head, tail, hand, tick
            stamp = link[s, 0] if slot_key[s] != -1 else -1  # an empty way goes first
            if stamp < oldest:
                victim, oldest = s, stamp
        slot_key[victim] = key
        link[victim, 0] = tick
        return False, victim, count, head, tail, hand, tick
    i = _find(tab, key)
    if tab[i, 0] == key:
        s = tab[i, 1]
        if policy == LRU:
            if head != s:
                head, tail = _unlink(link, head, tail, s)
                head, tail = _push_front(link, head, tail, s)
        else:
            link[s, 0] = 1
        return True, s, count, head, tail, hand, tick
    if count < cap:
        s = count
        count += 1
    else:
        if policy == LRU:
            s = tail
            head, tail = _unlink(link, head, tail, s)
        else:  # CLOCK: the hand clears reference bits until it meets a clear one
            while link[hand, 0] == 1:
                link[hand, 0] = 0
                hand = (hand + 1) % cap
            s = hand
            hand = (hand + 1) % cap
        _delete(tab, _find(tab, slot_key[s]))
        i = _find(tab, key)  # the deletion may have moved entries
    tab[i, 0] = key
    tab[i, 1] = s
    slot_key[s] = key
    if policy == LRU:
        head, tail = _push_front(link, head, tail, s)
    else:
        link[s, 0] = 1  # a unit enters referenced (second chance)
    return False, s, count, head, tail, hand, tick


@numba.njit(nogil=True)
def run(policy, ways, cap, units, tok_ptr, n_tok, base, look, bandwidth, tab, slot_key, link, meta, qrow, qneed, hit, slot, stats):  # fmt: skip  # noqa: E501
    """Serve tokens 0..n_tok-1 of a chunk; token t reads units[tok_ptr[t]:tok_ptr[t+1]].

    With look > 0 the chunk carries `look` more tokens to peek at: after token t is served,
    the rows of token t + look join the prefetch queue (after the stream's first token, those
    of tokens 1..look), and up to `bandwidth` queued units
    still ahead of the reader are fetched (a unit already cached is touched for free).
    `base` is the chunk's first token in the whole stream. stats += [prefetched, dropped].
    """
    qcap = len(qrow)
    keep_slots = len(slot) > 0  # the row cache of offload.py wants them; a simulation does not
    count, head, tail, hand, tick = meta[0], meta[1], meta[2], meta[3], meta[4]
    for t in range(n_tok):
        for u in range(tok_ptr[t], tok_ptr[t + 1]):
            h, s, count, head, tail, hand, tick = _access(
                policy, ways, cap, units[u], tab, slot_key, link, count, head, tail, hand, tick
            )
            hit[u] = h
            if keep_slots:
                slot[u] = s
        if look == 0:
            continue
        # after the stream's first token every token up to t + look is known; later, one more a step
        for k in range(1 if base + t == 0 else look, look + 1):
            need = base + t + k
            for u in range(tok_ptr[t + k], tok_ptr[t + k + 1]):
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
            h, s, count, head, tail, hand, tick = _access(
                policy, ways, cap, qrow[j], tab, slot_key, link, count, head, tail, hand, tick
            )
            if not h:
                budget -= 1
                stats[0] += 1
    meta[0], meta[1], meta[2], meta[3], meta[4] = count, head, tail, hand, tick


@numba.njit(nogil=True)
def rehash(slot_key, count, tab):
    """Fill an empty hash table with the units of slots 0..count-1 (after the slot arrays grew)."""
    for s in range(count):
        i = _find(tab, slot_key[s])
        tab[i, 0] = slot_key[s]
        tab[i, 1] = s


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
    tab = np.full((m, 2), -1, np.int64)
    slot_key = np.full(cap, -1, np.int64)
    slot_next = np.empty(cap, np.int64)
    heap = np.empty(cap, np.int64)  # slots, the farthest next use on top
    pos = np.empty(cap, np.int64)
    n = 0
    for i in range(len(stream)):
        key = stream[i]
        k = _find(tab, key)
        if tab[k, 0] == key:
            hit[i] = True
            s = tab[k, 1]
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
            _delete(tab, _find(tab, slot_key[s]))
            k = _find(tab, key)
        tab[k, 0] = key
        tab[k, 1] = s
        slot_key[s] = key
        slot_next[s] = nxt[i]
        _sift_up(heap, slot_next, pos, pos[s])
        _sift_down(heap, slot_next, pos, pos[s], n)
