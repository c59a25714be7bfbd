"""Exporters for a `Trace`: JSON, CSV, Parquet and NPZ, each read back to an equal Trace.

Every file names its schema (`engram-trace/1`); a reader refuses another major version
with a `SchemaError` instead of guessing. Arrays keep their dtype and shape, NaN and the
infinities survive, and floats are written as the shortest decimal of the float64 that
holds the float32 exactly, so every round trip is bit for bit. The layout of each format
is in docs/trace-format.md. Not here: capturing (capture.py) or any analysis.

T tokens, L Engram layers, O orders (n_ord), H heads per layer (O x heads_per_ngram), M branches,
K top-k, Y blocks, N N-gram width, R = T x L x H rows of the long table.
"""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from engram_core import KnockOut

from .capture import SCHEMA, Trace

FORMATS = ("json", "csv", "parquet", "npz")
_SUFFIXES = {".json": "json", ".csv": "csv", ".parquet": "parquet", ".pq": "parquet", ".npz": "npz"}

# Every Trace field but `schema` is in exactly one group (a test checks it), so a new
# field cannot be dropped silently by an exporter: adding one is a schema decision.
META_FIELDS = ("text", "checkpoint", "layers", "orders", "heads_per_ngram", "mask")
TEXT_FIELDS = ("tokens", "ngram_text", "topk_text", "masked_topk_text")
ARRAY_FIELDS = (
    "token_ids", "offsets", "compressed_ids", "ngram_ids", "hash_rows", "gate_score", "gate", "out_norm",
    "logprob_next", "topk_ids", "topk_logprob", "masked_logprob_next", "masked_topk_ids", "masked_topk_logprob",
    "kl", "lens_kl_on", "lens_kl_off",
)  # fmt: skip
_PQ_SCHEMA, _PQ_HEADER = b"engram_trace.schema", b"engram_trace.header"  # Parquet key-value metadata

PathLike = str | os.PathLike[str]


class SchemaError(ValueError):
    """A file that is not an engram trace, or one of a major version this code does not read."""


def check_schema(found: object, what: str = "this file") -> str:
    """`found` if it is an engram-trace of this major version (any minor), else a SchemaError."""
    if not isinstance(found, str) or not found.startswith("engram-trace/"):
        raise SchemaError(f"{what} is not an engram trace (schema {found!r}); this version reads {SCHEMA}")
    if found.split("/", 1)[1].split(".")[0] != SCHEMA.split("/", 1)[1].split(".")[0]:
        raise SchemaError(f"{what} is {found}; this version reads {SCHEMA}")
    return found


def dims(trace: Trace) -> dict[str, int]:
    """The trace's sizes, after checking every field has the shape the schema says."""
    T, L, n_ord = trace.n_tokens, len(trace.layers), len(trace.orders)
    H = n_ord * trace.heads_per_ngram
    M, K = np.shape(trace.gate)[-1], np.shape(trace.topk_ids)[-1]
    Y, N = np.shape(trace.lens_kl_on)[0], np.shape(trace.ngram_ids)[-1]
    want = {
        "token_ids": (T,),
        "offsets": (T, 2),
        "compressed_ids": (T,),
        "ngram_ids": (n_ord, T, N),
        "hash_rows": (L, T, H),
        "gate_score": (L, T, M),
        "gate": (L, T, M),
        "out_norm": (L, T),
        "lens_kl_on": (Y, T),
        "lens_kl_off": (Y, T),
    }
    want.update({n: (T,) for n in ("logprob_next", "masked_logprob_next", "kl")})
    want.update({n: (T, K) for n in ("topk_ids", "topk_logprob", "masked_topk_ids", "masked_topk_logprob")})
    for name, shape in want.items():
        a = getattr(trace, name)
        if not isinstance(a, np.ndarray) or a.shape != shape:
            raise ValueError(f"trace field {name} has shape {np.shape(a)}; the schema wants {shape}")
    grids = {"ngram_text": (n_ord, T), "topk_text": (T, K), "masked_topk_text": (T, K)}
    for name, (rows, cols) in grids.items():
        g = getattr(trace, name)
        if len(g) != rows or any(len(r) != cols for r in g):
            raise ValueError(f"trace field {name} is not a {rows} x {cols} grid of strings")
    sizes = {"tokens": T, "layers": L, "orders": n_ord, "heads": H, "branches": M, "top_k": K, "blocks": Y}
    return {**sizes, "ngram_width": N}


# ---- the parts every format shares: metadata, text grids, and rebuilding a Trace


