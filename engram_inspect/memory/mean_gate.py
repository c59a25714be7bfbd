"""Mean gate per memory row: how far the gate opens, on average, when a row is read.

Computed over a sample of the held-out plays and modules and cached per checkpoint
(`cache.cache_file`); a copy shipped beside the weights is read first.
"""

from __future__ import annotations

import contextlib

import numpy as np

from engram_core import Checkpoint

from ..base.cache import cache_file, find_file
from .health import mean_gate_per_row
from .rows import RowAddress, RowLayout

NAME = "mean-gate"


def mean_gate_flat(ck: Checkpoint, streams, max_tokens: int = 16_384) -> np.ndarray:
    """Per flat row id (`RowLayout`), the mean alpha of the sampled tokens that read it; NaN where none did."""
    per_head = mean_gate_per_row(ck, streams, max_tokens)
    layout = RowLayout.of(ck)
    out = np.full(layout.total, np.nan, dtype=np.float32)
    for (layer, order, head), values in per_head.items():
        start = layout.flat(RowAddress(layer, order, head, 0))
        out[start : start + len(values)] = values
    return out


def held_out_streams(ck: Checkpoint) -> list[np.ndarray]:
    """The held-out plays and modules, tokenized with the checkpoint's tokenizer (those stored with it first)."""
    from engram_core.pipeline import heldout_streams

    return [v for _, v in sorted(heldout_streams(ck, log=lambda *_: None).items())]


def load_or_compute(ck: Checkpoint, lock=None, streams=None, max_tokens: int = 16_384) -> np.ndarray:
    """The cached mean gate per flat row, computed (under `lock`, if given) and saved on first use."""
    source = find_file(ck, NAME, ".npz")
    if source.is_file():
        with np.load(source, allow_pickle=False) as f:
            return f["mean_gate"].astype(np.float32)
    streams = held_out_streams(ck) if streams is None else streams
    with lock if lock is not None else contextlib.nullcontext():
        values = mean_gate_flat(ck, streams, max_tokens)
    np.savez_compressed(cache_file(ck, NAME, ".npz"), mean_gate=values.astype(np.float16))
    return values
