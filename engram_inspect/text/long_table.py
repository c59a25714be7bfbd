"""The long table of a `Trace`, as CSV or Parquet: one row per position x layer x order x head.

Columns and their order are `columns(dims)`; a CSV keeps the schema and header in a
`.json` sidecar beside it (its first line stays the column names), a Parquet file in
its key-value metadata. Both read back to an equal Trace, bit for bit.

T tokens, L Engram layers, O orders (n_ord), H heads per layer, M branches, K top-k,
R = T x L x H rows.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from engram_core.hashing import head_address, head_index

from .capture import SCHEMA, Trace
from .trace_schema import ARRAY_FIELDS, PathLike, SchemaError, build_trace, check_schema, dims, text_grid, trace_meta

_PQ_SCHEMA, _PQ_HEADER = b"engram_trace.schema", b"engram_trace.header"  # Parquet key-value metadata

# ---- the long table shared by CSV and Parquet: one row per position x layer x order x head


def _columns(d: dict[str, int]) -> dict[str, tuple[str, int]]:
    """Column name -> (kind, list width), in file order. Lists are per position (or per N-gram)."""
    one = lambda names, kind: {n: (kind, 1) for n in names}
    M = d["branches"]
    return {
        **one(("position",), "int"),
        **one(("token",), "str"),
        **one(("token_id", "char_start", "char_end", "compressed_id", "layer", "order", "head"), "int"),
        **one(("ngram_text",), "str"),
        "ngram_ids": ("ints", d["ngram_width"]),
        **one(("row",), "int"),
        **one(["gate_mean"] + [f"gate_b{m}" for m in range(M)] + [f"gate_score_b{m}" for m in range(M)], "float"),
        **one(("out_norm", "logprob_next", "masked_logprob_next", "kl"), "float"),
        **{
            f"{p}topk_{s}": (k, d["top_k"])
            for p in ("", "masked_")
            for s, k in [("ids", "ints"), ("logprob", "floats"), ("text", "strs")]
        },
        "lens_kl_on": ("floats", d["blocks"]),
        "lens_kl_off": ("floats", d["blocks"]),
    }


def _long_table(trace: Trace) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The header (metadata, dtypes) and the table's columns, position-major."""
    check_schema(trace.schema, "this trace")
    d = dims(trace)
    T, L, H, hpn = d["tokens"], d["layers"], d["heads"], trace.heads_per_ngram
    if T * L * H == 0:
        raise ValueError("a trace with no tokens or no memory heads has no table rows; write json or npz")
    t = np.repeat(np.arange(T), L * H)
    lay = np.tile(np.repeat(np.arange(L), H), T)
    hi = np.tile(np.arange(H), T * L)  # positions on the head axis of hash_rows
    order, head = head_address(hi, hpn)
    o = _lookup(order, list(trace.orders), "order")  # index into the trace's orders
    cols = {
        "position": t,
        "token": text_grid(trace.tokens, (T,))[t],
        "token_id": trace.token_ids[t],
        "char_start": trace.offsets[t, 0],
        "char_end": trace.offsets[t, 1],
        "compressed_id": trace.compressed_ids[t],
        "layer": np.asarray(trace.layers, dtype=np.int64)[lay],
        "order": order,
        "head": head,
        "ngram_text": text_grid(trace.ngram_text, (d["orders"], T))[o, t],
        "ngram_ids": trace.ngram_ids[o, t],
        "row": trace.hash_rows[lay, t, hi],
    }
    with np.errstate(invalid="ignore", over="ignore"):  # a mean of arbitrary floats may overflow: fine
        cols["gate_mean"] = trace.gate.mean(-1)[lay, t]  # derived for convenience; readers ignore it
    for name in ("gate", "gate_score"):
        cols.update({f"{name}_b{m}": getattr(trace, name)[lay, t, m] for m in range(d["branches"])})
    cols["out_norm"] = trace.out_norm[lay, t]
    for name in ("logprob_next", "masked_logprob_next", "kl", "topk_ids", "topk_logprob"):
        cols[name] = getattr(trace, name)[t]
    cols["topk_text"] = text_grid(trace.topk_text, (T, d["top_k"]))[t]
    for name in ("masked_topk_ids", "masked_topk_logprob"):
        cols[name] = getattr(trace, name)[t]
    cols["masked_topk_text"] = text_grid(trace.masked_topk_text, (T, d["top_k"]))[t]
    cols["lens_kl_on"], cols["lens_kl_off"] = trace.lens_kl_on.T[t], trace.lens_kl_off.T[t]
    assert list(cols) == list(_columns(d)), "writer and reader disagree on the columns"
    header = {"meta": trace_meta(trace), "dtypes": {n: getattr(trace, n).dtype.name for n in ARRAY_FIELDS}}
    return header, cols


