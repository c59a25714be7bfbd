"""Corpus statistics behind knock-out modes `mean` and `resample`, per checkpoint.

- mean rows: each head's rows averaged with weights = how many training positions
  read each row (the collision index's counts), so the mean is what the head
  returns on average over the corpus, not over rows nobody reads;
- a resampling pool: the rows that POOL N-grams of each order, drawn in proportion
  to their training counts (so, corpus positions), read on every head.

Computed once from the collision index (`engram_inspect.memory.collisions`) and cached as
`ablation.npz` in the checkpoint's cache folder; a copy named `ablation-<key>.npz`
beside a checkpoint's weights (shipped with the default model) is used first.
`install(ck)` gives them to the model; `engram_core.ablation` says what each mode does.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from engram_core import Checkpoint
from engram_core.ablation import RowSource
from engram_core.checkpoint import checkpoint_cache_dir, checkpoint_key

from .collisions import CollisionIndex, load_or_build

POOL = 4096  # corpus N-grams per order in the resampling pool
FORMAT = "engram-ablation/1"


def row_sources(ck: Checkpoint, index: CollisionIndex, pool: int = POOL, seed: int = 0) -> dict[int, RowSource]:
    """Mean rows (weighted by corpus hits) and a pool of corpus reads, per Engram layer."""
    spec = index.spec
    if spec != ck.model.cfg.memory.hash_spec:
        raise ValueError("the collision index was built for another hash than this checkpoint's")
    rng = np.random.default_rng(seed)
    draws = {}
    for order in spec.orders:
        counts = np.asarray(index.counts[order], dtype=np.float64)
        if not counts.sum():
            raise ValueError("the corpus holds no N-grams to take statistics from")
        draws[order] = rng.choice(len(counts), size=pool, p=counts / counts.sum())
    out = {}
    for layer in spec.layer_ids:
        engram = ck.model.blocks[layer].engram
        weight = engram.table.weight.detach().double()
        means, rows = [], []
        for order in spec.orders:
            counts = np.asarray(index.counts[order], dtype=np.float64)
            for head in range(spec.heads_per_ngram):
                head_rows = index.rows(layer, order, head)  # row of every distinct N-gram
                prime = index.prime(layer, order, head)
                hits = torch.from_numpy(np.bincount(head_rows, weights=counts, minlength=prime))
                start = int(engram.offsets[spec.head_index(order, head)])
                means.append(hits @ weight[start : start + prime] / hits.sum())
                rows.append(head_rows[draws[order]])
        mean_rows = torch.stack(means).to(engram.table.weight.dtype)  # (H, Dh)
        out[layer] = RowSource(mean_rows, torch.from_numpy(np.stack(rows, 1)).long())  # pool (P, H)
    return out


def _paths(ck: Checkpoint) -> list[Path]:
    shipped = [ck.path / f"ablation-{checkpoint_key(ck)}.npz"] if ck.path is not None else []
    return [*shipped, checkpoint_cache_dir(ck) / "ablation.npz"]


def save_sources(sources: dict[int, RowSource], path: Path, key: str) -> Path:
    arrays = {"format": np.array(FORMAT), "key": np.array(key)}
    for layer, s in sources.items():
        arrays[f"mean_{layer}"] = s.mean_rows.float().numpy()
        arrays[f"pool_{layer}"] = s.pool.numpy().astype(np.int32)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez_compressed(tmp, **arrays)
    tmp.replace(path)
    return path


def load_sources(path: Path, ck: Checkpoint) -> dict[int, RowSource] | None:
    """The cached sources, or None when the file is missing, damaged or for another checkpoint."""
    try:
        with np.load(path) as z:
            if str(z["format"]) != FORMAT or str(z["key"]) != checkpoint_key(ck):
                return None
            dtype = ck.model.blocks[ck.model.engram_layers[0]].engram.table.weight.dtype
            return {
                L: RowSource(torch.from_numpy(z[f"mean_{L}"]).to(dtype), torch.from_numpy(z[f"pool_{L}"]).long())
                for L in ck.model.engram_layers
            }
    except (OSError, KeyError, ValueError):
        return None


def ensure_sources(ck: Checkpoint, progress=None) -> dict[int, RowSource]:
    """Load the checkpoint's sources from the shipped or cached file, else compute and cache them."""
    if ck.model.cfg.memory is None:
        raise ValueError("this checkpoint has no Engram memory to ablate")
    for path in _paths(ck):
        if path.is_file() and (found := load_sources(path, ck)) is not None:
            return found
    sources = row_sources(ck, load_or_build(ck, progress=progress))
    save_sources(sources, _paths(ck)[-1], checkpoint_key(ck))
    return sources


def install(ck: Checkpoint, progress=None) -> Checkpoint:
    """Make knock-out modes mean and resample available on this checkpoint's model (idempotent)."""
    model = ck.model
    if model.cfg.memory is not None and model.blocks[model.engram_layers[0]].engram.row_source is None:
        model.install_row_source(ensure_sources(ck, progress))
    return ck
