"""`engram stats`, `neighbours`, `project` and `row`: what a checkpoint's memory holds (engram_inspect.memory)."""

from __future__ import annotations

import argparse
import sys

from engram_core.cli import DEFAULT_CHECKPOINT, UserError

from .common import add_ablation_flags, checkpoint, fmt, progress_bar, read_text_file, with_ablation


def cmd_stats(args: argparse.Namespace) -> None:
    from engram_core.tokenizer import encode

    from ..memory.collisions import load_or_build
    from ..memory.health import gate_weighted_hits, health_table
    from ..text.export import write_table

    if args.scan_dir:
        from .corpus import print_scan

        return print_scan(args.scan_dir)
    ck = checkpoint(args)
    if ck.model.cfg.memory is None:
        raise UserError("this checkpoint has no Engram memory")
    streams = None
    if args.corpus:
        import numpy as np

        streams = [np.asarray(encode(ck.tokenizer, read_text_file(f))[0], dtype=np.int64) for f in args.corpus]
        if not any(len(s) for s in streams):
            raise UserError("the corpus files hold no text")
    index = load_or_build(ck, streams, progress=progress_bar("collision index"))
    gate_hits = None
    if args.gate_tokens > 0:
        gate_streams = streams if streams is not None else _val_streams(ck)
        gate_hits = gate_weighted_hits(ck, gate_streams, max_tokens=args.gate_tokens)
    health = health_table(index, gate_hits)
    heads = {(r["layer"], r["order"], r["head"]): r for r in index.head_table()}
    cols = ["layer", "order", "head", "rows", "usage", "kl_uniform", "gini", "rows_for_50", "rows_for_90"]
    cols += ["rows_for_99", "dead_rows"]
    print(" ".join(f"{c:>11}" for c in [*cols, "collisions"]))
    for r in health:
        rate = heads[(r["layer"], r["order"], r["head"])]["collision_rate"]
        print(" ".join(f"{fmt(r[c]):>11}" for c in cols) + f" {rate:11.3f}")
    if args.output:
        for name, rows in (("health", health), ("collisions", index.head_table())):
            path = write_table(rows, f"{args.output}-{name}.{args.format}")
            print(f"wrote {path}", file=sys.stderr)


def _val_streams(ck):
    from ..memory.mean_gate import held_out_streams

    return held_out_streams(ck)


def _labels(ck):
    """The training corpus's collision index, or None (with a note) where that corpus is not this model's."""
    from ..memory.collisions import load_or_build

    try:
        return load_or_build(ck, progress=progress_bar("collision index"))
    except ValueError as e:
        print(f"note: neighbours shown without their corpus N-grams ({e})", file=sys.stderr)
        return None


def cmd_neighbours(args: argparse.Namespace) -> None:
    from ..memory.collisions import ngram_text
    from ..memory.neighbours import ngram_neighbours, row_neighbours
    from ..memory.rows import RowAddress, RowLayout

    ck = checkpoint(args)
    if ck.model.cfg.memory is None:
        raise UserError("this checkpoint has no Engram memory")
    layer = ck.model.engram_layers[0] if args.layer is None else args.layer
    layout = RowLayout.of(ck)
    try:
        if args.row:
            address = RowAddress.parse(args.row)  # one line naming L:N:K:R when malformed
            layout.check(address)
        elif not args.ngram:
            raise UserError("give an NGRAM text or --row L:N:K:R")
        else:
            layout.check(RowAddress(layer, args.order, args.head or 0, 0))
        labels = _labels(ck)
        if args.row:
            results = [(address, row_neighbours(ck, address, args.k, args.space, labels), None)]
        else:
            found = ngram_neighbours(ck, args.ngram, layer, args.order, args.head, args.k, args.space, labels)
            results = [(r.address, r.neighbours, r.ngram) for r in found]
    except ValueError as e:
        raise UserError(str(e)) from e
    where = "value space, any head and layer" if args.space == "value" else "raw rows of the same head"
    for address, neighbours, ngram in results:
        seen = f" (seen {labels.count(ngram)}x)" if labels is not None and ngram else ""
        what = f"{ngram_text(ck, ngram)!r}{seen} reads " if ngram else ""
        print(f"{what}layer {address.layer} order {address.order} head {address.head} row {address.row} ({where}):")
        for nb in neighbours:
            a = nb.address
            grams = ", ".join(f"{ngram_text(ck, g)!r} x{c}" for g, c in nb.ngrams[:3]) or "(no corpus N-gram)"
            print(f"  {nb.similarity:6.3f}  L{a.layer} n{a.order} h{a.head} row {a.row:>6}  {grams}")


