"""`engram cache-sim` on Ray: one simulation per (policy, capacity, streams, granularity),
run as Ray Data tasks in parallel. Each task opens the trace itself and runs `simulate`
on a one-line grid; a line's cache never depends on another's, so the records equal the
in-process executor's, field for field."""

from __future__ import annotations

import json
from dataclasses import replace

from ..corpus.scan_ray import start
from .simulate import Grid
from .sources import TraceSpec


def simulate_ray(spec: TraceSpec, grid: Grid, streams: list[int], grans: list[str], address, workers: int):
    """The records of every line of the grid, in the in-process executor's order."""
    ray = start(address, workers)
    items = [
        {"policy": p, "capacity": i, "streams": s, "granularity": g}
        for s in streams
        for g in grans
        for p in grid.policies
        for i in range(len(grid.capacities))
    ]

    def run_one(batch: dict) -> dict:
        from .simulate import simulate

        out = []
        for p, i, s, g in zip(batch["policy"], batch["capacity"], batch["streams"], batch["granularity"], strict=True):
            layout, docs, static = spec.open(str(p) == "static")
            one = replace(grid, policies=(str(p),), capacities=(grid.capacities[int(i)],))
            out += simulate(layout, docs, one, int(s), str(g), static)
        return {"line": [json.dumps(r) for r in out]}

    ds = ray.data.from_items(items, override_num_blocks=len(items))
    pool = ray.data.TaskPoolStrategy(size=workers)
    records = [json.loads(r["line"]) for r in ds.map_batches(run_one, batch_size=1, compute=pool).iter_rows()]
    # the in-process order: streams, granularity, then layer, policy and capacity as the grid lists them
    pol = {p: i for i, p in enumerate(grid.policies)}
    caps = {c.text: i for i, c in enumerate(grid.capacities)}
    run = {sg: k for k, sg in enumerate((s, g) for s in streams for g in grans)}
    records.sort(
        key=lambda r: (run[(r["streams"], r["granularity"])], r["layer"], pol[r["policy"]], caps[r["capacity"]])
    )
    return records
