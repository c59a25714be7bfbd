"""Tokenizer compression P: V -> V' (ENGRAM.md §1, paper §2.2 and App. C).

Raw token ids that decode to the same normalised text share one canonical id,
so "Apple", " apple" and "APPLE" hash as one N-gram. Built once per tokenizer;
the map is a plain int array saved with the checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tokenizers import Regex, Tokenizer, normalizers

SENTINEL = "\ue000"  # stands in for a lone space while Strip runs (§1)


def key_normalizer() -> normalizers.Normalizer:
    """The reference key normaliser: NFKC, NFD, strip accents, lowercase, squash whitespace."""
    return normalizers.Sequence(
        [
            normalizers.NFKC(),
            normalizers.NFD(),
            normalizers.StripAccents(),
            normalizers.Lowercase(),
            normalizers.Replace(Regex(r"[ \t\r\n]+"), " "),
            normalizers.Replace(Regex(r"^ $"), SENTINEL),
            normalizers.Strip(),
            normalizers.Replace(SENTINEL, " "),
        ]
    )


@dataclass(frozen=True)
class Compression:
    """raw id -> compressed id, and the compressed vocabulary size V'."""

    table: np.ndarray  # (V,) int64, raw id -> compressed id
    size: int  # V'

    @property
    def raw_size(self) -> int:
        return len(self.table)

    @property
    def reduction(self) -> float:
        """Share of the raw vocabulary removed by compression (paper: 23.4 % at 128k)."""
        return 1.0 - self.size / self.raw_size

    def __call__(self, ids: np.ndarray) -> np.ndarray:
        return self.table[np.asarray(ids, dtype=np.int64)]


def compression_keys(tokenizer: Tokenizer) -> list[str]:
    """The normalised key of every raw id, in id order."""
    norm = key_normalizer()
    keys = []
    for i in range(tokenizer.get_vocab_size()):
        text = tokenizer.decode([i], skip_special_tokens=False)
        raw = tokenizer.id_to_token(i) or ""
        if "\ufffd" in text:
            # subtle: a partial UTF-8 byte sequence decodes to U+FFFD; keying on
            # the text would merge every such token into one id (CALIBRATION.md).
            keys.append(raw)
            continue
        key = norm.normalize_str(text)
        keys.append(key if key else text)
    return keys


def build_compression(tokenizer: Tokenizer) -> Compression:
    """Equal keys share one new id, numbered in first-seen order of raw ids."""
    first_seen: dict[str, int] = {}
    table = np.empty(tokenizer.get_vocab_size(), dtype=np.int64)
    for i, key in enumerate(compression_keys(tokenizer)):
        table[i] = first_seen.setdefault(key, len(first_seen))
    return Compression(table=table, size=len(first_seen))
