"""Multi-head multiplicative-XOR N-gram hashing (ENGRAM.md §2-3, paper eq. 1).

Pure functions of (compressed ids, hash spec, layer): no module state, no I/O.
Bit-exact with DeepSeek's reference demo; `tests/data/engram_hash_vectors.json`
holds the oracle. This module is not the embedding lookup: it only says which row
of which head's table each position reads.

Dimensions: B batch, T time, N max order, H heads per layer ((N-1) * heads_per_ngram).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch

PRIME_1 = 10007  # the reference's per-layer seed stride (ENGRAM.md §3)


@dataclass(frozen=True)
class HashSpec:
    """Everything that fixes which rows an N-gram reads."""

    vocab_size: int  # compressed vocabulary size V'
    table_sizes: tuple[int, ...]  # base table size per order, orders 2..max_ngram
    max_ngram: int = 3  # N: suffix N-grams of orders 2..N
    heads_per_ngram: int = 4  # hash heads (tables) per order
    layer_ids: tuple[int, ...] = (1, 2)  # Engram layers, in configured order
    pad_id: int = 0  # compressed pad id read before the sequence start
    seed: int = 0  # base seed of the multipliers

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "table_sizes", tuple(int(s) for s in self.table_sizes))
        except (TypeError, ValueError):
            raise ValueError(f"table_sizes must be integers, one per order, got {self.table_sizes!r}") from None
        object.__setattr__(self, "layer_ids", tuple(int(x) for x in self.layer_ids))
        if self.max_ngram < 2:
            raise ValueError(f"max_ngram must be >= 2, got {self.max_ngram}")
        if len(self.table_sizes) != self.max_ngram - 1:
            raise ValueError(
                f"table_sizes needs one base size per order 2..{self.max_ngram} "
                f"({self.max_ngram - 1} values), got {len(self.table_sizes)}"
            )
        if self.vocab_size < 1 or self.heads_per_ngram < 1:
            raise ValueError("vocab_size and heads_per_ngram must be positive")
        if not 0 <= self.pad_id < self.vocab_size:
            raise ValueError(f"pad_id {self.pad_id} outside the vocabulary 0..{self.vocab_size - 1}")
        if len(set(self.layer_ids)) != len(self.layer_ids):
            raise ValueError(f"layer_ids must be distinct, got {self.layer_ids}")

    @property
    def orders(self) -> tuple[int, ...]:
        return tuple(range(2, self.max_ngram + 1))

    @property
    def heads_per_layer(self) -> int:
        return (self.max_ngram - 1) * self.heads_per_ngram

    def head_index(self, order: int, head: int) -> int:
        """Position of (order, head) in the order-major head axis."""
        return head_index(order, head, self.heads_per_ngram)

    def head_address(self, index: int) -> tuple[int, int]:
        """(order, head) at a position of the order-major head axis: the inverse of `head_index`."""
        return head_address(index, self.heads_per_ngram)

    def check_head(self, layer: int, order: int, head: int) -> None:
        """Raise ValueError naming the first of layer, order, head that this spec does not have."""
        if layer not in self.layer_ids:
            raise ValueError(f"layer {layer} is not an Engram layer (Engram layers: {list(self.layer_ids)})")
        if order not in self.orders:
            raise ValueError(f"order {order} is outside 2..{self.max_ngram}")
        if not 0 <= head < self.heads_per_ngram:
            # subtle: an unchecked head past the end would alias a head of the next order
            raise ValueError(f"head {head} is outside 0..{self.heads_per_ngram - 1}")

    def check_row(self, layer: int, order: int, head: int, row: int) -> None:
        """`check_head`, then the head-local row against that head's prime."""
        self.check_head(layer, order, head)
        size = self.primes[layer][self.head_index(order, head)]
        if not 0 <= row < size:
            raise ValueError(f"row {row} is outside 0..{size - 1} (head {layer}:{order}:{head})")

    @cached_property
    def primes(self) -> dict[int, tuple[int, ...]]:
        return table_primes(self)

    @cached_property
    def multipliers(self) -> dict[int, np.ndarray]:
        return {layer: layer_multipliers(self, layer) for layer in self.layer_ids}

    def head_mixes(self, slots, layer: int, orders=None):
        """Yield (head index, mix) for every head of `orders` (default all), heads order-major.

        `slots[k]` holds, per position, the token k steps back (a blocked slot holds the pad);
        mix >= 0 and the head reads row mix mod its table size. Here eq. 1: the XOR chain of
        slot x multiplier, shared by every head of an order (the array is yielded, not copied:
        read it, never write it). A family with another hash overrides this and `plain_mix`.
        """
        orders = self.orders if orders is None else tuple(orders)
        m = self.multipliers[layer]
        mix = slots[0] * m[0]
        for k in range(1, max(orders)):
            mix = np.bitwise_xor(mix, slots[k] * m[k])
            if k + 1 in orders:
                for h in range(self.heads_per_ngram):
                    yield self.head_index(k + 1, h), mix

    def plain_mix(self, slots, layer: int, index: int) -> np.ndarray:
        """The mix of one head written the straightforward way (the benches' baseline)."""
        order, _ = self.head_address(index)
        m = self.multipliers[layer]
        mix = np.zeros_like(slots[0])
        for k in range(order):
            mix ^= slots[k] * m[k]
        return mix


