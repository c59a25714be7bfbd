"""The checks every family's released config.json goes through, each failing in one line."""

from __future__ import annotations

from ..layout import LayoutError


def positive_int(config: dict, key: str, defaults: dict | None = None) -> int:
    v = config.get(key, (defaults or {}).get(key))
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        raise LayoutError(f"config.json: {key} must be a positive integer, got {v!r}")
    return v


def eos_token(config: dict, vocab: int, lowest: int = 0) -> int:
    """The config's EOS id (the first of a list), in lowest..vocab - 1."""
    eos = config.get("eos_token_id")
    eos = eos[0] if isinstance(eos, list) and eos else eos
    if not isinstance(eos, int) or isinstance(eos, bool) or not lowest <= eos < vocab:
        raise LayoutError(f"config.json: eos_token_id {eos!r} is outside the vocabulary {lowest}..{vocab - 1}")
    return eos


def check_tokenizer(tokenizer, vocab: int) -> None:
    """A tokenizer whose ids run past the config's vocabulary belongs to another model."""
    if tokenizer is not None and tokenizer.get_vocab_size() > vocab:
        raise LayoutError(
            f"the tokenizer has {tokenizer.get_vocab_size():,} ids but vocab_size is {vocab:,}: wrong tokenizer"
        )
