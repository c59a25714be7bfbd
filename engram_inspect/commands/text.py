"""`engram trace` and `engram attribute`: one text, what the memory did for it (engram_inspect.text)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from engram_core.cli import DEFAULT_CHECKPOINT, UserError

from .common import add_ablation_flags, checkpoint, read_text, with_ablation


def cmd_trace(args: argparse.Namespace) -> None:
    from ..text.capture import capture
    from ..text.export import FORMATS, to_json, write

    fmt = args.format or (Path(args.output).suffix.lstrip(".") if args.output else "json")
    if fmt not in FORMATS:
        raise UserError(f"unknown format {fmt!r}: choose one of {', '.join(FORMATS)}")
    if fmt != "json" and not args.output:
        raise UserError(f"--format {fmt} writes a binary or tabular file: give -o OUT")
    text = read_text(args)
    try:
        mask = with_ablation(args.knockout or "all", args)
        ck = checkpoint(args)
        mask.validate(ck.model.cfg)  # before any forward pass
        off = None
        if args.tables_from_disk:
            from ..serving.offload import offload

            off = offload(ck, args.cache_mib, args.cache_policy, args.ways, prefetch=not args.no_prefetch)
        try:
            trace = capture(ck, text, mask=mask, top_k=args.top_k)
        finally:
            if off is not None:
                off.close()
    except ValueError as e:
        raise UserError(str(e)) from e
    if off is not None:
        print(off.summary(), file=sys.stderr)
    if args.output:
        write(trace, args.output, fmt)
        print(f"wrote {args.output} ({fmt}, {trace.n_tokens} tokens)", file=sys.stderr)
    else:
        sys.stdout.write(to_json(trace) + "\n")


def cmd_attribute(args: argparse.Namespace) -> None:
    import json

    from ..text.attribution import attribute

    text = read_text(args)
    try:
        how = with_ablation("none", args)
        records = attribute(
            checkpoint(args), text, args.position, args.mode, how.mode, samples=how.samples, seed=how.seed
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


def add_text_commands(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("trace", help="capture what the memory does for a text and export it")
    s.add_argument("text", nargs="?", help="the text (or use --file)")
    s.add_argument("--file", help="read the text from this file")
    s.add_argument("--format", help="json, csv, parquet or npz (default: from -o's suffix, else json)")
    s.add_argument("-o", "--output", help="file to write (json goes to stdout without -o)")
    s.add_argument("--knockout", help="mask to compare with, e.g. all, layer=1, order=3, head=1:2:0, row=1:2:0:99")
    s.add_argument("--top-k", type=int, default=5)
    add_ablation_flags(s)
    s.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT))
    s.add_argument(
        "--tables-from-disk",
        action="store_true",
        help="read the Engram tables from the memory-mapped checkpoint through a row cache (reports hits and waits)",
    )
    s.add_argument("--cache-mib", type=float, default=64.0, help="with --tables-from-disk: cache per layer, MiB")
    s.add_argument("--cache-policy", choices=["lru", "clock", "set-assoc"], default="lru")
    s.add_argument("--ways", type=int, default=16, help="set-assoc: ways per set")
    s.add_argument("--no-prefetch", action="store_true", help="read rows when each layer asks, not from the ids ahead")
    s.set_defaults(fn=cmd_trace)
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
    add_ablation_flags(s)
    s.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT))
    s.set_defaults(fn=cmd_attribute)
