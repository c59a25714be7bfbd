"""Plain JSON summaries of a trace and of its knock-out diff: what the HTTP API returns.

Only JSON types come out (lists, numbers, strings, None): NaN, which marks the last
position's missing next token, becomes None. The layout is documented in docs/api.md.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from engram_core.knockout import format_knockout

from .capture import Trace
from .diff import knockout_diff

DIGITS = 6  # decimals kept in the summaries' floats


def json_floats(a: np.ndarray) -> list:
    """A flat list of floats rounded to DIGITS, NaN as None."""
    return [None if np.isnan(x) else round(float(x), DIGITS) for x in np.asarray(a, dtype=np.float64).ravel()]


def trace_summary(tr: Trace) -> dict[str, Any]:
    """Tokens, rows read, gates, next-token log-probs on and under the mask, KL, and the mean logit lens."""
    return {
        "tokens": list(tr.tokens),
        "offsets": tr.offsets.tolist(),
        "compressed_ids": tr.compressed_ids.tolist(),
        "layers": list(tr.layers),
        "orders": list(tr.orders),
        "heads_per_ngram": tr.heads_per_ngram,
        "hash_rows": tr.hash_rows.tolist(),  # (layers, T, heads)
        "gate": np.round(tr.gate.astype(np.float64), DIGITS).tolist(),  # (layers, T, branches)
        "gate_mean": json_floats(tr.gate.mean(axis=(0, 2))),
        "logprob_next": json_floats(tr.logprob_next),
        "masked_logprob_next": json_floats(tr.masked_logprob_next),
        "kl": json_floats(tr.kl),
        "lens_kl_on": json_floats(tr.lens_kl_on.mean(1)),
        "lens_kl_off": json_floats(tr.lens_kl_off.mean(1)),
        "mask": format_knockout(tr.mask),
    }


def knockout_summary(tr: Trace) -> dict[str, Any]:
    """The knock-out diff inside one trace: per-token change, KL, top-1 flips and the biggest losses."""
    d = knockout_diff(tr)
    return {
        "mask": format_knockout(tr.mask),
        "tokens": list(tr.tokens),
        "delta_logprob": json_floats(d.delta_logprob),
        "kl": json_floats(d.kl),
        "top1_changed": d.top1_changed.tolist(),
        "mean_loss_change": round(d.mean_loss_change, DIGITS),
        "mean_kl": round(d.mean_kl, DIGITS),
        "top1_accuracy_on": d.top1_accuracy_on,
        "top1_accuracy_masked": d.top1_accuracy_masked,
        "biggest_losses": [
            {
                "position": x.position,
                "context": x.context,
                "target": x.target,
                "delta_logprob": round(x.delta_logprob, DIGITS),
            }
            for x in d.biggest_losses
        ],
    }
