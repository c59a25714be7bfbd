"""Byte-level BPE trained offline with Hugging Face `tokenizers`, plus safe encoding.

Byte-level means no text is ever unknown: emoji, CJK or control characters all
encode to byte tokens. Lone surrogates cannot be encoded as UTF-8 and are
replaced by U+FFFD before encoding.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

EOS = "<|endoftext|>"  # separates documents; also the raw pad token


def train_bpe(texts: Iterable[str], vocab_size: int = 4096) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


_SURROGATE = re.compile("[\ud800-\udfff]")


def clean_text(text: str) -> str:
    """Make any Python str encodable: each lone surrogate becomes one U+FFFD (offsets stay put)."""
    if not isinstance(text, str):
        raise TypeError(f"text must be str, got {type(text).__name__}")
    return _SURROGATE.sub("\ufffd", text)


def encode(tok: Tokenizer, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    """Token ids and character offsets of a text (empty text -> no tokens)."""
    enc = tok.encode(clean_text(text), add_special_tokens=False)
    return list(enc.ids), [tuple(o) for o in enc.offsets]


def batched(items: list[str], size: int) -> Iterator[list[str]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]
