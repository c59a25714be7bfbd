"""A checkpoint that reads its Engram tables from disk through a hot-row cache: the paper's
offload argument, end to end, on a model that runs here.

`offload(ck, cache_mib=...)` swaps each layer's in-memory table for a `DiskRows`: the
table stays in the checkpoint's own safetensors file, memory-mapped (FP8 rows are
dequantised as they are read, by the function that loads them), and rows pass through a
cache of the chosen policy (`kernels`, the simulator's own code: a simulated hit and a
measured hit are the same event). The rows a text reads depend on its ids alone, so with
`prefetch` a forward pass starts every layer's reads in a background thread as soon as
the ids are hashed, and the blocks before an Engram layer run while its rows arrive;
without it, rows are read when the layer asks (on the critical path). Logits equal the
in-memory model's bit for bit: the same bytes, dequantised the same way.

Per layer it reports reads, hits, misses, rows read from disk and the seconds the forward
spent reading rows or waiting for the prefetcher.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from engram_core.tables import TableTensor, open_tables

from .caches import DYNAMIC, Cache, CacheSimError, flat_ptr


@dataclass
class RowStats:
    """What one layer's reads cost."""

    reads: int = 0  # rows the forward passes asked for
    hits: int = 0  # ... found in the cache
    prefetched: int = 0  # rows the prefetcher read from disk ahead of the forward
    disk_rows: int = 0  # rows read from disk on the critical path (distinct per batch)
    read_s: float = 0.0  # seconds the forward spent reading rows from disk
    wait_s: float = 0.0  # seconds the forward waited for the prefetcher

    @property
    def misses(self) -> int:
        return self.reads - self.hits

    def to_dict(self) -> dict:
        return {
            "reads": self.reads,
            "hits": self.hits,
            "misses": self.misses,
            "hit_rate": self.hits / self.reads if self.reads else 0.0,
            "prefetched": self.prefetched,
            "disk_rows": self.disk_rows,
            "read_ms": 1000 * self.read_s,
            "wait_ms": 1000 * self.wait_s,
        }


class DiskRows(nn.Module):
    """One layer's table, memory-mapped, read through a cache of `capacity` rows."""

    def __init__(self, table: TableTensor, capacity: int, policy: str = "lru", ways: int = 16, dtype=torch.float32):
        super().__init__()
        if policy not in DYNAMIC:
            raise CacheSimError(f"a row cache needs a dynamic policy ({', '.join(DYNAMIC)}), got {policy!r}")
        capacity = min(capacity, table.n_rows)
        if policy == "set-assoc":
            capacity -= capacity % ways
        self.source = table
        self.cache = Cache(policy, max(capacity, 1), ways if policy == "set-assoc" else 0)
        self.buffer = np.zeros((self.cache.capacity, table.width), np.float32)  # slot -> row values
        # what code asking for the table's dtype and device finds (no rows: they are on disk)
        self.register_buffer("weight", torch.empty(0, table.width, dtype=dtype), persistent=False)
        self.lock = threading.Lock()  # the prefetcher and the forward never place rows at once
        self.stats = RowStats()

    @property
    def num_embeddings(self) -> int:
        return self.source.n_rows

    def place(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, float, int]:
        """Read `rows` through the cache: (values (k, d) float32, hit per read, seconds on disk, rows read)."""
        hit, slot = self.cache.feed(rows, flat_ptr(len(rows), 1), len(rows), slots=True)
        uniq, first, inv = np.unique(rows, return_index=True, return_inverse=True)
        cached = hit[first]  # a row whose first read hit sat in its slot since before this batch
        data = np.empty((len(uniq), self.buffer.shape[1]), np.float32)
        data[cached] = self.buffer[slot[first[cached]]]
        t0 = time.perf_counter()
        if (~cached).any():
            data[~cached] = self.source.read(uniq[~cached])
        seconds = time.perf_counter() - t0
        # every slot filled in this batch now holds its last occupant: copy that row's values in
        touched = np.unique(slot[~hit])
        self.buffer[touched] = data[np.searchsorted(uniq, self.cache.slot_key[touched])]
        return data[inv], hit, seconds, int((~cached).sum())

    def prefetch(self, rows: np.ndarray) -> None:
        with self.lock:
            self.stats.prefetched += self.place(rows)[3]

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        rows = idx.reshape(-1).cpu().numpy().astype(np.int64)
        with self.lock:
            data, hit, seconds, disk = self.place(rows)
            s = self.stats
            s.reads, s.hits, s.read_s, s.disk_rows = (
                s.reads + len(rows),
                s.hits + int(hit.sum()),
                s.read_s + seconds,
                s.disk_rows + disk,
            )
        return torch.from_numpy(data).reshape(*idx.shape, -1).to(self.weight.dtype)


