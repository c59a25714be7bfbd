"""What a knock-out puts in place of the rows it removes: zeros, the head's mean row, or
the row another corpus N-gram reads (the `mode` of a `KnockOut`).

Zeroing memory moves the model off the data it was trained on; a removed row
replaced by its head's mean row (weighted by corpus hits) or by the row that a
random other corpus N-gram of the same order reads on the same head stays on it.
The difference between the modes separates what a row's *content* is worth from
what the memory's mere *presence* is worth.

What each knock-out replaces, in every mode:
- a row, head or order: those reads (where they are read);
- a layer (or `all`): every read of that layer (every layer); under `zero` the
  module's output is exactly zero, which is what all-zero reads give;
- a branch: that branch receives the read-out of replaced reads at every head,
  the other branches the real ones; under `zero` its gate alpha is 0, which is
  again what all-zero reads give it.

The replacements come from a `RowSource` per Engram layer, computed once per
checkpoint from its training corpus (engram_inspect.memory.ablation) and installed with
`EngramLM.install_row_source`. This module holds no data of its own.

B batch, T time, H heads of a layer, Dh row width, P pool size.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .hashing import head_address

MODES = ("zero", "mean", "resample")


@dataclass(frozen=True)
class RowSource:
    """Replacement rows of one Engram layer."""

    mean_rows: torch.Tensor  # (H, Dh) each head's mean row, weighted by how often the corpus reads it
    pool: torch.Tensor  # (P, H) int64 head-local rows read at P random corpus positions

    def __post_init__(self) -> None:
        if self.mean_rows.dim() != 2 or self.pool.dim() != 2 or self.pool.shape[1] != self.mean_rows.shape[0]:
            raise ValueError(
                f"a row source needs mean rows (H, Dh) and a pool (P, H), got {tuple(self.mean_rows.shape)} "
                f"and {tuple(self.pool.shape)}"
            )
        if len(self.pool) < 2:
            raise ValueError("a resampling pool needs at least 2 corpus positions")


def resample_generator(seed: int, layer: int) -> torch.Generator:
    """The same draws in every process for the same seed and layer (torch's CPU generator)."""
    return torch.Generator().manual_seed(int(seed) * 1_000_003 + 7919 * int(layer))


def resampled_rows(
    hash_ids: torch.Tensor, pool: torch.Tensor, heads_per_ngram: int, seed: int, layer: int
) -> torch.Tensor:
    """(B, T, H) head-local rows read by a random *other* corpus N-gram of the same order.

    One draw per (position, order) from the pool: every head of an order then reads
    the rows of one real N-gram, as a true read would. A draw that lands on the N-gram
    already read (the same rows on every head of the order) moves to the next pool entry.
    """
    B, T, H = hash_ids.shape
    order_of_head = head_address(torch.arange(H, device=hash_ids.device), heads_per_ngram)[0] - 2  # (H,)
    n_orders = int(order_of_head[-1]) + 1
    P = len(pool)
    idx = torch.randint(P, (B, T, n_orders), generator=resample_generator(seed, layer)).to(hash_ids.device)
    pool = pool.to(hash_ids.device)

    def gather(i: torch.Tensor) -> torch.Tensor:
        return pool[i[..., order_of_head], torch.arange(H, device=hash_ids.device)]  # (B, T, H)

    rows = gather(idx)
    same = (rows == hash_ids).view(B, T, n_orders, heads_per_ngram).all(-1)  # (B, T, orders)
    return gather(torch.where(same, (idx + 1) % P, idx))


def sample_seeds(seed: int, samples: int) -> list[int]:
    """Seeds of the k resampled runs averaged by one knock-out: seed, seed+1, ..."""
    return [int(seed) + i for i in range(int(samples))]
