"""Addresses of Engram memory rows, shared by projections, neighbours and statistics.

A row has three names:
- a `RowAddress` (layer, order, head, row): `row` is head-local, what `hash_ids` returns;
- a global row inside its layer's table: `offsets[head_index] + row`, what `Engram.table` reads (§4);
- a flat id across every Engram layer: the layers' tables laid end to end, in configured order.
Flat ids let one int64 array name any set of rows (the rows a corpus hits, a projection's points).

This module only maps names and gathers row vectors; it computes nothing about them.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from engram_core import Checkpoint, HashSpec
from engram_core.addresses import RowAddress  # re-exported: one row address for every layer


@dataclass(frozen=True)
class RowLayout:
    """Where every head's table sits, in each layer's matrix and in the flat id space."""

    spec: HashSpec

    @classmethod
    def of(cls, ck: Checkpoint) -> RowLayout:
        if ck.model.cfg.memory is None:
            raise ValueError("this model has no Engram memory, so it has no memory rows")
        return cls(ck.model.cfg.memory.hash_spec)

    @property
    def layers(self) -> tuple[int, ...]:
        return self.spec.layer_ids

    @cached_property
    def _tables(self) -> np.ndarray:
        """(n_tables, 4) int64: layer, order, head, size for every head, in flat order."""
        out = []
        for layer in self.layers:
            for order in self.spec.orders:
                for head in range(self.spec.heads_per_ngram):
                    size = self.spec.primes[layer][self.spec.head_index(order, head)]
                    out.append((layer, order, head, size))
        return np.asarray(out, dtype=np.int64)

    @cached_property
    def _starts(self) -> np.ndarray:
        """Flat id of the first row of every table, plus the total at the end."""
        return np.concatenate([[0], np.cumsum(self._tables[:, 3])])

    @property
    def total(self) -> int:
        return int(self._starts[-1])

    def layer_size(self, layer: int) -> int:
        self.check_layer(layer)
        return int(sum(self.spec.primes[layer]))

    def offsets(self, layer: int) -> np.ndarray:
        """First global row of each head in the layer's table: the model's `Engram.offsets`."""
        primes = np.asarray(self.spec.primes[layer], dtype=np.int64)
        return np.cumsum(primes) - primes

    def check_layer(self, layer: int) -> None:
        if layer not in self.layers:
            raise ValueError(f"layer {layer} is not an Engram layer; Engram layers are {self.layers}")

    def check(self, address: RowAddress) -> None:
        """Raise ValueError naming the first field of `address` that is out of range."""
        self.check_layer(address.layer)
        if address.order not in self.spec.orders:
            raise ValueError(f"order {address.order} is outside 2..{self.spec.max_ngram}")
        if not 0 <= address.head < self.spec.heads_per_ngram:
            raise ValueError(f"head {address.head} is outside 0..{self.spec.heads_per_ngram - 1}")
        size = self.spec.primes[address.layer][self.spec.head_index(address.order, address.head)]
        if not 0 <= address.row < size:
            raise ValueError(
                f"row {address.row} is outside 0..{size - 1} "
                f"(layer {address.layer}, order {address.order}, head {address.head})"
            )

    def _table(self, layer: int, order: int, head: int) -> int:
        return self.layers.index(layer) * self.spec.heads_per_layer + self.spec.head_index(order, head)

    def global_row(self, address: RowAddress) -> int:
        self.check(address)
        return int(self.offsets(address.layer)[self.spec.head_index(address.order, address.head)]) + address.row

    def from_global(self, layer: int, global_row: int) -> RowAddress:
        self.check_layer(layer)
        base = int(self._starts[self._table(layer, self.spec.orders[0], 0)])
        if not 0 <= global_row < self.layer_size(layer):
            raise ValueError(f"global row {global_row} is outside layer {layer}'s table of {self.layer_size(layer)}")
        return self.address(base + global_row)

    def flat(self, address: RowAddress) -> int:
        self.check(address)
        return int(self._starts[self._table(address.layer, address.order, address.head)]) + address.row

    def address(self, flat: int) -> RowAddress:
        layer, order, head, row = (int(a[0]) for a in self.decode(np.asarray([flat])))
        return RowAddress(layer, order, head, row)

    def decode(self, flat: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Vectorised `address`: layer, order, head and head-local row arrays of flat ids."""
        flat = np.asarray(flat, dtype=np.int64)
        if flat.size and (flat.min() < 0 or flat.max() >= self.total):
            raise ValueError(f"flat row ids must lie in 0..{self.total - 1}, got {flat.min()}..{flat.max()}")
        t = np.searchsorted(self._starts, flat, side="right") - 1
        tab = self._tables[t]
        return tab[:, 0], tab[:, 1], tab[:, 2], flat - self._starts[t]

    def flat_range(self, layer: int | None = None, order: int | None = None, head: int | None = None) -> range:
        """Flat ids of everything, one layer, or one table: always contiguous by construction."""
        if layer is None:
            return range(self.total)
        self.check_layer(layer)
        if order is None:
            start = int(self._starts[self._table(layer, self.spec.orders[0], 0)])
            return range(start, start + self.layer_size(layer))
        self.check(RowAddress(layer, order, 0 if head is None else head, 0))
        if head is None:
            raise ValueError("a table is (layer, order, head): give the head too")
        t = self._table(layer, order, head)
        return range(int(self._starts[t]), int(self._starts[t + 1]))


def all_rows(ck: Checkpoint, layer: int | None = None, order: int | None = None, head: int | None = None) -> np.ndarray:
    """Flat ids (int64) of every memory row, or of one layer's, or of one table's."""
    r = RowLayout.of(ck).flat_range(layer, order, head)
    return np.arange(r.start, r.stop, dtype=np.int64)


def layer_table(ck: Checkpoint, layer: int) -> np.ndarray:
    """The layer's table as float32 numpy, (rows, d_head); a view when the weights are float32."""
    RowLayout.of(ck).check_layer(layer)
    return ck.model.blocks[layer].engram.table.weight.detach().float().cpu().numpy()


def row_vectors(ck: Checkpoint, flat: np.ndarray) -> np.ndarray:
    """The memory vectors of flat row ids, (N, d_head) float32, in the order given."""
    layout = RowLayout.of(ck)
    flat = np.asarray(flat, dtype=np.int64)
    layers, *_ = layout.decode(flat)
    out = np.empty((flat.size, ck.model.cfg.memory.d_head), dtype=np.float32)
    for layer in np.unique(layers):
        sel = layers == layer
        start = layout.flat_range(int(layer)).start
        out[sel] = layer_table(ck, int(layer))[flat[sel] - start]
    return out
