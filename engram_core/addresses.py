"""Names of hash heads and memory rows: `HeadAddress` "L:N:K" and `RowAddress` "L:N:K:R".

L is the Engram layer (block index), N the N-gram order, K the hash head within
that order and R a head-local row (what `hash_ids` returns). These types only
name things and read their text form; whether an address exists in a given model
is checked against its config (`HashSpec.check_head`, `KnockOut.validate`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .hashing import HashSpec


def shorten(text: str, limit: int = 60) -> str:
    """`text` as an error message may quote it: repr, cut to about `limit` characters (an input of
    any length is named, never echoed whole)."""
    shown = repr(text)
    return shown if len(shown) <= limit else f"{shown[: limit - 12]}... ({len(text):,} characters)"


def _ints(text: str, n: int, form: str, what: str) -> tuple[int, ...]:
    parts = str(text).strip().split(":")
    if len(parts) != n:
        raise ValueError(f"bad {what} {shorten(str(text))}: write it as {form}")
    try:
        return tuple(int(p) for p in parts)
    except ValueError:
        raise ValueError(f"bad {what} {shorten(str(text))}: {form} must be integers") from None


@dataclass(frozen=True, order=True)
class HeadAddress:
    """One hash head: its own prime-sized table in one Engram layer."""

    layer: int  # Engram layer (block index)
    order: int  # N-gram order, 2..max_ngram
    head: int  # hash head within the order, 0..heads_per_ngram-1

    @classmethod
    def parse(cls, text: str) -> HeadAddress:
        return cls(*_ints(text, 3, "L:N:K (layer, order, head)", "head address"))

    def __str__(self) -> str:
        return f"{self.layer}:{self.order}:{self.head}"

    def index(self, spec: HashSpec) -> int:
        """Position on the layer's order-major head axis."""
        return spec.head_index(self.order, self.head)


@dataclass(frozen=True, order=True)
class RowAddress:
    """One row of one hash head's table; `row` is head-local (0 <= row < that head's prime)."""

    layer: int  # Engram layer (block index)
    order: int  # N-gram order, 2..max_ngram
    head: int  # hash head within the order, 0..heads_per_ngram-1
    row: int  # head-local row

    @classmethod
    def parse(cls, text: str) -> RowAddress:
        return cls(*_ints(text, 4, "L:N:K:R (layer, order, head, row)", "row address"))

    def __str__(self) -> str:
        return f"{self.layer}:{self.order}:{self.head}:{self.row}"

    @property
    def head_address(self) -> HeadAddress:
        # subtle: not `.head`, which stays the int field every caller reads
        return HeadAddress(self.layer, self.order, self.head)
