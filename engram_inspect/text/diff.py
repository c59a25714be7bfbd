"""Knock-out diffs: what a mask costs each token, and the summary a user asks first.

A `Trace` holds predictions with memory on and under its mask, so one trace is
already a diff; two traces of the same text (say, different masks) compare the
first one's memory-on predictions with the second one's masked predictions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engram_core import KnockOut

from .capture import Trace


@dataclass(frozen=True)
class TokenLoss:
    position: int  # position t whose prediction of token t+1 changed
    context: str  # token t
    target: str  # token t+1, the one being predicted
    delta_logprob: float  # masked minus on: negative means the mask lost probability


@dataclass(frozen=True)
class KnockoutDiff:
    mask: KnockOut  # the knock-out that was applied
    delta_logprob: np.ndarray  # (T,) log p_masked(next) - log p_on(next); NaN at the last position
    kl: np.ndarray  # (T,) KL(on || masked)
    top1_changed: np.ndarray  # (T,) bool
    topk_overlap: np.ndarray  # (T,) how many of the on top-k stay in the masked top-k
    mean_loss_change: float  # mean increase of next-token loss (nats/token) under the mask
    mean_kl: float
    top1_accuracy_on: float  # share of positions whose top-1 is the actual next token
    top1_accuracy_masked: float
    biggest_losses: list[TokenLoss]  # the tokens that lost the most, worst first


def diff_traces(on: Trace, masked: Trace, top_n: int = 10) -> KnockoutDiff:
    """Memory-on predictions of `on` against the masked predictions of `masked` (same text)."""
    if on.text != masked.text or on.checkpoint != masked.checkpoint:
        raise ValueError("a diff needs two captures of the same text by the same checkpoint")
    d = masked.masked_logprob_next - on.logprob_next
    T = on.n_tokens
    valid = np.arange(T) < T - 1
    # same text and checkpoint give identical memory-on predictions, so the KL that
    # `masked` holds (its on || its mask) is exactly KL(on || masked) here
    kl = masked.kl
    overlap = np.array([len(set(a) & set(b)) for a, b in zip(on.topk_ids, masked.masked_topk_ids, strict=True)])
    order = np.argsort(np.where(valid, d, np.inf), kind="stable")[: min(top_n, int(valid.sum()))]
    losses = [TokenLoss(int(t), on.tokens[t], on.tokens[t + 1], float(d[t])) for t in order if valid[t] and d[t] < 0]
    targets = on.token_ids[1:]
    acc = lambda top: float((top[:-1, 0] == targets).mean()) if T > 1 else float("nan")  # noqa: E731
    return KnockoutDiff(
        mask=masked.mask,
        delta_logprob=d,
        kl=kl,
        top1_changed=on.topk_ids[:, 0] != masked.masked_topk_ids[:, 0],
        topk_overlap=overlap,
        mean_loss_change=float(-d[valid].mean()) + 0.0 if valid.any() else 0.0,
        mean_kl=float(kl.mean()),
        top1_accuracy_on=acc(on.topk_ids),
        top1_accuracy_masked=acc(masked.masked_topk_ids),
        biggest_losses=losses,
    )


def knockout_diff(trace: Trace, top_n: int = 10) -> KnockoutDiff:
    """The diff inside one trace: memory on against its own mask."""
    return diff_traces(trace, trace, top_n)
