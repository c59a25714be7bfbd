"""Frozen configuration dataclasses, one per concern, saved as JSON in every checkpoint.

Variants come from `dataclasses.replace`, never from mutation.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from .hashing import HashSpec


@dataclass(frozen=True)
class BackboneConfig:
    """The transformer the memory is added to."""

    vocab_size: int = 4096  # raw BPE vocabulary (before compression)
    n_layer: int = 4  # transformer blocks
    d_model: int = 256  # D, width of every residual branch
    n_head: int = 4  # attention heads
    block_size: int = 256  # context length in tokens
    mlp_ratio: int = 4  # MLP hidden width = mlp_ratio * D
    n_branches: int = 4  # M, mHC residual branches (§2.4); 1 is a plain residual
    sinkhorn_iters: int = 20  # Sinkhorn-Knopp steps when sinkhorn_tol is 0 (checkpoints from before the tolerance)
    sinkhorn_tol: float = 1e-3  # iterate until row and column sums of H_res are within this of 1
    sinkhorn_max_iters: int = 500  # cap on the steps of the tolerance mode (near-zero entries converge slowly)
    rope_base: float = 10000.0  # rotary position base

    def __post_init__(self) -> None:
        if self.d_model % self.n_head or (self.d_model // self.n_head) % 2:
            raise ValueError("d_model must split into n_head heads of even width")
        if min(self.n_layer, self.n_branches, self.block_size, self.vocab_size) < 1:
            raise ValueError("n_layer, n_branches, block_size and vocab_size must be positive")
        if self.sinkhorn_tol < 0 or min(self.sinkhorn_iters, self.sinkhorn_max_iters) < 1:
            raise ValueError("sinkhorn_tol must be >= 0 and the Sinkhorn step counts positive")


@dataclass(frozen=True)
class MemoryConfig:
    """The Engram memory: where it sits and how big its tables are (§2-§3)."""

    layer_ids: tuple[int, ...] = (1, 2)  # blocks that carry an Engram module
    max_ngram: int = 3  # N: suffix N-grams of orders 2..N
    heads_per_ngram: int = 4  # hash heads per order, each with its own prime-sized table
    d_head: int = 32  # width of one table row
    table_sizes: tuple[int, ...] = (27000, 27000)  # base rows per head, per order
    conv_kernel: int = 4  # short conv kernel; its dilation is max_ngram (§2.3)
    signed_sqrt: bool = True  # the reference demo's sign(s)*sqrt|s| before the sigmoid
    seed: int = 0  # hash multiplier seed
    vocab_size: int = 0  # V', compressed vocabulary size (set from the tokenizer)
    pad_id: int = 0  # compressed id read before the sequence start

    def __post_init__(self) -> None:
        object.__setattr__(self, "layer_ids", tuple(self.layer_ids))
        object.__setattr__(self, "table_sizes", tuple(self.table_sizes))
        if not isinstance(self.max_ngram, int) or self.max_ngram < 2:
            raise ValueError(f"max_ngram must be an integer of at least 2 (orders 2..N), got {self.max_ngram!r}")
        sizes_ok = all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in self.table_sizes)
        if not sizes_ok or len(self.table_sizes) != self.max_ngram - 1:
            raise ValueError(
                f"table_sizes needs one positive base size per N-gram order 2..{self.max_ngram}, got {self.table_sizes}"
            )

    @cached_property
    def hash_spec(self) -> HashSpec:
        # cached: the spec memoises its primes and multipliers, which every forward reads
        return HashSpec(
            vocab_size=self.vocab_size,
            table_sizes=self.table_sizes,
            max_ngram=self.max_ngram,
            heads_per_ngram=self.heads_per_ngram,
            layer_ids=self.layer_ids,
            pad_id=self.pad_id,
            seed=self.seed,
        )

    @property
    def heads_per_layer(self) -> int:
        return (self.max_ngram - 1) * self.heads_per_ngram


@dataclass(frozen=True)
class ModelConfig:
    """A whole Engram LM; `memory=None` is the memory-free baseline."""

    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    memory: MemoryConfig | None = field(default_factory=MemoryConfig)

    def __post_init__(self) -> None:
        if self.memory is not None:
            bad = [i for i in self.memory.layer_ids if not 0 <= i < self.backbone.n_layer]
            if bad:
                raise ValueError(f"Engram layers {bad} outside 0..{self.backbone.n_layer - 1}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        try:
            # configs saved before the tolerance ran exactly `sinkhorn_iters` steps: keep that
            backbone = BackboneConfig(**{"sinkhorn_tol": 0.0, **d["backbone"]})
            mem = d.get("memory")
            memory = None if mem is None else MemoryConfig(**mem)
        except (KeyError, TypeError) as e:
            raise ValueError(f"model config does not match this version of engram_core: {e}") from e
        return cls(backbone=backbone, memory=memory)
