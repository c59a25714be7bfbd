"""`engram address`: the table rows a text reads under any memory layout (docs/addressing.md).

With `--tables DIR` it also reads those rows from safetensors shards (memory-mapped)
and reports their norms, the cosine among them and, with `--neighbours K`, their
nearest rows among the rows a corpus sample reads.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from engram_core.cli import DEFAULT_CHECKPOINT, UserError

MAX_COSINE_ROWS = 512  # distinct rows per layer in the cosine matrix; beyond it the JSON grows quadratically


def _ids_or_text(args: argparse.Namespace, layout) -> list[int]:
    from engram_core.addressing import parse_ids

    given = [x is not None for x in (args.text, args.file, args.ids)]
    if sum(given) != 1:
        raise UserError("give exactly one of TEXT, --file F or --ids 0,671,...")
    if args.ids is not None:
        return parse_ids(args.ids)
    if args.file is not None:
        try:
            text = Path(args.file).read_text(encoding="utf-8", errors="replace")
        except OSError as e:
            raise UserError(f"cannot read {args.file}: {e.strerror}") from e
    else:
        text = args.text
    return layout.encode(text).tolist()


def _sample_rows(layout, files: list[str], tokens: int) -> dict[int, object]:
    """Global rows read by the first `tokens` tokens of the sample files, per layer."""
    import numpy as np

    from engram_core.addressing import local_rows, look_back

    texts = []
    for f in files:
        try:
            texts.append(Path(f).read_text(encoding="utf-8", errors="replace"))
        except OSError as e:
            raise UserError(f"cannot read {f}: {e.strerror}") from e
    ids = np.concatenate([layout.encode(t) for t in texts]) if texts else np.zeros(0, np.int64)
    ids = ids[:tokens]
    cids = layout.compress(ids)
    local = local_rows(cids, look_back(len(cids)), layout)
    return {layer: (local[i] + layout.offsets[layer]).reshape(-1) for i, layer in enumerate(layout.layers)}


def _table_views(args, layout, result: dict, addresses) -> None:
    import numpy as np

    from engram_core.tables import open_tables

    from .table_views import cosine_matrix, neighbours, row_norms

    tables = open_tables(args.tables, layout)
    rows = addresses.rows  # (L, T, H)
    views: dict = {"norms": {}, "cosine": {}, "neighbours": {}, "missing_layers": []}
    pool = _sample_rows(layout, args.corpus or [], args.sample_tokens) if args.neighbours else {}
    for i, layer in enumerate(layout.layers):
        if layer not in tables:
            views["missing_layers"].append(layer)
            continue
        t = tables[layer]
        views["norms"][str(layer)] = row_norms(t, rows[i].reshape(-1)).reshape(rows[i].shape).round(6).tolist()
        distinct = np.unique(rows[i])[:MAX_COSINE_ROWS]
        views["cosine"][str(layer)] = {
            "rows": distinct.tolist(),
            "matrix": cosine_matrix(t, distinct).round(6).tolist(),
        }
        if args.neighbours:
            found = neighbours(t, distinct, pool[layer], args.neighbours)
            views["neighbours"][str(layer)] = {str(r): nb for r, nb in zip(distinct.tolist(), found, strict=True)}
    result["tables"] = views


def cmd_address(args: argparse.Namespace) -> None:
    from engram_core.addressing import address, parse_ids
    from engram_core.layout import load_layout

    from .export import write_table

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
                _table_views(args, layout, result, addresses)
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
    s.add_argument("--model", default=str(DEFAULT_CHECKPOINT), help="deepseek-v4.1-flash or a checkpoint folder")
    s.add_argument("--dead-ids", help="raw ids of dead tokens (image placeholders...) that block N-grams")
    s.add_argument("--format", help="json, csv or parquet (default: from -o's suffix, else json)")
    s.add_argument("-o", "--output", help="file to write (json goes to stdout without -o)")
    s.add_argument("--tables", help="folder (or file) of safetensors table shards: adds row norms and cosine")
    s.add_argument("--neighbours", type=int, default=0, help="K nearest rows among those a corpus sample reads")
    s.add_argument("--corpus", nargs="*", help="text files whose rows form the neighbour pool")
    s.add_argument("--sample-tokens", type=int, default=200_000, help="tokens of the corpus sample")
    s.set_defaults(fn=cmd_address)