def _meta(trace: Trace) -> dict[str, Any]:
    return {
        "text": trace.text,
        "checkpoint": trace.checkpoint,
        "layers": list(trace.layers),
        "orders": list(trace.orders),
        "heads_per_ngram": trace.heads_per_ngram,
        "mask": trace.mask.to_dict(),
        "dims": dims(trace),
    }


def _doc_head(trace: Trace) -> dict[str, Any]:
    """Schema, metadata and strings: the JSON document without its arrays (the NPZ's `meta`)."""
    return {
        "schema": check_schema(trace.schema, "this trace"),
        "meta": _meta(trace),
        "tokens": list(trace.tokens),
        "texts": {n: [list(r) for r in getattr(trace, n)] for n in TEXT_FIELDS[1:]},
    }


def _build(schema: str, meta: dict[str, Any], texts: dict[str, Any], arrays: dict[str, np.ndarray]) -> Trace:
    """A Trace from decoded parts, checked against the shapes the file itself declares."""
    try:
        tr = Trace(
            schema=schema,
            text=meta["text"],
            checkpoint=meta["checkpoint"],
            layers=tuple(int(x) for x in meta["layers"]),
            orders=tuple(int(x) for x in meta["orders"]),
            heads_per_ngram=int(meta["heads_per_ngram"]),
            mask=KnockOut.from_dict(meta["mask"]),
            tokens=list(texts["tokens"]),
            **{n: [list(r) for r in texts[n]] for n in TEXT_FIELDS[1:]},
            **{n: arrays[n] for n in ARRAY_FIELDS},
        )
        declared = meta["dims"]
    except KeyError as e:
        raise ValueError(f"the file lacks the trace field {e}; is it a complete {SCHEMA} file?") from None
    if dims(tr) != declared:
        raise ValueError(f"the file declares sizes {declared} but holds {dims(tr)}")
    return tr


def _grid(rows: Any, shape: tuple[int, ...]) -> np.ndarray:
    """Strings as an object array of a known shape (np.array would guess it from the nesting)."""
    out = np.empty(shape, dtype=object)
    for i, r in enumerate(rows):
        out[i] = r
    return out


# ---- JSON: one self-describing document, arrays as nested lists with dtype and shape


def _encode_array(a: np.ndarray) -> dict[str, Any]:
    data = a.astype(object)  # Python ints and floats; a float holds a float32 exactly
    if a.dtype.kind == "f":
        # JSON has no NaN or infinity: null is NaN, strings name the infinities
        data[np.isnan(a)] = None
        data[np.isposinf(a)] = "inf"
        data[np.isneginf(a)] = "-inf"
    return {"dtype": a.dtype.name, "shape": list(a.shape), "data": data.tolist()}


def _decode_array(d: dict[str, Any]) -> np.ndarray:
    dtype, shape = np.dtype(d["dtype"]), tuple(d["shape"])
    flat = np.array(d["data"], dtype=object).reshape(-1).tolist()
    if len(flat) != math.prod(shape):
        raise ValueError(f"an array of shape {shape} holds {len(flat)} values")
    if dtype.kind == "f":
        flat = [math.nan if v is None else float(v) for v in flat]
    # subtle: floats pass through float64, which holds every float32 value exactly
    return np.array(flat, dtype=np.float64 if dtype.kind == "f" else dtype).astype(dtype).reshape(shape)


def to_json(trace: Trace) -> str:
    """The trace as one JSON document; pure ASCII, so any text survives, lone surrogates too."""
    doc = _doc_head(trace)
    doc["arrays"] = {n: _encode_array(getattr(trace, n)) for n in ARRAY_FIELDS}
    return json.dumps(doc, ensure_ascii=True, allow_nan=False)


def _from_doc(doc: Any, arrays: dict[str, np.ndarray]) -> Trace:
    if not isinstance(doc, dict):
        raise SchemaError(f"not an engram trace: the document is a {type(doc).__name__}, not an object")
    schema = check_schema(doc.get("schema"))
    texts = {"tokens": doc.get("tokens"), **doc.get("texts", {})}
    return _build(schema, doc.get("meta", {}), {k: v for k, v in texts.items() if v is not None}, arrays)


def from_json(s: str) -> Trace:
    doc = json.loads(s)
    arrays = doc.get("arrays", {}) if isinstance(doc, dict) else {}
    return _from_doc(doc, {n: _decode_array(a) for n, a in arrays.items() if n in ARRAY_FIELDS})


def write_json(trace: Trace, path: PathLike) -> None:
    Path(path).write_text(to_json(trace), encoding="ascii")


def read_json(path: PathLike) -> Trace:
    return from_json(Path(path).read_text(encoding="utf-8"))