def cmd_project(args: argparse.Namespace) -> None:
    from ..memory.projection import compute_projection

    ck = checkpoint(args)
    if ck.model.cfg.memory is None:
        raise UserError("this checkpoint has no Engram memory")
    try:
        if args.space == "value":
            from ..memory.valuemap import value_projection

            p = value_projection(ck, args.method, progress=progress_bar(args.method), recompute=True)
        else:
            p = compute_projection(ck, args.method, args.scope, progress=progress_bar(args.method), recompute=True)
    except ValueError as e:
        raise UserError(str(e)) from e
    print(f"{args.method} of {len(p.rows):,} rows ({p.scope}) cached beside the checkpoint")


def _print_page(ck, page) -> None:
    a = page.address
    print(f"row {a.layer}:{a.order}:{a.head}:{a.row} (layer {a.layer}, order {a.order}, head {a.head}, row {a.row})")
    crowd = " crowded: no N-gram holds half the hits" if page.crowded else ""
    share = "" if page.hits == 0 else f", top N-gram {page.top_share:.0%} of them"
    print(f"corpus N-grams: {len(page.ngrams):,} distinct, {page.hits:,} hits{share}.{crowd}")
    for n in page.ngrams[:10]:
        print(f"  {n.count:>8,}  {n.text!r}  (plays {n.plays:,}, code {n.code:,})")
    if len(page.ngrams) > 10:
        print(f"  ... and {len(page.ngrams) - 10:,} more (--json lists them all)")
    print("writes (direct path: value vector -> final norm -> unembedding; conv and later layers ignored):")
    print("  promotes:   " + "  ".join(f"{t.text!r} {t.logit:+.2f}" for t in page.promoted))
    print("  suppresses: " + "  ".join(f"{t.text!r} {t.logit:+.2f}" for t in page.suppressed))
    if page.reads:
        print(f"gate: read at {page.reads:,} corpus-sample positions, mean alpha {page.mean_alpha:.3f}, "
              f"histogram over 0..1: {page.alpha_hist}")  # fmt: skip
    else:
        print("gate: no corpus-sample position reads this row")
    for title, ctxs in (("highest alpha", page.top_contexts), ("lowest alpha", page.bottom_contexts)):
        if ctxs:
            print(f"  {title}:")
        for c in ctxs:
            print(f"    {c.alpha:.3f}  {c.before!r} [{c.token!r}] {c.after!r}  ({c.stream} @ {c.offset:,})")
    for title, ns in (("nearest rows in value space", page.value_neighbours),
                      ("nearest rows of the same head (raw cosine)", page.head_neighbours)):  # fmt: skip
        print(f"{title}: " + ", ".join(f"{n.address} {n.similarity:.3f} {n.top_ngram!r}" for n in ns[:5]))
    if page.delta_estimate_reads:
        print(f"removal cost (gradient x input estimate, {page.delta_estimate_reads} reads): "
              f"mean delta log p {page.delta_estimate:+.4f} nats over each read's window")  # fmt: skip
    if page.delta_exact is not None:
        print(f"removal cost (exact, {page.delta_exact_reads} reads, {_exact_mode(page)}): mean delta log p "
              f"{page.delta_exact:+.4f} over the window, {page.delta_exact_own:+.4f} at the read's own "
              "prediction")  # fmt: skip


