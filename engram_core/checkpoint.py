"""Checkpoints: one folder with `model.safetensors`, `config.json` and `tokenizer.json`.

No pickle anywhere. Loading checks every file, the weights' checksum, the
compression map against the tokenizer, and every tensor's name and shape, and
says which one is wrong.

Engram tables may be stored as FP8 (`table_format="fp8"`, recorded in config.json):
each `...engram.table.weight` is E4M3 and `...engram.table.weight_scale` holds one
uint8 E8M0 power-of-two scale per 32 values (ENGRAM.md §10, DeepSeek-V4.1's table
format). Loading dequantises them into the model's float parameters.
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
from .data import cache_dir
from .model import EngramLM
from .tables import FP8_BLOCK, dequantize_fp8, quantize_fp8

FORMAT = "engram-checkpoint/1"
DEFAULT_CHECKPOINT = Path(__file__).resolve().parent.parent / "assets" / "default-model"  # the shipped model
WEIGHTS, CONFIG, TOKENIZER = "model.safetensors", "config.json", "tokenizer.json"
HELDOUT = "heldout.npz"  # optional: the held-out token streams the model card was measured on
HELDOUT_FORMAT = "engram-heldout/1"
TABLE_SUFFIX, SCALE_SUFFIX = ".engram.table.weight", "_scale"  # `<table>_scale` beside an FP8 table
FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)  # what a checkpoint's weights may be stored as
TABLE_FORMATS = {"fp8": None, "bf16": torch.bfloat16, "fp32": torch.float32}  # None: E4M3 + E8M0 scales


class CheckpointError(ValueError):
    """A checkpoint folder that cannot be loaded, with the reason, in one line."""

    def __init__(self, message: str) -> None:
        # parsers' messages (JSON, tokenizers) may span lines; a CLI prints this as one
        super().__init__(" ".join(str(message).split()))


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


def checkpoint_key(ck: Checkpoint) -> str:
    """A short hash of the model config, compression map and weights: equal keys, equal model.

    Files shipped precomputed beside the default model carry this key in their
    names, so changing how it is computed orphans them.
    """
    h = hashlib.sha256()
    stored = None
    if ck.path is not None and (ck.path / CONFIG).is_file():
        stored = json.loads((ck.path / CONFIG).read_text())
    # subtle: a saved checkpoint is keyed by the config as saved, not as this version of the
    # code re-serialises it: a field added later (with a default that keeps old checkpoints
    # computing as they were trained) must not orphan the files shipped beside the weights
    cfg = stored["model"] if stored is not None and isinstance(stored.get("model"), dict) else ck.model.cfg.to_dict()
    h.update(json.dumps(cfg, sort_keys=True).encode())
    h.update(ck.model.compression.cpu().numpy().tobytes())
    if stored is not None:
        h.update(str(stored.get("weights_sha256")).encode())
    else:
        for name, t in sorted(ck.model.state_dict().items()):
            h.update(name.encode())
            h.update(t.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def checkpoint_cache_dir(ck: Checkpoint) -> Path:
    """Where data derived from this checkpoint is cached: `cache_dir()/<checkpoint_key>` (not created here).

    Never the checkpoint's own folder, which may be read-only or inside an installed package.
    """
    return cache_dir() / checkpoint_key(ck)


def fp8_tables(model: EngramLM) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Every Engram table of a model quantised: name -> (E4M3 bytes (rows, d), E8M0 bytes (rows, d / 32))."""
    out = {}
    for name, w in model.state_dict().items():
        if not name.endswith(TABLE_SUFFIX):
            continue
        if w.shape[1] % FP8_BLOCK:
            raise ValueError(f"{name} rows are {w.shape[1]} wide: FP8 tables need a multiple of {FP8_BLOCK}")
        out[name] = quantize_fp8(w.detach().float().cpu().numpy())
    return out


