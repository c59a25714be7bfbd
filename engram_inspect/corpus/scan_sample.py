"""`engram scan --sample-tokens N`: about N tokens spread evenly over the corpus.

N is split over the shards as evenly as whole tokens allow; each shard's map keeps at
most its share, whole documents first and the last one cut at a token boundary, so the
sample is at most N tokens and covers the corpus from its first shard to its last.
"""

from __future__ import annotations

import math

import numpy as np


class SampleError(ValueError):
    """A bad --sample-tokens value; one line."""


def shard_caps(sample_tokens: int | None, n_shards: int) -> list[int | None]:
    """Tokens each shard's map keeps so that the sample is about `sample_tokens`, spread evenly:
    N split as evenly as whole tokens allow (the first N mod shards shards keep one more), so the
    caps add up to N exactly and a shard shorter than its cap gives all it has."""
    if sample_tokens is None:
        return [None] * n_shards
    if isinstance(sample_tokens, bool) or not isinstance(sample_tokens, int) or sample_tokens <= 0:
        raise SampleError(f"--sample-tokens takes a positive whole number of tokens, got {sample_tokens!r}")
    base, extra = divmod(sample_tokens, n_shards)
    return [base + (i < extra) for i in range(n_shards)]


def tokenize_capped(layout, texts: list[str], cap: int | None, batch: int = 64) -> list[np.ndarray]:
    """The shard's documents as token ids, at most `cap` tokens in all: whole documents first,
    the last one cut at a token boundary. Tokenises a batch at a time, so a small cap stops early."""
    from .texts import tokenize

    if cap is None:
        return tokenize(layout, texts)
    docs, left = [], cap
    for i in range(0, len(texts), batch):
        for ids in tokenize(layout, texts[i : i + batch]):
            if left <= 0:  # a cap of 0 (more shards than N) keeps no document
                return docs
            docs.append(ids[:left])  # N-grams of a cut document still end at its (new) end
            left -= len(docs[-1])
    return docs


def parse_sample_tokens(text: str) -> int:
    """--sample-tokens as an int: '1000000', '1_000_000' or '1e6' (a whole number), else one line."""
    try:
        value = float(text) if any(c in text.lower() for c in ".e") else int(text)
    except ValueError:
        value = 0.5  # not a number: the same line as a fraction
    if not math.isfinite(value) or value != int(value) or value <= 0:
        raise SampleError(f"--sample-tokens takes a positive whole number of tokens, got {text!r}")
    return int(value)
