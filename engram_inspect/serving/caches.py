"""A hot-row cache of one policy and capacity, fed a stream of reads chunk by chunk.

`Cache` wraps the compiled kernels' state (`kernels.py`): LRU, CLOCK and k-way
set-associative LRU are dynamic and take a prefetcher; `StaticSet` is a fixed set of
units loaded before the stream (its first reads hit); `belady_hits` is the optimal
offline policy over a stream held in memory. Arrays in, arrays out.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..corpus.reuse import previous_access
from . import kernels

DYNAMIC = {"lru": kernels.LRU, "clock": kernels.CLOCK, "set-assoc": kernels.SET_ASSOC}
POLICIES = ("lru", "clock", "set-assoc", "static", "belady")


class CacheSimError(ValueError):
    """Bad simulation input (capacity, ways, policy, trace); one line."""


def check_policy(policy: str, capacity: int, ways: int | None) -> None:
    if policy not in POLICIES:
        raise CacheSimError(f"unknown policy {policy!r}: choose from {', '.join(POLICIES)}")
    if capacity <= 0:
        raise CacheSimError(f"a cache holds at least one unit, got a capacity of {capacity}")
    if policy == "set-assoc":
        if ways is None or ways <= 0:
            raise CacheSimError("set-assoc needs --ways K (K >= 1)")
        if capacity % ways:
            raise CacheSimError(f"{ways} ways do not divide a capacity of {capacity:,} units")


@dataclass
class Cache:
    """One dynamic cache's state; `feed` serves a chunk of tokens and returns per-read hits."""

    policy: str
    capacity: int  # units (rows or pages)
    ways: int = 0  # set-assoc only
    look: int = 0  # prefetch lookahead in tokens (0: none)
    bandwidth: int = 0  # prefetch: units fetched per token
    queue: int = 1  # prefetch queue length in units
    stats: np.ndarray = field(default_factory=lambda: np.zeros(2, np.int64))  # prefetched, dropped

    def __post_init__(self) -> None:
        check_policy(self.policy, self.capacity, self.ways or None)
        if self.policy not in DYNAMIC:
            raise CacheSimError(f"{self.policy} is not a dynamic policy")
        if self.look and self.bandwidth <= 0:
            raise CacheSimError("prefetch needs a bandwidth of at least one row per token")
        self.meta = np.array([0, -1, -1, 0, 0, 0, 0, 0], np.int64)
        if self.policy == "set-assoc":  # slots are fixed by the sets: all of them from the start
            self.tab = np.full((1, 2), -1, np.int64)
            self.slot_key = np.full(self.capacity, -1, np.int64)
            self.link = np.zeros((self.capacity, 1), np.int64)
        else:
            self.slot_key = np.zeros(0, np.int64)
            self._grow(min(self.capacity, 1024))
        self.qrow = np.zeros(max(self.queue, 1), np.int64)
        self.qneed = np.zeros(max(self.queue, 1), np.int64)
        self.served = 0  # tokens served so far

    def _grow(self, slots: int) -> None:
        """Slot arrays of `slots` (<= capacity) entries, the hash table rebuilt at twice that."""
        old = len(self.slot_key)
        self.slot_key = np.concatenate([self.slot_key, np.full(slots - old, -1, np.int64)])
        fill = -1 if self.policy == "lru" else 0  # LRU: no neighbour; CLOCK: reference bit clear
        link = getattr(self, "link", np.zeros((0, 2), np.int64))
        self.link = np.concatenate([link, np.full((slots - old, 2), fill, np.int64)])
        m = 1
        while m < 2 * slots + 2:
            m *= 2
        self.tab = np.full((m, 2), -1, np.int64)
        kernels.rehash(self.slot_key, int(self.meta[0]), self.tab)

    def feed(self, units: np.ndarray, tok_ptr: np.ndarray, n_tok: int, slots: bool = False):
        """Serve n_tok tokens; `tok_ptr` has n_tok + look + 1 offsets (the peeked tokens last).

        Returns (hit, slot) per read of the served tokens (slot: None unless `slots`).
        """
        n = int(tok_ptr[n_tok])
        if self.policy != "set-assoc":  # room for every unit this chunk may bring in, prefetches too
            need = min(self.capacity, int(self.meta[0]) + n + n_tok * self.bandwidth)
            if need > len(self.slot_key):
                self._grow(min(self.capacity, max(need, 2 * len(self.slot_key))))
        hit = np.empty(n, np.bool_)
        slot = np.empty(n if slots else 0, np.int64)
        kernels.run(
            DYNAMIC[self.policy], max(self.ways, 1), self.capacity, units, tok_ptr, n_tok, self.served,
            self.look, self.bandwidth, self.tab, self.slot_key, self.link, self.meta,
            self.qrow, self.qneed, hit, slot, self.stats,
        )  # fmt: skip
        self.served += n_tok
        return hit, (slot if slots else None)


def flat_ptr(n_tok: int, per_token: int) -> np.ndarray:
    """Token offsets of a stream with the same number of reads per token."""
    return np.arange(n_tok + 1, dtype=np.int64) * per_token


def simple_hits(policy: str, stream: np.ndarray, capacity: int, ways: int = 0) -> np.ndarray:
    """Per-read hits of one dynamic policy over a whole stream, one read per token, no prefetch."""
    c = Cache(policy, capacity, ways)
    return c.feed(np.ascontiguousarray(stream, np.int64), flat_ptr(len(stream), 1), len(stream))[0]


@dataclass(frozen=True)
class StaticSet:
    """The C units read most in a training stream, loaded before the stream is served."""

    units: np.ndarray  # sorted

    @classmethod
    def from_counts(cls, units: np.ndarray, counts: np.ndarray, capacity: int) -> StaticSet:
        """The `capacity` most-read units; ties broken by the lower unit id (deterministic)."""
        order = np.lexsort((units, -counts))[:capacity]
        return cls(np.sort(units[order]))

    @classmethod
    def from_stream(cls, stream: np.ndarray, capacity: int) -> StaticSet:
        u, c = np.unique(stream, return_counts=True)
        return cls.from_counts(u, c, capacity)

    def hits(self, units: np.ndarray) -> np.ndarray:
        i = np.searchsorted(self.units, units)
        i = np.minimum(i, max(len(self.units) - 1, 0))
        return (self.units[i] == units) if len(self.units) else np.zeros(len(units), np.bool_)


def next_use(stream: np.ndarray) -> np.ndarray:
    """Per read, the index of the next read of the same unit (NEVER when there is none): the previous
    read of the reversed stream (`reuse.previous_access`), turned around."""
    n = len(stream)
    prev = previous_access(np.ascontiguousarray(stream[::-1]))[::-1]
    return np.where(prev < 0, kernels.NEVER, n - 1 - prev)


def belady_hits(stream: np.ndarray, capacity: int) -> np.ndarray:
    """Per-read hits of the optimal offline policy (MIN, with bypass) over a stream in memory."""
    stream = np.ascontiguousarray(stream, np.int64)
    hit = np.zeros(len(stream), np.bool_)
    # more slots than the stream has units change nothing: keep the arrays to what it reads
    capacity = min(capacity, len(np.unique(stream))) if capacity > 1 << 16 else capacity
    kernels.belady(stream, next_use(stream), max(capacity, 1), hit)
    return hit