def _from_long_table(schema: str, header: dict[str, Any], cols: dict[str, np.ndarray]) -> Trace:
    """Rebuild a Trace from the table in any row order; repeated values come from the first row."""
    meta = header["meta"]
    d, hpn = meta["dims"], int(meta["heads_per_ngram"])
    T, L, n_ord, H = d["tokens"], d["layers"], d["orders"], d["heads"]
    lay = _lookup(cols["layer"], meta["layers"], "layer")
    t = cols["position"].astype(np.int64)
    head = cols["head"].astype(np.int64)
    ok = (t >= 0) & (t < T) & (head >= 0) & (head < hpn)
    _lookup(cols["order"], meta["orders"], "order")  # a ValueError naming an order the trace lacks
    hi = head_index(cols["order"].astype(np.int64), head, hpn)
    cell = np.where(ok, (t * L + lay) * H + hi, -1)
    if (cell < 0).any() or not (np.bincount(cell, minlength=T * L * H) == 1).all():
        raise ValueError(f"the table must hold exactly one row per (position, layer, order, head): {T}x{L}x{H}")
    rows = np.argsort(cell, kind="stable")
    c = {n: v[rows] for n, v in cols.items()}  # now position-major, as written
    per_t = lambda n: c[n].reshape(T, L * H, *c[n].shape[1:])[:, 0]
    per_lt = lambda n: c[n].reshape(T, L, H)[:, :, 0].T
    per_ot = lambda n: c[n].reshape(T, L, n_ord, hpn, *c[n].shape[1:])[:, 0, :, 0].swapaxes(0, 1)
    arrays = {
        "token_ids": per_t("token_id"),
        "offsets": np.stack([per_t("char_start"), per_t("char_end")], axis=1),
        "compressed_ids": per_t("compressed_id"),
        "ngram_ids": per_ot("ngram_ids"),
        "hash_rows": c["row"].reshape(T, L, H).swapaxes(0, 1),
        "out_norm": per_lt("out_norm"),
        "lens_kl_on": per_t("lens_kl_on").T,
        "lens_kl_off": per_t("lens_kl_off").T,
    }
    for name in ("gate", "gate_score"):
        branches = [per_lt(f"{name}_b{m}") for m in range(d["branches"])]
        arrays[name] = np.stack(branches, axis=-1) if branches else np.empty((L, T, 0))
    for name in ARRAY_FIELDS:
        per_position = arrays[name] if name in arrays else per_t(name)
        arrays[name] = np.array(per_position, dtype=header["dtypes"][name], order="C")
    texts = {"tokens": per_t("token").tolist(), "ngram_text": per_ot("ngram_text").tolist()}
    texts.update({n: per_t(n).tolist() for n in ("topk_text", "masked_topk_text")})
    return build_trace(schema, meta, texts, arrays)


def _lookup(values: np.ndarray, keys: list[int], what: str) -> np.ndarray:
    """Index of each value in `keys`, or a ValueError naming the first stranger."""
    index = {int(k): i for i, k in enumerate(keys)}
    out = np.array([index.get(int(v), -1) for v in np.unique(values)])
    if (out < 0).any():
        raise ValueError(f"the table has {what} {np.unique(values)[out < 0][0]}, not among the trace's {keys}")
    return out[np.searchsorted(np.unique(values), values)]


def _require_columns(names: list[str], header: dict[str, Any]) -> dict[str, tuple[str, int]]:
    try:
        wanted = _columns(header["meta"]["dims"])
    except (KeyError, TypeError):
        raise ValueError(f"the header lacks the trace's sizes; is it a complete {SCHEMA} file?") from None
    missing = [n for n in wanted if n not in names]
    if missing:
        raise ValueError(f"the table lacks the columns {missing}")
    return wanted


# ---- CSV: the long table, its first line the column names; schema and header in a `.json` sidecar


def _csv_cells(col: np.ndarray) -> list[Any]:
    # the csv module writes a Python float with repr: the shortest exact decimal, 'nan', 'inf'
    if col.ndim == 1:
        return col.tolist()
    if col.dtype == object:  # texts hold spaces and anything else, so a list of them is JSON
        return [json.dumps(r, ensure_ascii=False) for r in col.tolist()]
    return [" ".join(map(repr, r)) for r in col.tolist()]


def _parse_cells(cells: list[str], kind: str, width: int) -> np.ndarray:
    R = len(cells)
    if kind == "str":
        return text_grid(cells, (R,))
    if kind == "strs":
        rows = [json.loads(c) for c in cells]
        if any(not isinstance(r, list) or len(r) != width for r in rows):
            raise ValueError(f"a text-list cell does not hold {width} strings")
        return text_grid(rows, (R, width))
    dtype = np.int64 if kind.startswith("int") else np.float64
    if kind in ("int", "float"):
        return np.array(cells, dtype=str).astype(dtype)
    flat = " ".join(cells).split()
    if len(flat) != R * width:
        raise ValueError(f"a list cell does not hold {width} numbers")
    return np.array(flat, dtype=str).astype(dtype).reshape(R, width)


