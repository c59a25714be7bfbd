"""Where derived data of a checkpoint is cached, keyed by what it was computed from."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from engram_core import Checkpoint
from engram_core.data import cache_dir


def checkpoint_key(ck: Checkpoint) -> str:
    """A short hash of the model config, compression map and weights: equal keys, equal model."""
    h = hashlib.sha256()
    h.update(json.dumps(ck.model.cfg.to_dict(), sort_keys=True).encode())
    h.update(ck.model.compression.numpy().tobytes())
    if ck.path is not None and (ck.path / "config.json").is_file():
        h.update(str(json.loads((ck.path / "config.json").read_text()).get("weights_sha256")).encode())
    else:
        for name, t in sorted(ck.model.state_dict().items()):
            h.update(name.encode())
            h.update(t.detach().float().numpy().tobytes())
    return h.hexdigest()[:16]


def cache_file(ck: Checkpoint, name: str, suffix: str) -> Path:
    """`<name>-<key><suffix>` beside the checkpoint when that folder is writable, else in the user cache."""
    fname = f"{name}-{checkpoint_key(ck)}{suffix}"
    if ck.path is not None and os.access(ck.path, os.W_OK):
        return ck.path / fname
    folder = cache_dir() / "derived"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / fname