def _table_state(model: EngramLM, table_format: str, state: dict[str, torch.Tensor]) -> str:
    """Replace the tables in `state` by their stored form; the format's name for config.json."""
    if table_format not in TABLE_FORMATS:
        raise ValueError(f"table_format {table_format!r} is not one of {', '.join(TABLE_FORMATS)}")
    dtype = TABLE_FORMATS[table_format]
    if dtype is not None:
        for name in [k for k in state if k.endswith(TABLE_SUFFIX)]:
            state[name] = model.state_dict()[name].detach().to(dtype).contiguous()
        return str(dtype).removeprefix("torch.")
    for name, (q, s) in fp8_tables(model).items():
        state[name] = torch.from_numpy(q).view(torch.float8_e4m3fn)
        state[name + SCALE_SUFFIX] = torch.from_numpy(s)
    return "fp8"


def save_checkpoint(
    folder: str | Path,
    model: EngramLM,
    tokenizer: Tokenizer,
    meta: dict[str, Any] | None = None,
    dtype: torch.dtype = torch.float32,
    table_format: str | None = None,
) -> Path:
    """Write a checkpoint; `table_format` ("fp8", "bf16", "fp32") stores the Engram tables
    differently from the other weights (None: in `dtype` like everything else)."""
    folder = Path(folder)
    state = {k: v.detach().to(dtype).contiguous() for k, v in model.state_dict().items()}
    tables = _table_state(model, table_format, state) if table_format else str(dtype).removeprefix("torch.")
    folder.mkdir(parents=True, exist_ok=True)
    save_file(state, folder / WEIGHTS, metadata={"format": FORMAT})
    tokenizer.save(str(folder / TOKENIZER))
    table = model.compression.cpu().numpy()
    config = {
        "format": FORMAT,
        "model": model.cfg.to_dict(),
        "hash_spec": None,
        "compression": {"raw_size": int(len(table)), "size": int(table.max()) + 1, "table": table.tolist()},
        "weights_dtype": str(dtype).removeprefix("torch."),
        "table_format": tables,
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


def save_card(folder: str | Path, card: dict[str, Any], markdown: str) -> None:
    """Write MODEL_CARD.json and MODEL_CARD.md beside the weights: part of the checkpoint, shipped with it."""
    folder = Path(folder)
    (folder / "MODEL_CARD.json").write_text(json.dumps(card, indent=1))
    (folder / "MODEL_CARD.md").write_text(markdown)


def tokenizer_digest(tokenizer: Tokenizer) -> str:
    return hashlib.sha256(tokenizer.to_str().encode()).hexdigest()


def save_heldout(folder: str | Path, tokenizer: Tokenizer, streams: dict[str, np.ndarray], meta: dict) -> Path:
    """Write the held-out streams (`val/<domain>` -> token ids) beside the weights: part of the checkpoint.

    The code domain is modules of the standard library of the interpreter that trained the model;
    with the tokens stored, every number of the model card is reproduced on any interpreter.
    """
    path = Path(folder) / HELDOUT
    info = {"format": HELDOUT_FORMAT, "tokenizer_sha256": tokenizer_digest(tokenizer), **meta}
    arrays = {
        k: np.asarray(v, np.uint16 if tokenizer.get_vocab_size() <= 1 << 16 else np.int32) for k, v in streams.items()
    }
    np.savez_compressed(path, meta=np.asarray(json.dumps(info)), **arrays)
    return path


def load_heldout(ck: Checkpoint) -> tuple[dict[str, np.ndarray], dict] | None:
    """(held-out streams, their facts) stored with the checkpoint, or None: no file, or one made
    with another tokenizer (its tokens would mean other text)."""
    path = None if ck.path is None else Path(ck.path) / HELDOUT
    if path is None or not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as f:
            meta = json.loads(str(f["meta"]))
            streams = {k: f[k] for k in f.files if k.startswith("val/")}
    except (OSError, KeyError, ValueError) as e:
        raise CheckpointError(f"{path} cannot be read: {e}") from e
    if meta.get("format") != HELDOUT_FORMAT or meta.get("tokenizer_sha256") != tokenizer_digest(ck.tokenizer):
        return None
    return streams, meta


def _read_config(folder: Path) -> dict[str, Any]:
    try:
        config = json.loads((folder / CONFIG).read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{folder / CONFIG} is not valid JSON ({e})") from e
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise CheckpointError(f"{folder / CONFIG} is not an {FORMAT} config")
    return config


def _parse(folder: Path, config: dict[str, Any]) -> tuple[ModelConfig, Tokenizer]:
    """The model config (with its hash spec built, so bad table sizes show here) and the tokenizer."""
    try:
        cfg = ModelConfig.from_dict(config["model"])
        if cfg.memory is not None:
            cfg.memory.hash_spec.primes  # noqa: B018 - validates table_sizes, max_ngram, pad_id
    except KeyError as e:
        raise CheckpointError(f"checkpoint {folder}: {CONFIG} has no {e} entry") from e
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"checkpoint {folder}: bad model config in {CONFIG}: {e}") from e
    try:
        tokenizer = Tokenizer.from_file(str(folder / TOKENIZER))
    except Exception as e:  # the tokenizers parser raises its own exception types
        raise CheckpointError(f"checkpoint {folder}: {TOKENIZER} cannot be read: {e}") from e
    if tokenizer.get_vocab_size() != cfg.backbone.vocab_size:
        raise CheckpointError(
            f"tokenizer has {tokenizer.get_vocab_size()} tokens, the model expects {cfg.backbone.vocab_size}"
        )
    return cfg, tokenizer


def _compression(config: dict[str, Any], cfg: ModelConfig, tokenizer: Tokenizer) -> np.ndarray:
    """The saved compression map, checked against the tokenizer and `memory.vocab_size`."""
    try:
        table = np.asarray(config["compression"]["table"], dtype=np.int64)
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{CONFIG} has no readable compression map ('compression': {{'table': [...]}})") from e
    rebuilt = build_compression(tokenizer)
    if table.shape != rebuilt.table.shape or not np.array_equal(rebuilt.table, table):
        raise CheckpointError(f"compression map in {CONFIG} does not match {TOKENIZER}")
    if cfg.memory is not None and cfg.memory.vocab_size != rebuilt.size:
        raise CheckpointError(
            f"memory.vocab_size is {cfg.memory.vocab_size} in {CONFIG}, but the compression map has "
            f"{rebuilt.size} ids: the hash would read other rows"
        )
    return table


def _check_hash_spec(config: dict[str, Any], cfg: ModelConfig) -> None:
    """Saved primes and multipliers must equal those recomputed now.

    They are recomputed from the config and NumPy's generator, which does not
    promise the same draws across versions; a mismatch means every N-gram would
    read other rows than in training. A checkpoint saved without them (an older
    format) is recomputed and accepted.
    """
    saved = config.get("hash_spec")
    if cfg.memory is None or saved is None:
        return
    spec = cfg.memory.hash_spec
    if not isinstance(saved, dict) or not all(isinstance(saved.get(k), dict) for k in ("primes", "multipliers")):
        raise CheckpointError(f"hash_spec in {CONFIG} is not {{'primes': {{layer: [...]}}, 'multipliers': {{...}}}}")
    for layer in spec.layer_ids:
        for name, want in (("primes", list(spec.primes[layer])), ("multipliers", spec.multipliers[layer].tolist())):
            got = saved[name].get(str(layer))
            if got is None:
                raise CheckpointError(f"{name} of layer {layer} are missing from hash_spec in {CONFIG}")
            if got != want:
                raise CheckpointError(
                    f"{name} of layer {layer} in {CONFIG} ({got}) differ from those recomputed now ({want}): "
                    "the hash would read other rows (memory.seed edited, or a different hashing or NumPy version)"
                )


def _dequantise_tables(state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    """Turn each FP8 table and its scale tensor in `state` into one float table, checking both first."""
    for name in [k for k in expected if k.endswith(TABLE_SUFFIX)]:
        scale_name = name + SCALE_SUFFIX
        if name not in state or scale_name not in state:
            raise CheckpointError(f"FP8 checkpoint: missing tensor {name if name not in state else scale_name}")
        q, s = state[name], state.pop(scale_name)
        rows, d = expected[name].shape
        if q.dtype != torch.float8_e4m3fn or tuple(q.shape) != (rows, d):
            raise CheckpointError(
                f"{name}: {q.dtype} {tuple(q.shape)} but an FP8 table must be float8_e4m3fn {(rows, d)}"
            )
        if s.dtype != torch.uint8 or tuple(s.shape) != (rows, d // FP8_BLOCK):
            raise CheckpointError(
                f"{scale_name}: {s.dtype} {tuple(s.shape)} but the scales must be uint8 {(rows, d // FP8_BLOCK)} "
                f"(one E8M0 exponent per {FP8_BLOCK} values)"
            )
        if bool((s == 255).any()):
            raise CheckpointError(f"{scale_name} holds 0xFF, E8M0's NaN: the scales are corrupted")
        state[name] = torch.from_numpy(dequantize_fp8(q.view(torch.uint8).numpy(), s.numpy()))


def _stored_dtypes(config: dict[str, Any]) -> tuple[torch.dtype | None, torch.dtype | None]:
    """(dtype of every weight but the tables, dtype of the tables once loaded) as config.json records
    them; None where it records nothing readable (older checkpoints: any float dtype)."""

    def named(name: object) -> torch.dtype | None:
        dt = getattr(torch, name, None) if isinstance(name, str) else None
        return dt if isinstance(dt, torch.dtype) and dt in FLOAT_DTYPES else None

    weights = named(config.get("weights_dtype"))
    fmt = config.get("table_format")
    tables = torch.float32 if fmt == "fp8" else named(fmt) if fmt else weights  # FP8 is dequantised to float32
    return weights, tables


def _check_values(state: dict[str, torch.Tensor], weights: torch.dtype | None, tables: torch.dtype | None) -> None:
    """Every tensor in the dtype config.json records (a float dtype at least) and finite: a NaN or an
    int32 embedding would otherwise load silently once the checksum is updated."""
    for name, t in state.items():
        want = tables if name.endswith(TABLE_SUFFIX) else weights
        if t.dtype not in FLOAT_DTYPES or (want is not None and t.dtype != want):
            expected = str(want).removeprefix("torch.") if want else "float32, bfloat16 or float16"
            raise CheckpointError(f"{name} is stored as {str(t.dtype).removeprefix('torch.')}, expected {expected}")
        bad = int((~torch.isfinite(t)).sum())
        if bad:
            raise CheckpointError(f"{name} holds {bad:,} NaN or infinite values: the weights are corrupted")


def _load_weights(folder: Path, model: EngramLM, config: dict[str, Any]) -> None:
    table_format = config.get("table_format")
    try:
        state = load_file(str(folder / WEIGHTS))
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{folder / WEIGHTS} cannot be read: {e}") from e
    expected = model.state_dict()
    if table_format == "fp8":
        _dequantise_tables(state, expected)
    _check_values(state, *_stored_dtypes(config))
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


def load_checkpoint(folder: str | Path, verify: bool = True) -> Checkpoint:
    """Load and validate a checkpoint folder; every failure is a one-line CheckpointError."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"checkpoint folder {folder} does not exist")
    missing = [n for n in (WEIGHTS, CONFIG, TOKENIZER) if not (folder / n).is_file()]
    if missing:
        raise CheckpointError(f"checkpoint {folder} is missing {', '.join(missing)}")
    config = _read_config(folder)
    if verify and config.get("weights_sha256") != sha256_file(folder / WEIGHTS):
        raise CheckpointError(f"{folder / WEIGHTS} does not match its checksum in {CONFIG}: the file is corrupted")
    cfg, tokenizer = _parse(folder, config)
    table = _compression(config, cfg, tokenizer)
    try:
        model = EngramLM(cfg, table)
    except ValueError as e:
        raise CheckpointError(f"checkpoint {folder}: {e}") from e
    # older checkpoints have no entry: their tables are stored like every other weight
    _load_weights(folder, model, config)  # first: a changed layer list is best named by its tensors
    _check_hash_spec(config, cfg)
    model.eval()
    return Checkpoint(model=model, tokenizer=tokenizer, meta=config.get("meta", {}), path=folder)
