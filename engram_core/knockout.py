"""Knock-outs: switching parts of the memory off at inference, without retraining (§8).

A `KnockOut` names what to remove; the model turns it into masks. Any mix is
allowed: removing a layer zeroes that module's output; removing an order, a head
or a row makes those looked-up rows read as zeros (so k and v lose their part);
removing a branch sets that branch's gate alpha to 0. That is mode `zero`; modes
`mean` and `resample` put a replacement in place of each removed row instead (see
`engram_core.ablation` for what they mean for each kind of knock-out).
"""

from __future__ import annotations

import operator
from dataclasses import astuple, dataclass
from typing import TYPE_CHECKING, Any

from .ablation import MODES
from .addresses import HeadAddress, RowAddress

if TYPE_CHECKING:
    from .config import ModelConfig


@dataclass(frozen=True)
class KnockOut:
    all: bool = False  # every Engram module outputs zero
    layers: frozenset[int] = frozenset()  # Engram layer ids whose output is zeroed
    orders: frozenset[int] = frozenset()  # N-gram orders whose rows read as zeros, in every layer
    heads: frozenset[tuple[int, int, int]] = frozenset()  # (layer, order, head) read as zeros
    branches: frozenset[int] = frozenset()  # branches m with alpha^(m) = 0, in every layer
    rows: frozenset[tuple[int, int, int, int]] = frozenset()  # (layer, order, head, row) read as zeros
    mode: str = "zero"  # what replaces a removed row: zero, mean (its head's), resample (another N-gram's)
    samples: int = 1  # resample: resampled runs averaged (the mean of their next-token distributions)
    seed: int = 0  # resample: seed of the first run; run i uses seed + i

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"unknown knock-out mode {self.mode!r}: choose zero, mean or resample")
        for name, low in (("samples", 1), ("seed", 0)):
            value = getattr(self, name)
            try:
                object.__setattr__(self, name, operator.index(value))  # ints, numpy ints; not floats or bools
            except TypeError:
                raise ValueError(f"{name} must be an integer, got {value!r}") from None
            if isinstance(value, bool) or getattr(self, name) < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
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

    def validate(self, cfg: ModelConfig) -> None:
        """Raise ValueError, one line naming the item, for anything `cfg`'s model does not have.

        Without this a head past the end of its order silently aliases the next
        order's head (heads are order-major) and a wrong layer or branch is ignored.
        """
        check_knockout(self, cfg)

    @property
    def replaces(self) -> bool:
        """Whether removed rows are replaced by other rows (modes mean and resample), not zeros."""
        return self.mode != "zero"

    def to_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "samples": self.samples,
            "seed": self.seed,
            "all": self.all,
            "layers": sorted(self.layers),
            "orders": sorted(self.orders),
            "heads": sorted(list(h) for h in self.heads),
            "branches": sorted(self.branches),
            "rows": sorted(list(r) for r in self.rows),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> KnockOut:
        unknown = set(d) - {"all", "layers", "orders", "heads", "branches", "rows", "mode", "samples", "seed"}
        if unknown:
            raise ValueError(f"unknown knock-out fields: {sorted(unknown)}")
        return cls(
            all=bool(d.get("all", False)),
            layers=frozenset(d.get("layers", ())),
            orders=frozenset(d.get("orders", ())),
            heads=frozenset(tuple(h) for h in d.get("heads", ())),
            branches=frozenset(d.get("branches", ())),
            rows=frozenset(tuple(r) for r in d.get("rows", ())),
            mode=d.get("mode", "zero"),
            samples=d.get("samples", 1),
            seed=d.get("seed", 0),
        )


NO_KNOCKOUT = KnockOut()


