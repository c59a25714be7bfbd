"""Serving a memory: hot-row caches and prefetch simulated over real traffic, and a model
reading its own tables from disk through such a cache.

`kernels` (compiled policies), `caches` (one cache's state, the static set, Belady),
`traces` (the read stream of texts, held-out text or a scan's parts, interleaved over
concurrent requests, in rows or pages), `simulate` (a grid of policies and capacities
over one pass of a trace), `sim_ray` (the same grid on Ray), `offload` (tables read
from a memory-mapped checkpoint through a cache).

Imports `engram_core`, `base` and `corpus`; never `memory`, `text` or `commands`.
"""