def sidecar_path(path: PathLike) -> Path:
    """Where a CSV trace keeps its metadata: `<file>.json` beside it (`t.csv` -> `t.csv.json`)."""
    return Path(f"{os.fspath(path)}.json")


def write_csv(trace: Trace, path: PathLike) -> None:
    """The long table with its column names on line 1, and the schema and header in `sidecar_path(path)`."""
    header, cols = _long_table(trace)
    with open(path, "w", encoding="utf-8", newline="") as f:
        # subtle: the writer quotes only line breaks in its own terminator, so keep the
        # default CRLF (RFC 4180): with "\n" alone a token "\r" would go out unquoted
        w = csv.writer(f)
        w.writerow(cols)
        w.writerows(zip(*(_csv_cells(c) for c in cols.values()), strict=True))
    # ASCII JSON: the text may hold lone surrogates
    side = {"schema": trace.schema, "header": header}
    sidecar_path(path).write_text(json.dumps(side, ensure_ascii=True, allow_nan=False) + "\n", encoding="ascii")


def _read_sidecar(path: PathLike) -> tuple[str, dict[str, Any]]:
    side = sidecar_path(path)
    try:
        doc = json.loads(side.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SchemaError(f"{path} is not an engram trace: no metadata file {side.name} beside it") from None
    except (OSError, ValueError) as e:
        raise SchemaError(f"{side} cannot be read as a trace's metadata: {e}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("header"), dict):
        raise SchemaError(f"{side} is not an engram trace's metadata (no header object)")
    return check_schema(doc.get("schema")), doc["header"]


def _legacy_header_line(line: str) -> tuple[str, dict[str, Any]] | None:
    """Schema and header of a CSV written before the sidecar, whose line 1 was `# engram-trace/1 {...}`."""
    parts = line.rstrip("\r\n").split(" ", 2)
    if len(parts) < 3 or parts[0] != "#" or not parts[1].startswith("engram-trace/"):
        return None
    return check_schema(parts[1]), json.loads(parts[2])


def read_csv(path: PathLike) -> Trace:
    with open(path, encoding="utf-8", newline="") as f:
        legacy = _legacy_header_line(f.readline())
        if legacy is None:
            f.seek(0)
        schema, header = legacy if legacy is not None else _read_sidecar(path)
        reader = csv.reader(f)
        names = next(reader, [])
        rows = list(reader)
    if any(len(r) != len(names) for r in rows):
        raise ValueError(f"{path}: every row must have the {len(names)} columns of the header row")
    kinds = _require_columns(names, header)
    index = {n: i for i, n in enumerate(names)}
    cols = {}
    for name, (kind, width) in kinds.items():
        try:
            cols[name] = _parse_cells([r[index[name]] for r in rows], kind, width)
        except ValueError as e:
            raise ValueError(f"{path}: column {name}: {e}") from None
    return _from_long_table(schema, header, cols)


# ---- Parquet: the same long table with native types, the header in the key-value metadata


def _arrow_column(col: np.ndarray) -> Any:
    import pyarrow as pa  # optional: only the Parquet format needs it

    text = col.dtype == object
    if col.ndim == 1:
        return pa.array(col.tolist(), pa.string()) if text else pa.array(col)
    R, W = col.shape
    values = pa.array(col.reshape(-1).tolist(), pa.string()) if text else pa.array(col.reshape(-1))
    return pa.ListArray.from_arrays(pa.array(np.arange(R + 1, dtype=np.int32) * W), values)


def _numpy_column(col: Any, kind: str, width: int) -> np.ndarray:
    R = len(col)
    if kind in ("int", "float"):
        return col.to_numpy()
    if kind == "str":
        return text_grid(col.to_pylist(), (R,))
    values = col.combine_chunks().flatten()
    if len(values) != R * width:
        raise ValueError(f"a list column does not hold {width} values a row")
    if kind == "strs":
        return np.array(values.to_pylist(), dtype=object).reshape(R, width)
    return values.to_numpy(zero_copy_only=False).reshape(R, width)


def write_parquet(trace: Trace, path: PathLike) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    header, cols = _long_table(trace)
    table = pa.table({n: _arrow_column(c) for n, c in cols.items()})
    head = json.dumps(header, ensure_ascii=True, allow_nan=False)
    pq.write_table(table.replace_schema_metadata({_PQ_SCHEMA: trace.schema.encode(), _PQ_HEADER: head.encode()}), path)


def read_parquet(path: PathLike) -> Trace:
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    md = table.schema.metadata or {}
    if _PQ_SCHEMA not in md or _PQ_HEADER not in md:
        raise SchemaError(f"{path} is not an engram trace: its metadata has no {_PQ_SCHEMA.decode()}")
    schema = check_schema(md[_PQ_SCHEMA].decode())
    header = json.loads(md[_PQ_HEADER])
    kinds = _require_columns(table.column_names, header)
    cols = {n: _numpy_column(table.column(n), kind, width) for n, (kind, width) in kinds.items()}
    return _from_long_table(schema, header, cols)