class _Deferred(Mapping):
    """The lookups of one forward pass, each done when its block asks (after its prefetch lands)."""

    def __init__(self, lookup, rows: dict, knockout, futures: dict[int, Future], tables: dict[int, DiskRows]):
        self._lookup, self._rows, self._ko, self._futures, self._tables = lookup, rows, knockout, futures, tables

    def __getitem__(self, i):
        if i not in self._rows:
            raise KeyError(i)
        f = self._futures.get(i)
        if f is not None:
            t0 = time.perf_counter()
            f.result()  # the prefetcher's reads of this layer (an exception there surfaces here)
            self._tables[i].stats.wait_s += time.perf_counter() - t0
        return self._lookup({i: self._rows[i]}, self._ko)[i]

    def __iter__(self):
        return iter(self._rows)

    def __len__(self) -> int:
        return len(self._rows)


@dataclass
class Offload:
    """A model reading its tables from disk; `stats()` per layer, `close()` stops the prefetcher."""

    tables: dict[int, DiskRows]
    path: Path
    policy: str
    capacity_rows: int
    prefetch: bool
    pool: ThreadPoolExecutor | None = field(default=None, repr=False)

    def stats(self) -> dict[int, dict]:
        return {layer: t.stats.to_dict() for layer, t in self.tables.items()}

    def reset_stats(self) -> None:
        for t in self.tables.values():
            t.stats = RowStats()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True)

    def summary(self) -> str:
        parts = []
        for layer, s in self.stats().items():
            parts.append(
                f"layer {layer}: {s['reads']:,} reads, {s['hit_rate']:.1%} hits, {s['misses']:,} misses, "
                f"{s['prefetched']:,} rows prefetched, {s['read_ms']:.1f} ms reading, {s['wait_ms']:.1f} ms waiting"
            )
        mode = "prefetch from the ids" if self.prefetch else "no prefetch"
        return (
            f"tables from disk ({self.path.name}, {self.policy}, {self.capacity_rows:,} rows a layer, {mode}): "
            + "; ".join(parts)
        )


def offload(ck, cache_mib: float = 64.0, policy: str = "lru", ways: int = 16, prefetch: bool = True) -> Offload:
    """Swap `ck.model`'s tables for memory-mapped ones read through a cache of `cache_mib` MiB a layer.

    The cache holds dequantised rows (4 bytes a value); the in-memory tables are dropped.
    """
    model = ck.model
    if not model.engram_layers:
        raise CacheSimError("this checkpoint has no Engram memory to offload")
    if ck.path is None:
        raise CacheSimError("offloading reads the checkpoint's own safetensors file: load it from a folder")
    if not cache_mib > 0:
        raise CacheSimError(f"--cache-mib must be positive, got {cache_mib}")
    if policy == "set-assoc" and ways < 1:
        raise CacheSimError(f"set-assoc needs at least one way, got {ways}")
    path = Path(ck.path) / "model.safetensors"
    found = open_tables(path)
    d = model.cfg.memory.d_head
    rows = max(int(cache_mib * 2**20 // (4 * d)), 1)
    tables: dict[int, DiskRows] = {}
    for layer in model.engram_layers:
        engram = model.blocks[layer].engram
        t = found.get(layer)
        if t is None or t.n_rows != engram.table.num_embeddings:
            raise CacheSimError(f"{path} has no table of {engram.table.num_embeddings:,} rows for layer {layer}")
        tables[layer] = DiskRows(t, rows, policy, ways, engram.table.weight.dtype)
        engram.table = tables[layer]  # the in-memory rows go
    pool = ThreadPoolExecutor(1, thread_name_prefix="engram-prefetch") if prefetch else None
    if prefetch:
        lookups = model.lookups

        def prefetching_lookups(rows, knockout):
            futures = {}
            for i, r in rows.items():  # in layer order: the first Engram layer's rows first
                glob = (r + model.blocks[i].engram.offsets).reshape(-1).cpu().numpy().astype(np.int64)
                futures[i] = pool.submit(tables[i].prefetch, glob)
            return _Deferred(lookups, rows, knockout, futures, tables)

        model.lookups = prefetching_lookups
    return Offload(tables, path, policy, tables[model.engram_layers[0]].cache.capacity, prefetch, pool)
