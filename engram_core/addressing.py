"""Which table rows a token sequence reads under a `MemoryLayout` (ENGRAM.md §2-3, §10).

Pure functions of (compressed ids, look-back lengths, layout): no I/O. The hash is
`hashing.py`'s, with one addition from the V4.1 reference: N-grams are blocked at
dead tokens and at document starts. `look_back[t]` is how many tokens, ending at t,
an N-gram may use; slot k of position t reads the pad once k >= look_back[t].

Dimensions: T time, L Engram layers, H heads per layer (order-major).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .hashing import mod_rows
from .layout import LayoutError, MemoryLayout, check_ids


def look_back(n: int, dead: np.ndarray | None = None, starts: np.ndarray | None = None) -> np.ndarray:
    """Per position, how many tokens ending there an N-gram may read: (T,) int64.

    Positions before a dead token or a document start are out of reach; a dead
    position itself reads only the pad (0). Hand-worked: n=6, dead at 2, a document
    starting at 4 -> [1, 2, 0, 1, 1, 2].
    """
    t = np.arange(n, dtype=np.int64)
    block = np.full(n, -1, dtype=np.int64)  # the newest position at or before t that blocks
    if starts is not None and len(starts):
        s = np.asarray(starts, dtype=np.int64)
        block[s] = s - 1
    if dead is not None and np.any(dead):
        d = np.flatnonzero(dead)
        block[d] = d
    return t - np.maximum.accumulate(block) if n else t


def slot_values(cids: np.ndarray, run: np.ndarray, pad: int, n: int) -> list[np.ndarray]:
    """Per slot k < n, the token k steps back at every position: n arrays (T,) int64.

    A slot the look-back does not reach (a dead token, the start) holds the pad (§10).
    """
    T = len(cids)
    out = []
    for k in range(n):
        s = np.full(T, pad, dtype=np.int64)
        if T > k:
            s[k:] = cids[: T - k]
        s[run <= k] = pad
        out.append(s)
    return out


def mix_rows(mix: np.ndarray, prime: int) -> np.ndarray:
    """mix mod prime as a new array."""
    out = np.empty_like(mix)
    mod_rows(mix, prime, out)
    return out


def local_rows(cids: np.ndarray, run: np.ndarray, layout: MemoryLayout, layers=None) -> np.ndarray:
    """Head-local rows: (L, T, H) int64, heads order-major."""
    spec = layout.spec
    layers = layout.layers if layers is None else tuple(layers)
    out = np.empty((len(layers), spec.heads_per_layer, len(cids)), dtype=np.int64)
    slots = slot_values(cids, run, spec.pad_id, spec.max_ngram)
    for i, layer in enumerate(layers):
        primes = spec.primes[layer]
        for j, mix in spec.head_mixes(slots, layer):
            mod_rows(mix, primes[j], out[i, j])
    return out.transpose(0, 2, 1)


def reference_rows(cids: np.ndarray, run: np.ndarray, layout: MemoryLayout) -> np.ndarray:
    """The straightforward per-head form of `local_rows` (the bench's baseline): (L, T, H)."""
    spec = layout.spec
    T = len(cids)
    out = np.empty((len(layout.layers), T, spec.heads_per_layer), dtype=np.int64)
    pos = np.arange(T)
    for i, layer in enumerate(layout.layers):
        for j in range(spec.heads_per_layer):
            order, _ = spec.head_address(j)
            slots = []
            for k in range(order):
                src = pos - k
                slots.append(np.where((src >= 0) & (run > k), cids[np.maximum(src, 0)], spec.pad_id))
            out[i, :, j] = spec.plain_mix(slots, layer, j) % spec.primes[layer][j]
    return out


@dataclass
class Addresses:
    """The rows one token sequence reads."""

    layout: MemoryLayout
    ids: np.ndarray  # (T,) raw ids
    compressed: np.ndarray  # (T,) compressed ids
    dead: np.ndarray  # (T,) bool
    local: np.ndarray  # (L, T, H) head-local rows

    @property
    def rows(self) -> np.ndarray:
        """Global rows within each layer's table: (L, T, H)."""
        offs = np.stack([self.layout.offsets[layer] for layer in self.layout.layers])  # (L, H)
        return self.local + offs[:, None, :]

    def to_dict(self) -> dict:
        lay = self.layout
        rows, local = self.rows.tolist(), self.local.tolist()
        tokens = []
        for t, raw in enumerate(self.ids.tolist()):
            tokens.append(
                {
                    "id": raw,
                    "text": lay.token_text(raw),
                    "compressed": int(self.compressed[t]),
                    "dead": bool(self.dead[t]),
                    "rows": {str(layer): rows[i][t] for i, layer in enumerate(lay.layers)},
                    "local_rows": {str(layer): local[i][t] for i, layer in enumerate(lay.layers)},
                }
            )
        return {"model": lay.name, "layers": list(lay.layers), "tokens": tokens}

    def records(self) -> list[dict]:
        """One line per (token, layer, head): the tabular form (CSV, Parquet)."""
        lay = self.layout
        out = []
        rows = self.rows
        for t, raw in enumerate(self.ids.tolist()):
            text = lay.token_text(raw)
            for i, layer in enumerate(lay.layers):
                for j in range(lay.spec.heads_per_layer):
                    order, head = lay.head_of(j)
                    out.append(
                        {
                            "position": t,
                            "id": raw,
                            "text": text,
                            "compressed": int(self.compressed[t]),
                            "dead": bool(self.dead[t]),
                            "layer": layer,
                            "order": order,
                            "head": head,
                            "row": int(rows[i, t, j]),
                            "local_row": int(self.local[i, t, j]),
                        }
                    )
        return out


def address(layout: MemoryLayout, raw_ids, dead_ids=()) -> Addresses:
    """Rows read by every token of one sequence; tokens whose raw id is in dead_ids are dead."""
    ids = layout.compress(raw_ids)  # refuses negative and out-of-range ids
    raw = check_ids(raw_ids, layout.vocab_size, "token id")
    dead_set = check_ids(list(dead_ids), layout.vocab_size, "dead token id")
    if dead_set.size and not layout.block_dead:
        raise LayoutError(f"{layout.name} does not block N-grams at dead tokens: --dead-ids applies to V4.1 layouts")
    dead = layout.dead_of(raw, dead_set)
    run = layout.look_back(raw, None, dead)
    return Addresses(layout, raw, ids, dead, local_rows(ids, run, layout))


def address_text(layout: MemoryLayout, text: str, dead_ids=()) -> Addresses:
    return address(layout, layout.encode(text), dead_ids)


def parse_ids(text: str, what: str = "--ids") -> list[int]:
    """'0,671,4787' -> [0, 671, 4787]; one clear line for anything else."""
    try:
        return [int(x) for x in text.replace(" ", "").split(",") if x != ""]
    except ValueError as e:
        raise LayoutError(f"{what} takes comma-separated integers, got {text!r}") from e
