"""Sizing a cache: hit-rate curves over a sweep of capacities, and the figures people quote
(the capacity each policy needs for 80, 90 and 95 % hits per layer) in words."""

from __future__ import annotations

from engram_core.layout import MemoryLayout

from .simulate import Capacity, Grid, capacity_for, simulate

TARGETS = (0.80, 0.90, 0.95)
SWEEP_BYTES = tuple(64 << 10 << (2 * k) for k in range(9))  # 64 KiB .. 4 GiB, x4


def sweep(layout: MemoryLayout, top: int | None = None) -> tuple[Capacity, ...]:
    """Capacities from 64 KiB by x4 up to the first that holds a whole layer's table (or `top` bytes)."""
    table = max(layout.num_embeddings(la) for la in layout.layers) * layout.row_bytes
    limit = min(table, top) if top else table
    caps = [b for b in SWEEP_BYTES if b < limit] + [min(limit, SWEEP_BYTES[-1])]
    return tuple(Capacity(_mib(b), nbytes=b) for b in sorted(set(caps)))


def _mib(nbytes: int) -> str:
    return f"{nbytes >> 10}KiB" if nbytes < 2**20 else f"{nbytes / 2**20:.4g}MiB"


def curves(layout: MemoryLayout, docs, policy: str, streams: int = 1, granularity: str = "row", **kw) -> list[dict]:
    """Hit rate of one policy at every capacity of the sweep (`simulate` records)."""
    caps = sweep(layout, kw.pop("top", None))
    return simulate(layout, docs, Grid(policies=(policy,), capacities=caps, **kw), streams, granularity)


def words(records: list[dict], what: str = "") -> list[str]:
    """Per (layer, streams, granularity): the capacity each policy needs for 80/90/95 % hits."""
    lines = []
    for layer, streams, gran in sorted({(r["layer"], r["streams"], r["granularity"]) for r in records}):
        rs = [r for r in records if (r["layer"], r["streams"], r["granularity"]) == (layer, streams, gran)]
        most = max(r["capacity_mib"] for r in rs)
        parts = []
        for target in TARGETS:
            found = capacity_for(rs, target)
            reached = [f"{p} {_fmt(r['capacity_mib'])}" for (_, p, _, _), r in found.items() if r]
            short = [p for (_, p, _, _), r in found.items() if r is None]
            for p in short:
                mine = sorted((r for r in rs if r["policy"] == p), key=lambda r: r["capacity_units"])
                whole = mine[-1]["capacity_units"] >= mine[-1]["table_units"]
                # the two largest capacities serve the same reads: the cache held every row the traffic
                # read, and what still misses is each row's first read
                # (static: the set held every row its training traffic read; the rest it never saw)
                plateau = len(mine) > 1 and mine[-1]["hits"] == mine[-2]["hits"]
                why = "rows its training traffic never read" if p == "static" else "rows' first reads"
                if whole or plateau:
                    reached.append(f"{p} never (at most {mine[-1]['hit_rate']:.1%}: the rest are {why})")
                else:
                    reached.append(f"{p} more than {_fmt(most)}")
            parts.append(f"{target:.0%} hits: " + ", ".join(reached))
        head = f"{what}layer {layer}, {streams} stream{'s' if streams > 1 else ''}, {gran}s"
        lines.append(f"{head}. Per layer for " + "; ".join(parts))
    return lines


def _fmt(mib: float) -> str:
    return f"{mib * 1024:,.0f} KiB" if mib < 1 else f"{mib:,.1f} MiB" if mib < 1024 else f"{mib / 1024:,.2f} GiB"
