"""`engram cache-sim`: hot-row cache policies, capacities, concurrent streams, pages and
prefetch, simulated over real traffic of any layout."""

from __future__ import annotations

import argparse
import sys
import time

from engram_core.cli import UserError

from .common import model_help

DEFAULT_CAPACITIES = "1MiB,4MiB,16MiB,64MiB,256MiB,1GiB"


def _ints(text: str, what: str) -> list[int]:
    try:
        out = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"{what} takes comma-separated integers, got {text!r}") from None
    if not out or min(out) < 1:
        raise UserError(f"{what} takes positive integers, got {text!r}")
    return out


def build(args: argparse.Namespace):
    """(trace spec, layout, grid, docs, static source, streams, granularities); UserError for bad arguments."""
    from ..serving.caches import POLICIES
    from ..serving.simulate import GRANULARITIES, Grid, parse_capacities
    from ..serving.sources import TraceSpec

    try:
        policies = tuple(p.strip() for p in args.policies.split(",") if p.strip())
        bad = [p for p in policies if p not in POLICIES]
        if bad or not policies:
            raise UserError(f"unknown policy {(bad or [''])[0]!r}: choose from {', '.join(POLICIES)}")
        grans = [g.strip() for g in args.granularity.split(",") if g.strip()]
        bad = [g for g in grans if g not in GRANULARITIES]
        if bad or not grans:
            raise UserError(f"unknown granularity {(bad or [''])[0]!r}: row or page")
        grid = Grid(
            policies=policies,
            capacities=tuple(parse_capacities(args.capacity)),
            ways=args.ways,
            lookahead=args.lookahead,
            bandwidth=args.bandwidth,
            max_tokens=args.max_tokens,
        )
        grid.check()
        streams = _ints(args.streams, "--streams")
        spec = TraceSpec(
            model=str(args.model),
            scan=args.scan,
            corpus=tuple(args.corpus or ()),
            domains=tuple(d for d in args.domains.split(",") if d),
            split=args.split,
            static_from=args.static_from,
        )
        layout, docs, static = spec.open("static" in policies)
        for cap in grid.capacities:  # ways that cannot divide a capacity: refused before any pass
            for g in grans:
                cap.units(g, layout.row_bytes, grid.ways if "set-assoc" in policies else None)
    except ValueError as e:  # LayoutError, CacheSimError, ScanError
        raise UserError(str(e)) from e
    return spec, layout, grid, docs, static, streams, grans


def table(records: list[dict]) -> str:
    cols = ("layer", "policy", "capacity", "MiB", "streams", "gran", "hit %", "miss/tok", "bytes/tok", "amp")
    out = ["  ".join(f"{c:>9}" for c in cols)]
    for r in records:
        amp = "" if r["amplification"] is None else f"{r['amplification']:.1f}"
        vals = (
            r["layer"], r["policy"], r["capacity"], f"{r['capacity_mib']:,.1f}", r["streams"], r["granularity"],
            f"{100 * r['hit_rate']:.2f}", f"{r['misses_per_token']:.3f}", f"{r['bytes_per_token']:,.0f}", amp,
        )  # fmt: skip
        out.append("  ".join(f"{v!s:>9}" for v in vals))
    return "\n".join(out)


def plot(records: list[dict], path: str) -> str:
    import plotly.graph_objects as go

    fig = go.Figure()
    for key in sorted({(r["layer"], r["policy"], r["streams"], r["granularity"]) for r in records}):
        pts = sorted((r for r in records if (r["layer"], r["policy"], r["streams"], r["granularity"]) == key),
                     key=lambda r: r["capacity_mib"])  # fmt: skip
        layer, policy, streams, gran = key
        fig.add_trace(
            go.Scatter(
                x=[p["capacity_mib"] for p in pts],
                y=[p["hit_rate"] for p in pts],
                mode="lines+markers",
                name=f"layer {layer} {policy}, {streams} stream{'s' if streams > 1 else ''}, {gran}s",
            )
        )
    fig.update_layout(
        xaxis={"type": "log", "title": "cache per layer (MiB)"},
        yaxis={"title": "reads served from the cache", "tickformat": ".0%"},
        title="Hot-row cache: hit rate against capacity",
    )
    fig.write_html(path, include_plotlyjs=True)  # self-contained: works offline
    return path