def _exact_mode(page) -> str:
    """How the exact cost replaced each read, in words."""
    if page.delta_exact_mode == "resample":
        return f"each read resampled, mean of {page.delta_exact_samples} runs from seed {page.delta_exact_seed}"
    return "each read replaced by its head's mean row" if page.delta_exact_mode == "mean" else "each read zeroed"


def cmd_row(args: argparse.Namespace) -> None:
    import json

    from ..memory.rowpage import RowPages, parse_row, row_page
    from ..memory.rows import RowLayout

    try:
        address = parse_row(args.row)
        ck = checkpoint(args)
        RowLayout.of(ck).check(address)  # a bad address fails before the slow parts load
        how = with_ablation("none", args)  # a bad --samples or --seed fails before the slow parts load
        pages = RowPages.load(ck, progress=progress_bar("row statistics"))
        if args.exact and how.mode != "zero":
            from ..memory.ablation import install

            install(ck, progress=progress_bar("row sources"))
        page = row_page(ck, address, pages, exact=args.exact, mode=how.mode, samples=how.samples, seed=how.seed)
    except ValueError as e:
        raise UserError(str(e)) from e
    if args.json:
        print(json.dumps(page.to_dict(), ensure_ascii=False))
    else:
        _print_page(ck, page)


def add_memory_commands(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("stats", help="memory health and collision rates of every table")
    s.add_argument("scan_dir", nargs="?", metavar="OUT_DIR", help="print a finished `engram scan` instead")
    s.add_argument("--corpus", nargs="*", help="text files to index instead of the training corpus")
    s.add_argument("--gate-tokens", type=int, default=0, help="also weight hits by the gate over this many tokens")
    s.add_argument("-o", "--output", help="write OUTPUT-health.FORMAT and OUTPUT-collisions.FORMAT")
    s.add_argument("--format", choices=["csv", "parquet"], default="csv")
    s.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT))
    s.set_defaults(fn=cmd_stats)
    s = sub.add_parser("neighbours", help="nearest memory rows of an N-gram's rows (or of one row)")
    s.add_argument("ngram", nargs="?", help="text whose last tokens form the N-gram")
    s.add_argument("--layer", type=int, help="Engram layer (default: the first)")
    s.add_argument("--order", type=int, default=2)
    s.add_argument("--head", type=int, help="one head (default: every head of the order)")
    s.add_argument("--row", help="a row instead of an N-gram: L:N:K:R")
    s.add_argument("-k", type=int, default=10)
    s.add_argument(
        "--space",
        choices=["value", "raw"],
        default="value",
        help="value-space cosine over every head and layer (default), or raw-row cosine within the row's own head",
    )
    s.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT))
    s.set_defaults(fn=cmd_neighbours)
    s = sub.add_parser("project", help="recompute the PCA or UMAP map of memory rows (cached)")
    s.add_argument("--method", choices=["umap", "pca"], default="umap")
    s.add_argument("--scope", default="pooled", help="pooled, layer1, or layer1-order2-head0 (raw space only)")
    s.add_argument(
        "--space",
        choices=["raw", "value"],
        default="raw",
        help="raw rows, or rows through their head's W_V slice (one map for every layer)",
    )
    s.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT))
    s.set_defaults(fn=cmd_project)
    s = sub.add_parser("row", help="the page of one memory row: its N-grams, what it writes, its gates, its cost")
    s.add_argument("row", help="L:N:K:R (layer, order, head, row)")
    s.add_argument("--json", action="store_true", help="print the page as JSON")
    s.add_argument("--exact", action="store_true", help="also measure the exact removal cost (seconds)")
    add_ablation_flags(s)  # with --exact: what replaces each removed read
    s.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT))
    s.set_defaults(fn=cmd_row)