def check_knockout(ko: KnockOut, cfg: ModelConfig) -> None:
    """`KnockOut.validate`: every layer, order, head, branch and row must exist in the model."""
    if ko.empty:
        return
    if cfg.memory is None:
        raise ValueError(f"knock-out {format_knockout(ko)}: this model has no Engram memory, so nothing to knock out")
    spec, n_branches = cfg.memory.hash_spec, cfg.backbone.n_branches
    item = ""
    try:
        for layer in sorted(ko.layers):
            item = f"layer={layer}"
            spec.check_head(layer, spec.orders[0], 0)
        for order in sorted(ko.orders):
            item = f"order={order}"
            spec.check_head(spec.layer_ids[0], order, 0)
        for head in sorted(ko.heads):
            item = f"head={HeadAddress(*head)}"
            spec.check_head(*head)
        for m in sorted(ko.branches):
            item = f"branch={m}"
            if not 0 <= m < n_branches:
                raise ValueError(f"branch {m} is outside 0..{n_branches - 1}")
        for row in sorted(ko.rows):
            item = f"row={RowAddress(*row)}"
            spec.check_row(*row)
    except ValueError as e:
        raise ValueError(f"knock-out item {item}: {e}") from None


def _one_int(value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise ValueError("the value must be an integer") from None


def parse_knockout(spec: str, mode: str | None = None, samples: int | None = None, seed: int | None = None) -> KnockOut:
    """A knock-out from a compact string, as typed on the command line or kept in a URL.

    Comma-separated items: `all`, `none`, `layer=L`, `order=N`, `head=L:N:K`,
    `branch=M`, `row=L:N:K:R`, and how removed rows are replaced: `mode=zero|mean|resample`,
    `samples=K`, `seed=S`. Example: `layer=1,order=3,row=2:2:0:1234,mode=mean`.

    `mode`, `samples` and `seed` given separately (an endpoint's argument, a CLI flag)
    join the string's items: one given in both places must be the same in both, else
    ValueError, so neither silently replaces the other.
    """
    fields: dict[str, set] = {"layers": set(), "orders": set(), "heads": set(), "branches": set(), "rows": set()}
    all_off = False
    how: dict[str, Any] = {}
    keys = {
        "layer": ("layers", _one_int),
        "order": ("orders", _one_int),
        "head": ("heads", lambda v: astuple(HeadAddress.parse(v))),
        "branch": ("branches", _one_int),
        "row": ("rows", lambda v: astuple(RowAddress.parse(v))),
    }
    for item in filter(None, (s.strip() for s in spec.split(","))):
        if item in ("all", "none"):
            all_off = all_off or item == "all"
            continue
        key, _, value = item.partition("=")
        if key in ("mode", "samples", "seed") and value:
            if key in how:
                raise ValueError(f"bad knock-out item {item!r}: {key} given twice")
            try:
                how[key] = value if key == "mode" else _one_int(value)
            except ValueError as e:
                raise ValueError(f"bad knock-out item {item!r}: {e}") from None
            continue
        if key not in keys or not value:
            raise ValueError(
                f"bad knock-out item {item!r}: use all, none, layer=L, order=N, head=L:N:K, branch=M, row=L:N:K:R, "
                "mode=zero|mean|resample, samples=K, seed=S"
            )
        name, parse = keys[key]
        try:
            fields[name].add(parse(value))
        except ValueError as e:
            raise ValueError(f"bad knock-out item {item!r}: {e}") from None
    for key, value in (("mode", mode), ("samples", samples), ("seed", seed)):
        if value is None:
            continue
        if key in how and how[key] != value:
            raise ValueError(
                f"the mask says {key}={how[key]} but {key}={value} was given separately: give it once, or the same"
            )
        how[key] = value
    return KnockOut(all=all_off, **{k: frozenset(v) for k, v in fields.items()}, **how)


def format_knockout(ko: KnockOut) -> str:
    """The inverse of `parse_knockout` (sorted, so equal knock-outs give equal strings)."""
    items = ["all"] if ko.all else []
    items += [f"layer={x}" for x in sorted(ko.layers)] + [f"order={x}" for x in sorted(ko.orders)]
    items += [f"head={HeadAddress(*h)}" for h in sorted(ko.heads)]
    items += [f"branch={x}" for x in sorted(ko.branches)]
    items += [f"row={RowAddress(*r)}" for r in sorted(ko.rows)]
    items += [f"mode={ko.mode}"] if ko.mode != "zero" else []
    items += [f"samples={ko.samples}"] if ko.samples != 1 else []
    items += [f"seed={ko.seed}"] if ko.seed != 0 else []
    return ",".join(items) or "none"
