"""Exporters for a `Trace`: JSON, CSV, Parquet and NPZ, each read back to an equal Trace.

Every file names its schema (`engram-trace/1`); a reader refuses another major version
with a `SchemaError` instead of guessing. Arrays keep their dtype and shape, NaN and the
infinities survive, and floats are written as the shortest decimal of the float64 that
holds the float32 exactly, so every round trip is bit for bit. The layout of each format
is in docs/trace-format.md. The CSV and Parquet long table lives in long_table.py, the
parts every format shares in trace_schema.py. Not here: capturing (capture.py) or any analysis.

T tokens, L Engram layers, O orders (n_ord), H heads per layer (O x heads_per_ngram), M branches,
K top-k, Y blocks, N N-gram width, R = T x L x H rows of the long table.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from .capture import Trace
from .long_table import read_csv, read_parquet, sidecar_path, write_csv, write_parquet
from .trace_schema import (
    ARRAY_FIELDS,
    META_FIELDS,
    TEXT_FIELDS,
    PathLike,
    SchemaError,
    build_trace,
    check_schema,
    dims,
    trace_meta,
)

# the names callers import from here, wherever they are defined
__all__ = [
    "ARRAY_FIELDS", "FORMATS", "META_FIELDS", "TEXT_FIELDS", "SchemaError", "check_schema", "dims", "from_json",
    "read", "read_csv", "read_json", "read_npz", "read_parquet", "sidecar_path", "to_json", "write", "write_csv",
    "write_json", "write_npz", "write_parquet", "write_table",
]  # fmt: skip

FORMATS = ("json", "csv", "parquet", "npz")
_SUFFIXES = {".json": "json", ".csv": "csv", ".parquet": "parquet", ".pq": "parquet", ".npz": "npz"}


def _doc_head(trace: Trace) -> dict[str, Any]:
    """Schema, metadata and strings: the JSON document without its arrays (the NPZ's `meta`)."""
    return {
        "schema": check_schema(trace.schema, "this trace"),
        "meta": trace_meta(trace),
        "tokens": list(trace.tokens),
        "texts": {n: [list(r) for r in getattr(trace, n)] for n in TEXT_FIELDS[1:]},
    }


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
    return build_trace(schema, doc.get("meta", {}), {k: v for k, v in texts.items() if v is not None}, arrays)


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