def head_index(order, head, heads_per_ngram: int):
    """Order-major head axis: the heads of order 2 first, then order 3, ... (the one copy of this formula).

    Works elementwise on integer arrays too, for callers that hold no `HashSpec` (a `Trace`).
    """
    return (order - 2) * heads_per_ngram + head


def head_address(index, heads_per_ngram: int):
    """(order, head) at `index` of the order-major head axis; elementwise on integer arrays."""
    return 2 + index // heads_per_ngram, index % heads_per_ngram


def is_prime(n: int) -> bool:
    if n < 2:
        return False
    if n % 2 == 0:
        return n == 2
    f = 3
    while f * f <= n:
        if n % f == 0:
            return False
        f += 2
    return True


def table_primes(spec: HashSpec) -> dict[int, tuple[int, ...]]:
    """Per layer, the prime table size of every head, order-major (§3).

    Layers in configured order, then orders, then heads; each head takes the
    smallest unused prime above the previous head's (first head of an order:
    >= that order's base size), so no two heads anywhere share a modulus.
    """
    taken: set[int] = set()
    out: dict[int, tuple[int, ...]] = {}
    for layer in spec.layer_ids:
        sizes: list[int] = []
        for base in spec.table_sizes:
            candidate = base - 1
            for _ in range(spec.heads_per_ngram):
                candidate += 1
                while not is_prime(candidate) or candidate in taken:
                    candidate += 1
                taken.add(candidate)
                sizes.append(candidate)
        out[layer] = tuple(sizes)
    return out


