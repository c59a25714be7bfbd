"""What the app shows of a layout without a backbone: per-token lookups and a finished scan's statistics.

Pure: arrays, dicts and a finished `engram scan` OUT_DIR in; lists of table rows out.
A scan is read sparsely (only the rows it hit exist; V4.1 has 384M rows a layer).
Dimensions: T tokens, L layers, H heads per layer (order-major).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from engram_core.addressing import Addresses
from engram_core.layout import MemoryLayout

LOOKUP_COLUMNS = ["layer", "order", "head", "N-gram", "row", "local row", "N-gram count", "N-grams in row", "reads"]


def token_ngrams(addresses: Addresses) -> list[dict[int, list[int]]]:
    """Per position, per order, the raw ids of the N-gram it reads (oldest first, cut at dead tokens and the start)."""
    ids, spec = addresses.ids.tolist(), addresses.layout.spec
    run = addresses.layout.look_back(addresses.ids, None, addresses.dead)
    return [{n: ids[t - min(n, int(run[t])) + 1 : t + 1] for n in spec.orders} for t in range(len(ids))]


@dataclass
class ScanStats:
    """A finished scan (summary.json, cache.parquet, rows.parquet; parts/ for exact N-gram counts)."""

    folder: Path
    summary: dict
    cache: list[dict]
    rows: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]  # layer -> (sorted rows, N-grams, reads)
    _ngrams: dict | None = field(default=None, repr=False)

    @classmethod
    def open(cls, folder: str | Path) -> ScanStats:
        import pyarrow.parquet as pq

        folder = Path(folder)
        try:
            summary = json.loads((folder / "summary.json").read_text())
            cache = pq.read_table(folder / "cache.parquet").to_pylist()
            table = pq.read_table(folder / "rows.parquet", columns=["layer", "row", "ngrams", "hits"])
        except (OSError, ValueError) as e:
            raise ValueError(f"{folder} is not a finished scan (summary.json, cache.parquet, rows.parquet)") from e
        cols = {k: table.column(k).to_numpy() for k in ("layer", "row", "ngrams", "hits")}
        rows = {}
        for layer in summary["layers"]:
            keep = cols["layer"] == layer
            order = np.argsort(cols["row"][keep], kind="stable")
            rows[int(layer)] = tuple(cols[k][keep][order].astype(np.int64) for k in ("row", "ngrams", "hits"))
        return cls(folder, summary, cache, rows)

    def row_stats(self, layer: int, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(distinct N-grams, reads) of each global row of one layer; 0 where the corpus never read it."""
        r, ngrams, hits = self.rows.get(int(layer), (np.zeros(0, np.int64),) * 3)
        rows = np.asarray(rows, dtype=np.int64)
        i = np.minimum(np.searchsorted(r, rows), max(len(r) - 1, 0))
        found = (r[i] == rows) if len(r) else np.zeros(rows.shape, bool)
        return np.where(found, ngrams[i] if len(r) else 0, 0), np.where(found, hits[i] if len(r) else 0, 0)

    def ngram_count(self, layout: MemoryLayout, compressed: list[int], order: int) -> int | None:
        """Occurrences of one compressed N-gram (oldest first, padded) in the corpus; None without parts/."""
        from .shards import fold_parts
        from .traffic import _bits, pack

        if self._ngrams is None:
            parts = sorted((self.folder / "parts").glob("*.npz"))
            self._ngrams = fold_parts(parts)[0].ngrams if parts else {}
        if order not in self._ngrams:
            return None
        hi, lo, cnt = self._ngrams[order]
        gram = np.asarray([compressed[::-1]], dtype=np.int64)  # newest slot first, as the scan keys it
        khi, klo = pack(gram, _bits(layout))
        i = np.flatnonzero((hi == khi[0]) & (lo == klo[0]))
        return int(cnt[i[0]]) if len(i) else 0

    def layer_table(self) -> list[list]:
        """Per layer: rows hit, reads, the read-weighted collision rate, the largest N-grams per row."""
        out = []
        for layer in self.summary["layers"]:
            heads = [h for h in self.summary["heads"] if h["layer"] == layer]
            reads = sum(h["reads"] for h in heads)
            rate = sum(h["collision_rate"] * h["reads"] for h in heads) / max(reads, 1)
            hit = sum(h["rows_hit"] for h in heads)
            out.append([layer, hit, reads, round(rate, 4), max((h["max_ngrams_per_row"] for h in heads), default=0)])
        return out


LAYER_COLUMNS = ["layer", "rows hit", "reads", "collision rate", "most N-grams in a row"]


def padded(layout: MemoryLayout, raw: list[int], order: int) -> list[int]:
    """The compressed N-gram a slot reads: the pad before a cut, oldest first."""
    cids = layout.compress(raw).tolist() if raw else []
    return [layout.spec.pad_id] * (order - len(cids)) + cids


def lookup_rows(addresses: Addresses, pos: int, stats: ScanStats | None = None) -> list[list]:
    """For one position: per layer, order and head, the N-gram, its rows, and what the scan saw there."""
    lay = addresses.layout
    grams = token_ngrams(addresses)[pos]
    glob = addresses.rows
    out = []
    for li, layer in enumerate(lay.layers):
        rows = glob[li, pos]
        ngrams, hits = stats.row_stats(layer, rows) if stats is not None else (None, None)
        counts = {}
        for j in range(lay.spec.heads_per_layer):
            order, head = lay.head_of(j)
            if stats is not None and order not in counts:
                counts[order] = stats.ngram_count(lay, padded(lay, grams[order], order), order)
            text = "".join(lay.token_text(i) for i in grams[order])
            out.append(
                [
                    layer,
                    order,
                    head,
                    text,
                    int(rows[j]),
                    int(addresses.local[li, pos, j]),
                    counts.get(order),
                    None if ngrams is None else int(ngrams[j]),
                    None if hits is None else int(hits[j]),
                ]
            )
    return out
