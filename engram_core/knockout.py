"""Knock-outs: switching parts of the memory off at inference, without retraining (§8).

A `KnockOut` names what to remove; the model turns it into masks. Any mix is
allowed: removing a layer zeroes that module's output; removing an order, a head
or a row makes those looked-up rows read as zeros (so k and v lose their part);
removing a branch sets that branch's gate alpha to 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class KnockOut:
    all: bool = False  # every Engram module outputs zero
    layers: frozenset[int] = frozenset()  # Engram layer ids whose output is zeroed
    orders: frozenset[int] = frozenset()  # N-gram orders whose rows read as zeros, in every layer
    heads: frozenset[tuple[int, int, int]] = frozenset()  # (layer, order, head) read as zeros
    branches: frozenset[int] = frozenset()  # branches m with alpha^(m) = 0, in every layer
    rows: frozenset[tuple[int, int, int, int]] = frozenset()  # (layer, order, head, row) read as zeros

    def __post_init__(self) -> None:
        for name in ("layers", "orders", "branches"):
            object.__setattr__(self, name, frozenset(int(x) for x in getattr(self, name)))
        object.__setattr__(self, "heads", frozenset(tuple(int(x) for x in h) for h in self.heads))
        object.__setattr__(self, "rows", frozenset(tuple(int(x) for x in r) for r in self.rows))
        if any(len(h) != 3 for h in self.heads):
            raise ValueError("each knocked-out head is (layer, order, head)")
        if any(len(r) != 4 for r in self.rows):
            raise ValueError("each knocked-out row is (layer, order, head, row)")

    @property
    def empty(self) -> bool:
        return not (self.all or self.layers or self.orders or self.heads or self.branches or self.rows)

    def layer_off(self, layer: int) -> bool:
        return self.all or layer in self.layers

    def touches_rows(self, layer: int) -> bool:
        return bool(self.orders or any(h[0] == layer for h in self.heads) or any(r[0] == layer for r in self.rows))

    def to_dict(self) -> dict[str, Any]:
        return {
            "all": self.all,
            "layers": sorted(self.layers),
            "orders": sorted(self.orders),
            "heads": sorted(list(h) for h in self.heads),
            "branches": sorted(self.branches),
            "rows": sorted(list(r) for r in self.rows),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> KnockOut:
        unknown = set(d) - {"all", "layers", "orders", "heads", "branches", "rows"}
        if unknown:
            raise ValueError(f"unknown knock-out fields: {sorted(unknown)}")
        return cls(
            all=bool(d.get("all", False)),
            layers=frozenset(d.get("layers", ())),
            orders=frozenset(d.get("orders", ())),
            heads=frozenset(tuple(h) for h in d.get("heads", ())),
            branches=frozenset(d.get("branches", ())),
            rows=frozenset(tuple(r) for r in d.get("rows", ())),
        )


NO_KNOCKOUT = KnockOut()
