"""What a `Trace` file holds, whatever its format: field groups, sizes, metadata, and rebuilding.

The exporters (export.py for JSON and NPZ, long_table.py for CSV and Parquet) all
write these parts and rebuild a Trace through `build_trace`, which checks every
field against the sizes the file declares.

T tokens, L Engram layers, O orders, H heads per layer, M branches, K top-k, Y blocks.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from engram_core import KnockOut

from .capture import SCHEMA, Trace

# Every Trace field but `schema` is in exactly one group (a test checks it), so a new
# field cannot be dropped silently by an exporter: adding one is a schema decision.
META_FIELDS = ("text", "checkpoint", "layers", "orders", "heads_per_ngram", "mask")
TEXT_FIELDS = ("tokens", "ngram_text", "topk_text", "masked_topk_text")
ARRAY_FIELDS = (
    "token_ids", "offsets", "compressed_ids", "ngram_ids", "hash_rows", "gate_score", "gate", "out_norm",
    "logprob_next", "topk_ids", "topk_logprob", "masked_logprob_next", "masked_topk_ids", "masked_topk_logprob",
    "kl", "lens_kl_on", "lens_kl_off",
)  # fmt: skip

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


def trace_meta(trace: Trace) -> dict[str, Any]:
    return {
        "text": trace.text,
        "checkpoint": trace.checkpoint,
        "layers": list(trace.layers),
        "orders": list(trace.orders),
        "heads_per_ngram": trace.heads_per_ngram,
        "mask": trace.mask.to_dict(),
        "dims": dims(trace),
    }


def build_trace(schema: str, meta: dict[str, Any], texts: dict[str, Any], arrays: dict[str, np.ndarray]) -> Trace:
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


def text_grid(rows: Any, shape: tuple[int, ...]) -> np.ndarray:
    """Strings as an object array of a known shape (np.array would guess it from the nesting)."""
    out = np.empty(shape, dtype=object)
    for i, r in enumerate(rows):
        out[i] = r
    return out
