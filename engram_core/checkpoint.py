"""Checkpoints: one folder with `model.safetensors`, `config.json` and `tokenizer.json`.

No pickle anywhere. Loading checks every file, the weights' checksum, the
compression map against the tokenizer, and every tensor's name and shape, and
says which one is wrong.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer

from .compression import build_compression
from .config import ModelConfig
from .model import EngramLM

FORMAT = "engram-checkpoint/1"
WEIGHTS, CONFIG, TOKENIZER = "model.safetensors", "config.json", "tokenizer.json"


class CheckpointError(ValueError):
    """A checkpoint folder that cannot be loaded, with the reason."""


@dataclass
class Checkpoint:
    model: EngramLM
    tokenizer: Tokenizer
    meta: dict[str, Any]  # free-form facts saved with the weights (training, corpus)
    path: Path | None = None


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_checkpoint(
    folder: str | Path,
    model: EngramLM,
    tokenizer: Tokenizer,
    meta: dict[str, Any] | None = None,
    dtype: torch.dtype = torch.float32,
) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to(dtype).contiguous() for k, v in model.state_dict().items()}
    save_file(state, folder / WEIGHTS, metadata={"format": FORMAT})
    tokenizer.save(str(folder / TOKENIZER))
    table = model.compression.cpu().numpy()
    config = {
        "format": FORMAT,
        "model": model.cfg.to_dict(),
        "hash_spec": None,
        "compression": {"raw_size": int(len(table)), "size": int(table.max()) + 1, "table": table.tolist()},
        "weights_dtype": str(dtype).removeprefix("torch."),
        "weights_sha256": sha256_file(folder / WEIGHTS),
        "meta": meta or {},
    }
    if model.cfg.memory is not None:
        spec = model.cfg.memory.hash_spec
        config["hash_spec"] = {
            "primes": {str(k): list(v) for k, v in spec.primes.items()},
            "multipliers": {str(k): v.tolist() for k, v in spec.multipliers.items()},
        }
    (folder / CONFIG).write_text(json.dumps(config, indent=1))
    return folder


def _read_config(folder: Path) -> dict[str, Any]:
    try:
        config = json.loads((folder / CONFIG).read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{folder / CONFIG} is not valid JSON ({e})") from e
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise CheckpointError(f"{folder / CONFIG} is not an {FORMAT} config")
    return config


def load_checkpoint(folder: str | Path, verify: bool = True) -> Checkpoint:
    """Load and validate a checkpoint folder; raises CheckpointError with the reason."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"checkpoint folder {folder} does not exist")
    missing = [n for n in (WEIGHTS, CONFIG, TOKENIZER) if not (folder / n).is_file()]
    if missing:
        raise CheckpointError(f"checkpoint {folder} is missing {', '.join(missing)}")
    config = _read_config(folder)
    if verify and config.get("weights_sha256") != sha256_file(folder / WEIGHTS):
        raise CheckpointError(f"{folder / WEIGHTS} does not match its checksum in {CONFIG}: the file is corrupted")
    try:
        cfg = ModelConfig.from_dict(config["model"])
        tokenizer = Tokenizer.from_file(str(folder / TOKENIZER))
    except Exception as e:  # a bad config or tokenizer file: any parser error, one clear message
        raise CheckpointError(f"checkpoint {folder}: {e}") from e
    table = np.asarray(config["compression"]["table"], dtype=np.int64)
    rebuilt = build_compression(tokenizer)
    if not np.array_equal(rebuilt.table, table):
        raise CheckpointError(f"compression map in {CONFIG} does not match {TOKENIZER}")
    if tokenizer.get_vocab_size() != cfg.backbone.vocab_size:
        raise CheckpointError(
            f"tokenizer has {tokenizer.get_vocab_size()} tokens, the model expects {cfg.backbone.vocab_size}"
        )
    model = EngramLM(cfg, table)
    try:
        state = load_file(str(folder / WEIGHTS))
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{folder / WEIGHTS} cannot be read: {e}") from e
    expected = model.state_dict()
    problems = [f"missing tensor {k}" for k in expected if k not in state]
    problems += [f"unexpected tensor {k}" for k in state if k not in expected]
    problems += [
        f"{k}: shape {tuple(state[k].shape)} but the config gives {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    if problems:
        raise CheckpointError(f"weights do not match the config: {'; '.join(problems[:5])}")
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()})
    model.eval()
    return Checkpoint(model=model, tokenizer=tokenizer, meta=config.get("meta", {}), path=folder)
