"""The `engram` command's analysis subcommands: trace, stats, neighbours, project, row, attribute.

Bad input (missing file, empty text, unknown format, a checkpoint that does not
load) gets one clear line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from engram_core.cli import DEFAULT_CHECKPOINT, UserError
from engram_core.cli import main as core_main


def _checkpoint(args: argparse.Namespace):
    from engram_core import load_checkpoint

    return load_checkpoint(args.checkpoint)


def _read_text(args: argparse.Namespace) -> str:
    if args.file is not None:
        try:
            return Path(args.file).read_text(encoding="utf-8", errors="replace")
        except OSError as e:
            raise UserError(f"cannot read {args.file}: {e.strerror}") from e
    if args.text is None:
        raise UserError("give a TEXT or --file F")
    return args.text


def cmd_trace(args: argparse.Namespace) -> None:
    from .capture import capture
    from .export import FORMATS, to_json, write

    fmt = args.format or (Path(args.output).suffix.lstrip(".") if args.output else "json")
    if fmt not in FORMATS:
        raise UserError(f"unknown format {fmt!r}: choose one of {', '.join(FORMATS)}")
    if fmt != "json" and not args.output:
        raise UserError(f"--format {fmt} writes a binary or tabular file: give -o OUT")
    text = _read_text(args)
    try:
        mask = _with_ablation(args.knockout or "all", args)
        ck = _checkpoint(args)
        mask.validate(ck.model.cfg)  # before any forward pass
        trace = capture(ck, text, mask=mask, top_k=args.top_k)
    except ValueError as e:
        raise UserError(str(e)) from e
    if args.output:
        write(trace, args.output, fmt)
        print(f"wrote {args.output} ({fmt}, {trace.n_tokens} tokens)", file=sys.stderr)
    else:
        sys.stdout.write(to_json(trace) + "\n")


def _with_ablation(spec: str, args: argparse.Namespace):
    """The mask `spec` with --ablation/--samples/--seed joined to its items (a flag and an item that
    disagree are refused: ValueError)."""
    from engram_core.knockout import parse_knockout

    return parse_knockout(spec, mode=args.ablation, samples=args.samples, seed=args.seed)


def _add_ablation_flags(s: argparse.ArgumentParser) -> None:
    s.add_argument(
        "--ablation",
        choices=["zero", "mean", "resample"],
        help="what replaces removed rows: zeros (default), the head's mean row, another corpus N-gram's row",
    )
    s.add_argument("--samples", type=int, help="resample: runs averaged (default 1)")
    s.add_argument("--seed", type=int, help="resample: seed of the first run (default 0)")


def _progress(desc: str):
    """A progress(done, total, message) callback drawing a tqdm bar on stderr, from its first call."""
    from tqdm import tqdm

    bars: list = []

    def update(done: int, total: int, message: str) -> None:
        if not bars:
            bars.append(tqdm(desc=desc, total=max(total, 1), leave=False, dynamic_ncols=True))
        bar = bars[0]
        bar.total = max(total, 1)
        bar.n = done
        bar.set_postfix_str(message[:60])
        bar.refresh()
        if done >= total:
            bar.close()

    return update


def _fmt(x: float) -> str:
    return f"{x:.3f}" if isinstance(x, float) else str(x)


def cmd_stats(args: argparse.Namespace) -> None:
    from engram_core.tokenizer import encode

    from .collisions import load_or_build
    from .export import write_table
    from .health import gate_weighted_hits, health_table

    if args.scan_dir:
        from .scan import print_scan

        return print_scan(args.scan_dir)
    ck = _checkpoint(args)
    if ck.model.cfg.memory is None:
        raise UserError("this checkpoint has no Engram memory")
    streams = None
    if args.corpus:
        import numpy as np

        streams = [np.asarray(encode(ck.tokenizer, _read_text_file(f))[0], dtype=np.int64) for f in args.corpus]
        if not any(len(s) for s in streams):
            raise UserError("the corpus files hold no text")
    index = load_or_build(ck, streams, progress=_progress("collision index"))
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
        print(" ".join(f"{_fmt(r[c]):>11}" for c in cols) + f" {rate:11.3f}")
    if args.output:
        for name, rows in (("health", health), ("collisions", index.head_table())):
            path = write_table(rows, f"{args.output}-{name}.{args.format}")
            print(f"wrote {path}", file=sys.stderr)


def _read_text_file(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror}") from e


def _val_streams(ck):
    from .mean_gate import held_out_streams

    return held_out_streams(ck)


def _labels(ck):
    """The training corpus's collision index, or None (with a note) where that corpus is not this model's."""
    from .collisions import load_or_build

    try:
        return load_or_build(ck, progress=_progress("collision index"))
    except ValueError as e:
        print(f"note: neighbours shown without their corpus N-grams ({e})", file=sys.stderr)
        return None


def cmd_neighbours(args: argparse.Namespace) -> None:
    from .collisions import ngram_text
    from .neighbours import ngram_neighbours, row_neighbours
    from .rows import RowAddress, RowLayout

    ck = _checkpoint(args)
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
    from .projection import compute_projection

    ck = _checkpoint(args)
    if ck.model.cfg.memory is None:
        raise UserError("this checkpoint has no Engram memory")
    try:
        if args.space == "value":
            from .valuemap import value_projection

            p = value_projection(ck, args.method, progress=_progress(args.method), recompute=True)
        else:
            p = compute_projection(ck, args.method, args.scope, progress=_progress(args.method), recompute=True)
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

    from .rowpage import RowPages, parse_row, row_page
    from .rows import RowLayout

    try:
        address = parse_row(args.row)
        ck = _checkpoint(args)
        RowLayout.of(ck).check(address)  # a bad address fails before the slow parts load
        how = _with_ablation("none", args)  # a bad --samples or --seed fails before the slow parts load
        pages = RowPages.load(ck, progress=_progress("row statistics"))
        if args.exact and how.mode != "zero":
            from .ablation import install

            install(ck, progress=_progress("row sources"))
        page = row_page(ck, address, pages, exact=args.exact, mode=how.mode, samples=how.samples, seed=how.seed)
    except ValueError as e:
        raise UserError(str(e)) from e
    if args.json:
        print(json.dumps(page.to_dict(), ensure_ascii=False))
    else:
        _print_page(ck, page)


def cmd_attribute(args: argparse.Namespace) -> None:
    import json

    from .attribution import attribute

    text = _read_text(args)
    try:
        how = _with_ablation("none", args)
        records = attribute(
            _checkpoint(args), text, args.position, args.mode, how.mode, samples=how.samples, seed=how.seed
        )
    except ValueError as e:
        raise UserError(str(e)) from e
    if args.json:
        sys.stdout.write(json.dumps(records, ensure_ascii=False) + "\n")
        return
    shown = records if args.top is None else records[: args.top]
    print(f"{'delta logp':>10} layer order head  pos    row  ngram")
    for r in shown:
        print(
            f"{r['delta_logprob']:+10.4f} {r['layer']:>5} {r['order']:>5} {r['head']:>4} "
            f"{r['position_read']:>4} {r['row']:>6}  {r['ngram']!r}"
        )


def add_commands(sub: argparse._SubParsersAction) -> None:
    from .address_cli import add_address_command
    from .scan import add_scan_command
    from .traffic_cli import add_traffic_command

    add_address_command(sub)
    add_traffic_command(sub)
    add_scan_command(sub)
    s = sub.add_parser("trace", help="capture what the memory does for a text and export it")
    s.add_argument("text", nargs="?", help="the text (or use --file)")
    s.add_argument("--file", help="read the text from this file")
    s.add_argument("--format", help="json, csv, parquet or npz (default: from -o's suffix, else json)")
    s.add_argument("-o", "--output", help="file to write (json goes to stdout without -o)")
    s.add_argument("--knockout", help="mask to compare with, e.g. all, layer=1, order=3, head=1:2:0, row=1:2:0:99")
    s.add_argument("--top-k", type=int, default=5)
    _add_ablation_flags(s)
    s.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT))
    s.set_defaults(fn=cmd_trace)
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
    _add_ablation_flags(s)  # with --exact: what replaces each removed read
    s.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT))
    s.set_defaults(fn=cmd_row)
    s = sub.add_parser("attribute", help="which memory reads carried the prediction at one position")
    s.add_argument("text", nargs="?", help="the text (or use --file)")
    s.add_argument("--file", help="read the text from this file")
    s.add_argument("--position", type=int, required=True, help="token index P: attributes the prediction of P+1")
    s.add_argument(
        "--mode",
        choices=["exact", "approx"],
        default="exact",
        help="removals in the conv's reach, or gradient x input for every read",
    )
    s.add_argument("--top", type=int, help="print only the strongest N reads (the JSON has all)")
    s.add_argument("--json", action="store_true", help="print the records as JSON")
    _add_ablation_flags(s)
    s.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT))
    s.set_defaults(fn=cmd_attribute)


def main(argv: list[str] | None = None) -> int:
    return core_main(argv, adders=(add_commands,))


if __name__ == "__main__":
    sys.exit(main())
