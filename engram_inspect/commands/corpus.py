"""`engram address`, `traffic` and `scan` (and `stats OUT_DIR`): the rows a corpus reads under any memory
layout, released models' included (engram_inspect.corpus)."""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

from engram_core.cli import DEFAULT_CHECKPOINT, UserError

from ..corpus.shards import DEFAULT_SAMPLE_RATE, SHARD_BYTES, ScanError
from .common import model_help, read_text_file

REPORT_MIB = (64, 1024, 16384)  # cache sizes printed in the summary; the files hold the whole curve


def _ids_or_text(args: argparse.Namespace, layout) -> list[int]:
    from engram_core.addressing import parse_ids

    given = [x is not None for x in (args.text, args.file, args.ids)]
    if sum(given) != 1:
        raise UserError("give exactly one of TEXT, --file F or --ids 0,671,...")
    if args.ids is not None:
        return parse_ids(args.ids)
    text = read_text_file(args.file) if args.file is not None else args.text
    return layout.encode(text).tolist()


def cmd_address(args: argparse.Namespace) -> None:
    from engram_core.addressing import address, parse_ids
    from engram_core.layout import load_layout

    from ..corpus.table_views import tables_report
    from ..text.export import write_table

    fmt = args.format or (Path(args.output).suffix.lstrip(".") if args.output else "json")
    if fmt not in ("json", "csv", "parquet"):
        raise UserError(f"unknown format {fmt!r}: choose json, csv or parquet")
    if fmt != "json" and not args.output:
        raise UserError(f"--format {fmt} writes a table: give -o OUT")
    if args.neighbours and not args.tables:
        raise UserError("--neighbours reads table rows: give --tables DIR")
    try:
        layout = load_layout(args.model)
        ids = _ids_or_text(args, layout)
        dead = parse_ids(args.dead_ids, "--dead-ids") if args.dead_ids else []
        addresses = address(layout, ids, dead)
        if fmt == "json":
            result = addresses.to_dict()
            if args.tables:
                result["tables"] = tables_report(
                    layout, args.tables, addresses, args.corpus or [], args.sample_tokens, args.neighbours
                )
    except ValueError as e:
        raise UserError(str(e)) from e
    if fmt != "json":
        try:
            path = write_table(addresses.records(), args.output, fmt)
        except (OSError, ValueError) as e:
            raise UserError(f"cannot write {args.output}: {e}") from e
        print(f"wrote {path} ({len(ids)} tokens)", file=sys.stderr)
        return
    text = json.dumps(result)
    if args.output:
        Path(args.output).write_text(text + "\n")
    else:
        sys.stdout.write(text + "\n")