def cmd_cache_sim(args: argparse.Namespace) -> None:
    from ..serving.simulate import simulate
    from ..serving.sizing import words

    spec, layout, grid, docs, static, streams, grans = build(args)
    t0 = time.perf_counter()
    records: list[dict] = []
    try:
        if args.ray or args.ray_address:
            from ..serving.sim_ray import simulate_ray

            records = simulate_ray(spec, grid, streams, grans, args.ray_address, args.workers)
        else:
            for s in streams:
                for g in grans:
                    from tqdm import tqdm

                    # tokens replayed; the total is known only for a prefix (--max-tokens)
                    bar = tqdm(desc=f"{s} stream{'s' if s > 1 else ''}, {g}s", total=grid.max_tokens, unit="tok",
                               leave=False, dynamic_ncols=True)  # fmt: skip

                    def tick(done: int, bar=bar) -> None:
                        bar.update(done - bar.n)

                    records += simulate(layout, docs, grid, s, g, static, tick)
                    bar.close()
    except ValueError as e:
        raise UserError(str(e)) from e
    seconds = time.perf_counter() - t0
    print(table(records))
    for line in words(records):
        print(line)
    tokens = max((r["tokens"] for r in records), default=0)
    print(f"{layout.name}: {tokens:,} tokens a pass, {len(records)} caches simulated in {seconds:.1f} s")
    if args.output:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(records), f"{args.output}.parquet")
        print(f"wrote {args.output}.parquet", file=sys.stderr)
        print(f"wrote {plot(records, f'{args.output}.html')}", file=sys.stderr)


def add_cache_sim_command(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser(
        "cache-sim",
        help="hit rates of hot-row cache policies over real traffic (capacity, streams, pages, prefetch)",
    )
    s.add_argument("--model", default="deepseek-v4.1-flash", help=model_help())
    src = s.add_mutually_exclusive_group()
    src.add_argument("--scan", metavar="OUT_DIR", help="replay the token streams an `engram scan` kept")
    src.add_argument("--corpus", nargs="+", metavar="PATH", help="folders, .txt/.md/.py, .jsonl or .parquet files")
    s.add_argument("--domains", default="plays,code", help="the project corpus's domains (when no --scan/--corpus)")
    s.add_argument("--split", default="train", help="train (the shipped corpus), val (held-out text) or all")
    s.add_argument("--policies", default="lru,clock,set-assoc,static,belady", help="comma-separated")
    s.add_argument("--capacity", default=DEFAULT_CAPACITIES, help="per layer: rows (100000) or bytes (64MiB, 2GiB)")
    s.add_argument("--ways", type=int, default=16, help="set-assoc: ways per set (must divide a row capacity)")
    s.add_argument("--streams", default="1", help="concurrent requests, round robin token by token: 1,4,16")
    s.add_argument("--granularity", default="row", help="row, page (4 KiB reads) or both: row,page")
    s.add_argument("--lookahead", type=int, default=0, help="prefetch: tokens known ahead of the reader (0: none)")
    s.add_argument("--bandwidth", type=int, default=0, help="prefetch: rows (or pages) fetched per token")
    s.add_argument(
        "--static-from",
        default="trace",
        help="the static set's training traffic: trace (itself: the best static set), train, a scan folder, or a path",
    )
    s.add_argument("--max-tokens", type=int, help="simulate the first N tokens of the trace")
    s.add_argument("--ray", action="store_true", help="one simulation per (policy, capacity) on a local Ray")
    s.add_argument("--ray-address", help="HOST:PORT of a Ray cluster")
    s.add_argument("--workers", type=int, default=2, help="Ray: parallel simulations")
    s.add_argument("-o", "--output", help="write OUTPUT.parquet and OUTPUT.html (the curves)")
    s.set_defaults(fn=cmd_cache_sim)
