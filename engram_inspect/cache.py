"""Where derived data of a checkpoint is cached, keyed by what it was computed from."""

from __future__ import annotations

import os
from pathlib import Path

from engram_core import Checkpoint
from engram_core.checkpoint import checkpoint_key  # re-exported: the key lives with checkpoints
from engram_core.data import cache_dir

__all__ = ["cache_file", "checkpoint_key"]


def cache_file(ck: Checkpoint, name: str, suffix: str) -> Path:
    """`<name>-<key><suffix>` beside the checkpoint when that folder is writable, else in the user cache."""
    fname = f"{name}-{checkpoint_key(ck)}{suffix}"
    if ck.path is not None and os.access(ck.path, os.W_OK):
        return ck.path / fname
    folder = cache_dir() / "derived"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / fname