def add_address_command(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("address", help="the table rows a text reads (any Engram layout, e.g. deepseek-v4.1-flash)")
    s.add_argument("text", nargs="?", help="the text (or --file, or --ids)")
    s.add_argument("--file", help="read the text from this file")
    s.add_argument("--ids", help="raw token ids instead of text: 0,671,4787")
    s.add_argument("--model", default=str(DEFAULT_CHECKPOINT), help=model_help())
    s.add_argument("--dead-ids", help="raw ids of dead tokens (image placeholders...) that block N-grams")
    s.add_argument("--format", help="json, csv or parquet (default: from -o's suffix, else json)")
    s.add_argument("-o", "--output", help="file to write (json goes to stdout without -o)")
    s.add_argument("--tables", help="folder (or file) of safetensors table shards: adds row norms and cosine")
    s.add_argument("--neighbours", type=int, default=0, help="K nearest rows among those a corpus sample reads")
    s.add_argument("--corpus", nargs="*", help="text files whose rows form the neighbour pool")
    s.add_argument("--sample-tokens", type=int, default=200_000, help="tokens of the corpus sample")
    s.set_defaults(fn=cmd_address)


def _at(curve: list[dict], layer: int, mib: float, key: str) -> float:
    fits = [c for c in curve if c["layer"] == layer and c["mib"] <= mib]
    return fits[-1][key] if fits else 0.0


def _print(domain: str, t, seconds: float) -> None:
    print(
        f"{domain}: {t.documents:,} documents, {t.tokens:,} tokens, {seconds:.1f} s, "
        f"LRU sample rate {t.sample_rate:.4f}"
    )
    for layer in sorted({h["layer"] for h in t.heads}):
        heads = [h for h in t.heads if h["layer"] == layer]
        reads = sum(h["reads"] for h in heads)
        rate = sum(h["collision_rate"] * h["reads"] for h in heads) / max(reads, 1)
        cache = "  ".join(
            f"{m} MiB lru {_at(t.cache, layer, m, 'lru'):.3f} static {_at(t.cache, layer, m, 'static'):.3f}"
            for m in REPORT_MIB
        )
        print(f"  layer {layer}: {sum(h['rows_hit'] for h in heads):,} rows hit, collision rate {rate:.4f}; {cache}")


def write_outputs(results: dict, prefix: str, fmt: str) -> list[str]:
    from ..text.export import write_table

    heads = [{"domain": d, **h} for d, t in results.items() for h in t.heads]
    cache = [{"domain": d, **c} for d, t in results.items() for c in t.cache]
    zipf = [
        {"domain": d, "layer": la, "rank": r, "reads": n}
        for d, t in results.items()
        for la, z in t.zipf.items()
        for r, n in z
    ]
    paths = [
        str(write_table(rows, f"{prefix}-{name}.{fmt}", fmt))
        for name, rows in (("heads", heads), ("cache", cache), ("zipf", zipf))
        if rows
    ]
    paths.append(plot_cache(cache, f"{prefix}-cache.html"))
    return paths


def plot_cache(cache: list[dict], path: str) -> str:
    import plotly.graph_objects as go

    fig = go.Figure()
    for key in sorted({(c["domain"], c["layer"]) for c in cache}):
        pts = [c for c in cache if (c["domain"], c["layer"]) == key]
        for kind, dash in (("lru", "solid"), ("static", "dot")):
            fig.add_trace(
                go.Scatter(
                    x=[p["mib"] for p in pts],
                    y=[p[kind] for p in pts],
                    line={"dash": dash},
                    name=f"{key[0]} layer {key[1]} {kind}",
                )
            )
    fig.update_layout(
        xaxis={"type": "log", "title": "cache size (MiB)"},
        yaxis={"title": "hit rate"},
        title="Hot-row cache: hit rate against size",
    )
    fig.write_html(path, include_plotlyjs=True)  # self-contained: works offline
    return path


def cmd_traffic(args: argparse.Namespace) -> None:
    from engram_core.layout import load_layout

    from ..corpus.texts import DOMAINS, domain_texts, tokenize
    from ..corpus.traffic import corpus_traffic

    domains = [d for d in args.domains.split(",") if d] if args.domains else []
    bad = [d for d in domains if d not in DOMAINS]
    if bad:
        raise UserError(f"unknown domain {bad[0]!r}: choose from {', '.join(DOMAINS)} (or give --corpus files)")
    if not domains and not args.corpus:
        raise UserError("nothing to scan: give --domains plays,code and/or --corpus FILE...")
    if args.sample_rate is not None and not 0 < args.sample_rate <= 1:
        raise UserError(f"--sample-rate must lie in (0, 1], got {args.sample_rate}")
    try:
        layout = load_layout(args.model)
    except ValueError as e:
        raise UserError(str(e)) from e
    start = time.perf_counter()
    results = {}
    for domain, texts in domain_texts(domains, args.corpus or []).items():
        t0 = time.perf_counter()
        results[domain] = corpus_traffic(layout, tokenize(layout, texts), args.sample_rate)
        _print(domain, results[domain], time.perf_counter() - t0)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    total = sum(t.tokens for t in results.values())
    print(f"total {total:,} tokens in {time.perf_counter() - start:.1f} s, peak RSS {rss:,.0f} MiB")
    if args.output:
        for p in write_outputs(results, args.output, args.format):
            print(f"wrote {p}", file=sys.stderr)


def add_traffic_command(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("traffic", help="rows read, collisions and hot-row cache curves of a corpus, per domain")
    s.add_argument("--model", default="deepseek-v4.1-flash", help=model_help())
    s.add_argument("--domains", default="plays,code", help="training-corpus domains: plays, code ('' for none)")
    s.add_argument("--corpus", nargs="*", help="user text files, scanned as the domain 'user'")
    s.add_argument("--sample-rate", type=float, help="LRU replay sample rate (default: about 4M reads a layer)")
    s.add_argument("-o", "--output", help="write OUTPUT-heads/-cache/-zipf.FORMAT and OUTPUT-cache.html")
    s.add_argument("--format", choices=["csv", "parquet"], default="csv")
    s.set_defaults(fn=cmd_traffic)


def cmd_scan(args) -> None:
    from engram_core.layout import load_layout

    from ..corpus.scan import check_ray_address, scan
    from ..corpus.scan_sample import parse_sample_tokens
    from ..corpus.shards import plan_shards

    try:
        if args.ray or args.ray_address:
            import importlib.util

            if importlib.util.find_spec("ray") is None:
                raise ScanError("--ray needs the optional extra: pip install 'engram-inspector[scale]'")
        if args.ray_address:
            check_ray_address(args.ray_address)
        if not 0 < args.sample_rate <= 1:
            raise ScanError(f"--sample-rate must lie in (0, 1], got {args.sample_rate}")
        if args.workers < 1:
            raise ScanError(f"--workers must be at least 1, got {args.workers}")
        if args.shard_bytes < 1:
            raise ScanError(f"--shard-bytes must be positive, got {args.shard_bytes}")
        sample = None if args.sample_tokens is None else parse_sample_tokens(args.sample_tokens)
        shards = plan_shards(args.paths, args.shard_bytes)  # no such path: before the model loads
        layout = load_layout(args.model)
    except ValueError as e:
        raise UserError(str(e)) from e
    executor = "ray" if (args.ray or args.ray_address) else "local"

    def progress(p: dict) -> None:
        rate = p["tokens"] / max(p["seconds"], 1e-9)
        state = "done before, skipped" if p["skipped"] else "done"
        print(
            f"shard {p['shards']}/{p['total_shards']} {state}; so far {p['documents']:,} documents, "
            f"{p['tokens']:,} tokens, {rate:,.0f} tokens/s",
            file=sys.stderr,
        )

    del shards
    s = scan(
        layout,
        args.paths,
        args.output,
        executor,
        args.ray_address,
        args.workers,
        args.sample_rate,
        progress,
        args.shard_bytes,
        sample,
    )
    print(
        f"{s['tokens']:,} tokens, {s['documents']:,} documents in {s['seconds']} s ({s['tokens_per_s']:,} tokens/s), "
        f"{s['skipped_files']} files skipped{_sampled(s)}, peak RSS {s['peak_rss_mib']:,} MiB: {args.output}"
    )


def _sampled(s: dict) -> str:
    return f" (a sample: {s['sample_tokens']:,} tokens asked for)" if s.get("sample_tokens") else ""


def print_scan(out_dir: str) -> None:
    """`engram stats OUT_DIR`: the per-layer summary of a finished scan."""
    try:
        s = json.loads((Path(out_dir) / "summary.json").read_text())
        import pyarrow.parquet as pq

        cache = pq.read_table(Path(out_dir) / "cache.parquet").to_pylist()
    except (OSError, ValueError) as e:
        raise UserError(f"{out_dir} is not a finished scan (summary.json, cache.parquet): {e}") from e
    print(
        f"{s['model']}: {s['tokens']:,} tokens, {s['documents']:,} documents, {s['shards']} shards, "
        f"{s['skipped_files']} files skipped ({s['executor']}, {s['seconds']} s){_sampled(s)}"
    )
    for layer in s["layers"]:
        heads = [h for h in s["heads"] if h["layer"] == layer]
        reads = sum(h["reads"] for h in heads)
        rate = sum(h["collision_rate"] * h["reads"] for h in heads) / max(reads, 1)
        curve = [c for c in cache if c["layer"] == layer and c["mib"] <= 1024]
        at = f"; 1 GiB cache: LRU {curve[-1]['lru']:.3f}, static {curve[-1]['static']:.3f}" if curve else ""
        print(
            f"layer {layer}: {sum(h['rows_hit'] for h in heads):,} rows hit, {reads:,} reads, "
            f"collision rate {rate:.4f}{at}"
        )


def add_scan_command(sub) -> None:
    s = sub.add_parser("scan", help="corpus statistics of a memory layout into OUT_DIR (in-process, or on Ray)")
    s.add_argument("paths", nargs="+", metavar="PATH", help="folders of .txt/.md/.py, .jsonl (text), .parquet (text)")
    s.add_argument("--model", default="deepseek-v4.1-flash", help=model_help())
    s.add_argument("-o", "--output", required=True, metavar="OUT_DIR")
    s.add_argument("--ray", action="store_true", help="run the map steps on a local Ray cluster")
    s.add_argument("--ray-address", help="join an existing Ray cluster at HOST:PORT")
    s.add_argument("--workers", type=int, default=2, help="concurrent Ray map tasks")
    s.add_argument("--sample-rate", type=float, default=DEFAULT_SAMPLE_RATE, help="LRU replay sample rate")
    s.add_argument("--shard-bytes", type=int, default=SHARD_BYTES, help="text bytes per shard of a folder")
    s.add_argument(
        "--sample-tokens",
        metavar="N",
        help="scan about N tokens spread evenly over the corpus (each shard keeps its first N/shards tokens)",
    )
    s.set_defaults(fn=cmd_scan)


def cmd_audit(args) -> None:
    import json as _json

    from engram_core.data import cache_dir
    from engram_core.layout import LayoutError, load_layout

    from ..corpus.audit import audit, worst_ngrams
    from .common import progress_bar

    try:
        layout = load_layout(args.model)
        state = None if args.no_resume else cache_dir() / "audit"
        if args.restart and state is not None:
            for f in state.glob("audit-*.pkl"):
                f.unlink()
        bar = progress_bar("auditing rows")
        report = audit(layout, args.tables, args.reference, args.scan, state, lambda d, t: bar(d, t, f"{d:,} rows"))
    except (LayoutError, ValueError) as e:
        raise UserError(str(e)) from e
    for f in report.findings:
        print(f.line())
    for layer, s in sorted(report.layers.items()):
        for h in s["heads"]:
            err = ""
            if h["mean_error"] is not None:
                err = f", error mean {h['mean_error']:.4f} max {h['max_error']:.4f}"
                if h["read_weighted_error"] is not None:
                    err += f", read-weighted {h['read_weighted_error']:.4f}"
            head = f"  layer {layer} head {h['order']}:{h['head']}"
            print(f"{head}: {h['rows']:,} rows, median norm {h['median_norm']:.4g}{err}")
        grams = worst_ngrams(args.scan, layer, [w["row"] for w in s["worst"]]) if args.scan and s["worst"] else {}
        for w in s["worst"]:
            reads = f", {w['reads']:,} reads" if args.scan else ""
            ngrams = ""
            if w["row"] in grams:
                n, kept = grams[w["row"]]
                ngrams = f", {n} N-gram{'s' if n != 1 else ''}" + (f": {kept[:3]}" if kept else "")
                w["ngrams"] = kept
            print(f"  layer {layer} worst row {w['row']} (head {w['head']}): error {w['error']:.4f}{reads}{ngrams}")
    resumed = f" (resumed at row {report.resumed_from:,})" if report.resumed_from else ""
    verdict = f"{len(report.findings)} findings" if report.broken else "no findings"
    print(f"{report.layout}: {report.rows:,} rows audited{resumed}, {verdict}")
    if args.json:
        Path(args.json).write_text(
            _json.dumps({"findings": [f.__dict__ for f in report.findings], "layers": report.layers}, indent=1)
        )
    if report.broken:
        raise SystemExit(1)


def add_audit_command(sub) -> None:
    s = sub.add_parser("audit", help="check a released table row by row: NaN, zero rows, bad scales, counts, norms")
    s.add_argument("--tables", required=True, help="folder (or file) of safetensors shards holding the tables")
    s.add_argument("--model", default="deepseek-v4.1-flash", help=model_help())
    s.add_argument("--reference", help="another copy of the same tables (say the bf16 original): per-row error")
    s.add_argument("--scan", metavar="OUT_DIR", help="weight the errors by how often a scanned corpus reads each row")
    s.add_argument("--json", metavar="FILE", help="also write the findings and per-head figures as JSON")
    s.add_argument("--restart", action="store_true", help="forget a saved partial pass and start over")
    s.add_argument("--no-resume", action="store_true", help="neither resume nor save the pass's state")
    s.set_defaults(fn=cmd_audit)
