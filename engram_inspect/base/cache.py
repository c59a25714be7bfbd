"""Where derived data of a checkpoint is cached, keyed by what it was computed from.

Everything this package computes and keeps goes under the cache directory
(`ENGRAM_CACHE`, default `~/.cache/engram-inspector`), in the checkpoint's own folder
(`engram_core.checkpoint.checkpoint_cache_dir`); nothing is ever written beside the
weights, since a checkpoint folder may be read-only or inside an installed package.
The only files read from beside the weights are those that ship precomputed with a
model (`<name>-<key><suffix>`, e.g. the default model's projections and mean gates).
"""

from __future__ import annotations

from pathlib import Path

from engram_core import Checkpoint
from engram_core.checkpoint import checkpoint_cache_dir, checkpoint_key  # re-exported: they live with checkpoints

__all__ = ["SHIPPED_FILES", "cache_file", "checkpoint_cache", "checkpoint_key", "find_file", "shipped_file"]

# what ships precomputed beside the default model's weights, as `<name>-<key>.npz`
# (scripts/ship_derived.py writes them after a retrain)
SHIPPED_FILES = (
    "rowstats",
    "row-colours",
    "ablation",
    "mean-gate",
    *(f"projection-{m}-{s}pooled" for m in ("pca", "umap") for s in ("", "value-")),
)


def checkpoint_cache(ck: Checkpoint) -> Path:
    """This checkpoint's own folder in the cache directory, created on demand."""
    folder = checkpoint_cache_dir(ck)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def cache_file(ck: Checkpoint, name: str, suffix: str) -> Path:
    """Where to write `<name><suffix>` for this checkpoint: always inside `checkpoint_cache(ck)`."""
    return checkpoint_cache(ck) / f"{name}{suffix}"


def shipped_file(ck: Checkpoint, name: str, suffix: str) -> Path | None:
    """A file that ships precomputed beside the weights (`<name>-<key><suffix>`), if there is one."""
    if ck.path is None:
        return None
    path = Path(ck.path) / f"{name}-{checkpoint_key(ck)}{suffix}"
    return path if path.is_file() else None


def find_file(ck: Checkpoint, name: str, suffix: str) -> Path:
    """Where to read `<name><suffix>`: the shipped copy when present, else the cache path (may not exist yet)."""
    return shipped_file(ck, name, suffix) or cache_file(ck, name, suffix)
