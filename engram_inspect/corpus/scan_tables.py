"""The Parquet tables of `engram scan`, shared by both executors so their files agree column for column."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def rows_table(layer, order, head, rows, ngrams, hits, gate=None):
    """rows.parquet lines of one head; `gate` (alpha sums in 2^-24, reads) for a checkpoint with a backbone."""
    import pyarrow as pa

    n = len(rows)
    cols = {
        "layer": np.full(n, layer, np.int32),
        "order": np.full(n, order, np.int8),
        "head": np.full(n, head, np.int8),
        "row": np.asarray(rows, np.int64),
        "ngrams": np.asarray(ngrams, np.int64),
        "hits": np.asarray(hits, np.int64),
    }
    if gate is not None:
        from .scan_gates import GATE_SCALE

        cols["gate_sum"] = np.asarray(gate[0], np.int64) / GATE_SCALE
        cols["gate_hits"] = np.asarray(gate[1], np.int64)
    return pa.table(cols)


def ngrams_table(layer, order, head, rows, grams, counts):
    """ngrams.parquet lines: `grams` (K, order), oldest token first."""
    import pyarrow as pa

    k = len(rows)
    flat = pa.array(np.asarray(grams, np.int64).reshape(-1))
    return pa.table(
        {
            "layer": np.full(k, layer, np.int32),
            "order": np.full(k, order, np.int8),
            "head": np.full(k, head, np.int8),
            "row": np.asarray(rows, np.int64),
            "ngram": pa.FixedSizeListArray.from_arrays(flat, order).cast(pa.list_(pa.int64())),
            "count": np.asarray(counts, np.int64),
        }
    )


def empty_ngrams_table():
    """ngrams.parquet with no lines (no row holds two N-grams), with the columns of a full one."""
    return ngrams_table(0, 2, 0, np.zeros(0), np.zeros((0, 2)), np.zeros(0))


def empty_rows_table(gates: bool):
    return rows_table(0, 2, 0, [], [], [], (np.zeros(0), np.zeros(0)) if gates else None)


class TableWriter:
    """One Parquet file written table by table (opened on the first); `empty`, if given, is written
    when no table came, so both executors leave the same files whatever the corpus."""

    def __init__(self, path: Path, empty=None):
        self.path, self.writer, self.empty = path, None, empty

    def write(self, table) -> None:
        import pyarrow.parquet as pq

        self.writer = self.writer or pq.ParquetWriter(self.path, table.schema)
        self.writer.write_table(table)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        elif self.empty is not None:
            import pyarrow.parquet as pq

            pq.write_table(self.empty, self.path)