def layer_multipliers(spec: HashSpec, layer: int) -> np.ndarray:
    """The N odd multipliers of one layer; m[0] multiplies the current token."""
    half_bound = max(1, (np.iinfo(np.int64).max // spec.vocab_size) // 2)
    rng = np.random.default_rng(spec.seed + PRIME_1 * layer)
    r = rng.integers(0, half_bound, size=spec.max_ngram, dtype=np.int64)
    return r * 2 + 1


def shifted(ids: torch.Tensor, k: int, pad_id: int) -> torch.Tensor:
    """ids delayed by k steps along time, the first k positions reading pad (§2)."""
    if k == 0:
        return ids
    T = ids.shape[-1]
    pad = ids.new_full((*ids.shape[:-1], min(k, T)), pad_id)
    return torch.cat([pad, ids[..., : max(T - k, 0)]], dim=-1)


def _as_ids(ids: np.ndarray | torch.Tensor | list, vocab_size: int) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(ids) if isinstance(ids, list) else ids)
    if t.dim() != 2:
        raise ValueError(f"ids must be 2-D (batch, time), got shape {tuple(t.shape)}")
    if t.dtype.is_floating_point or t.dtype == torch.bool:
        raise TypeError(f"ids must be integers, got {t.dtype}")
    t = t.to(torch.int64)
    if t.numel() and (int(t.min()) < 0 or int(t.max()) >= vocab_size):
        raise ValueError(f"compressed ids must lie in 0..{vocab_size - 1}; got min {int(t.min())}, max {int(t.max())}")
    return t


def ngram_mix(ids: torch.Tensor, spec: HashSpec, layer: int) -> torch.Tensor:
    """mix_{t,n} for every order: (B, T, N-1) int64 (eq. 1, before the modulus)."""
    m = spec.multipliers[layer]
    mixes = []
    mix = ids * int(m[0])
    for k in range(1, spec.max_ngram):
        mix = torch.bitwise_xor(mix, shifted(ids, k, spec.pad_id) * int(m[k]))
        mixes.append(mix)
    return torch.stack(mixes, dim=-1)  # (B, T, N-1)


def mod_rows(mix: np.ndarray, prime: int, out: np.ndarray) -> None:
    """out = mix mod prime for mix >= 0, exactly.

    subtle: written as mix - (mix // prime) x prime because numpy vectorises integer floor division by
    a scalar (libdivide) but not `%`: 1.7x faster than `%` or a float64 quotient estimate on the
    2-core EPYC (bench/bench_addressing.py), and exact for every mix >= 0.
    """
    np.floor_divide(mix, prime, out=out)
    np.multiply(out, prime, out=out)
    np.subtract(mix, out, out=out)


def _rows_numpy(x: np.ndarray, spec: HashSpec, layer: int, out: np.ndarray) -> None:
    """Fill out (H, B, T) with the rows of one layer; x is (B, T) int64, the pad before the start (§2).

    The mixes are the spec's own (`head_mixes`: eq. 1's XOR chain, or a family's hash)."""
    T = x.shape[1]
    slots = [x]
    for k in range(1, spec.max_ngram):
        prev = np.full_like(x, spec.pad_id)
        prev[:, k:] = x[:, : max(T - k, 0)]  # delayed by k
        slots.append(prev)
    primes = spec.primes[layer]
    for i, mix in spec.head_mixes(slots, layer):
        mod_rows(mix, primes[i], out[i])


def hash_ids(ids: np.ndarray | torch.Tensor | list, spec: HashSpec, layer: int) -> torch.Tensor:
    """Row read by every head at every position: (B, T, H) int64, head-local ids, heads order-major."""
    return hash_all(ids, spec, (layer,))[layer]


def hash_all(
    ids: np.ndarray | torch.Tensor | list, spec: HashSpec, layers: tuple[int, ...] | None = None
) -> dict[int, torch.Tensor]:
    """`hash_ids` for several layers at once.

    Returns (B, T, H) views of one (L, H, B, T) buffer: every head's rows are contiguous.
    """
    layers = spec.layer_ids if layers is None else tuple(layers)
    bad = [layer for layer in layers if layer not in spec.layer_ids]
    if bad:
        raise ValueError(f"layer {bad[0]} is not an Engram layer of this spec {spec.layer_ids}")
    t = _as_ids(ids, spec.vocab_size)
    # the hash runs in numpy on the CPU (exact int64 wrap-around, libdivide); the rows
    # go back to the device the ids came from, so a model on CUDA reads them in place
    x = t.cpu().numpy()
    out = np.empty((len(layers), spec.heads_per_layer, *x.shape), dtype=np.int64)  # (L, H, B, T)
    for i, layer in enumerate(layers):
        _rows_numpy(x, spec, layer, out[i])
    rows = torch.from_numpy(out)
    if t.device.type != "cpu":
        rows = rows.to(t.device)
    return {layer: rows[i].permute(1, 2, 0) for i, layer in enumerate(layers)}  # (B, T, H)


def suffix_ngrams(ids: np.ndarray | torch.Tensor | list, spec: HashSpec, order: int) -> torch.Tensor:
    """The suffix N-gram of one order at every position, oldest token first: (B, T, order)."""
    x = _as_ids(ids, spec.vocab_size)
    return torch.stack([shifted(x, k, spec.pad_id) for k in reversed(range(order))], dim=-1)
