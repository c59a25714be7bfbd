"""Where derived data of a checkpoint is cached, keyed by what it was computed from.

Everything this package computes and keeps goes under the cache directory
(`ENGRAM_CACHE`, default `~/.cache/engram-inspector`), in one folder per checkpoint
key; nothing is ever written beside the weights, since a checkpoint folder may be
read-only or inside an installed package. The only files read from beside the
weights are those that ship precomputed with a model (`<name>-<key><suffix>`, e.g.
the default model's projections and mean gates).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from engram_core import Checkpoint
from engram_core.data import cache_dir


def checkpoint_key(ck: Checkpoint) -> str:
    """A short hash of the model config, compression map and weights: equal keys, equal model."""
    h = hashlib.sha256()
    h.update(json.dumps(ck.model.cfg.to_dict(), sort_keys=True).encode())
    h.update(ck.model.compression.cpu().numpy().tobytes())
    if ck.path is not None and (ck.path / "config.json").is_file():
        h.update(str(json.loads((ck.path / "config.json").read_text()).get("weights_sha256")).encode())
    else:
        for name, t in sorted(ck.model.state_dict().items()):
            h.update(name.encode())
            h.update(t.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def checkpoint_cache(ck: Checkpoint) -> Path:
    """This checkpoint's own folder in the cache directory (created on demand)."""
    folder = cache_dir() / checkpoint_key(ck)
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