# ---- NPZ: arrays as arrays, everything else as one JSON string


def write_npz(trace: Trace, path: PathLike) -> None:
    # subtle: numpy strips trailing NULs from unicode arrays, so strings never go in one
    # raw; the ASCII JSON escapes them. A file handle stops np.savez appending ".npz".
    head = np.array(json.dumps(_doc_head(trace), ensure_ascii=True, allow_nan=False))
    with open(path, "wb") as f:
        np.savez_compressed(f, meta=head, **{n: getattr(trace, n) for n in ARRAY_FIELDS})


def read_npz(path: PathLike) -> Trace:
    with np.load(path, allow_pickle=False) as z:
        if "meta" not in z.files:
            raise SchemaError(f"{path} is not an engram trace: it has no 'meta' entry")
        doc = json.loads(str(z["meta"][()]))
        check_schema(doc.get("schema") if isinstance(doc, dict) else None)
        return _from_doc(doc, {n: z[n] for n in ARRAY_FIELDS if n in z.files})


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
    hi = np.tile(np.arange(H), T * L)  # heads order-major, as Trace.head_index
    o = hi // hpn
    cols = {
        "position": t,
        "token": _grid(trace.tokens, (T,))[t],
        "token_id": trace.token_ids[t],
        "char_start": trace.offsets[t, 0],
        "char_end": trace.offsets[t, 1],
        "compressed_id": trace.compressed_ids[t],
        "layer": np.asarray(trace.layers, dtype=np.int64)[lay],
        "order": np.asarray(trace.orders, dtype=np.int64)[o],
        "head": hi % hpn,
        "ngram_text": _grid(trace.ngram_text, (d["orders"], T))[o, t],
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
    cols["topk_text"] = _grid(trace.topk_text, (T, d["top_k"]))[t]
    for name in ("masked_topk_ids", "masked_topk_logprob"):
        cols[name] = getattr(trace, name)[t]
    cols["masked_topk_text"] = _grid(trace.masked_topk_text, (T, d["top_k"]))[t]
    cols["lens_kl_on"], cols["lens_kl_off"] = trace.lens_kl_on.T[t], trace.lens_kl_off.T[t]
    assert list(cols) == list(_columns(d)), "writer and reader disagree on the columns"
    header = {"meta": _meta(trace), "dtypes": {n: getattr(trace, n).dtype.name for n in ARRAY_FIELDS}}
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
    hi = _lookup(cols["order"], meta["orders"], "order") * hpn + head
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
    return _build(schema, meta, texts, arrays)


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
        return _grid(cells, (R,))
    if kind == "strs":
        rows = [json.loads(c) for c in cells]
        if any(not isinstance(r, list) or len(r) != width for r in rows):
            raise ValueError(f"a text-list cell does not hold {width} strings")
        return _grid(rows, (R, width))
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
        return _grid(col.to_pylist(), (R,))
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


# ---- one entry point for all formats


def _format(path: PathLike, fmt: str | None) -> str:
    if fmt is None:
        fmt = _SUFFIXES.get(Path(path).suffix.lower())
        if fmt is None:
            raise ValueError(f"cannot tell the trace format of {str(path)!r} from its suffix; pass one of {FORMATS}")
    if fmt not in FORMATS:
        raise ValueError(f"unknown trace format {fmt!r}; expected one of {', '.join(FORMATS)}")
    return fmt


_WRITERS = {"json": write_json, "csv": write_csv, "parquet": write_parquet, "npz": write_npz}
_READERS = {"json": read_json, "csv": read_csv, "parquet": read_parquet, "npz": read_npz}


def write(trace: Trace, path: PathLike, fmt: str | None = None) -> Path:
    """Write `trace` as `fmt` (one of FORMATS; by default from the suffix). Returns the path."""
    _WRITERS[_format(path, fmt)](trace, path)
    return Path(path)


def read(path: PathLike, fmt: str | None = None) -> Trace:
    """Read a trace written by `write`; SchemaError for a file of another schema version."""
    return _READERS[_format(path, fmt)](path)


def write_table(rows: list[dict[str, Any]], path: PathLike, fmt: str | None = None) -> Path:
    """A list of flat records (health or collision tables) as CSV or Parquet."""
    path = Path(path)
    fmt = fmt or path.suffix.lstrip(".")
    if not rows:
        raise ValueError("no rows to write")
    names = list(rows[0])
    if fmt == "csv":
        with open(path, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=names)
            w.writeheader()
            w.writerows(rows)
    elif fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({n: [r[n] for r in rows] for n in names}), path)
    else:
        raise ValueError(f"tables export to csv or parquet, not {fmt!r}")
    return path
