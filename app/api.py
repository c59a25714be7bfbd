"""The HTTP API: the same features as the views, as JSON, for `gradio_client` and scripts.

Endpoints (documented in docs/api.md): /trace, /knockout, /attribution, /neighbours, and
/export (registered in app.main as an event, since it returns a file).
"""

from __future__ import annotations

from dataclasses import replace

import gradio as gr
import numpy as np

from engram_core.knockout import format_knockout, parse_knockout
from engram_inspect.diff import knockout_diff

from .session import InputError, Session, clean_input


def _mask(mask: str, mode: str | None = None):
    """The mask string as a KnockOut; `mode` (zero, mean, resample), when given, overrides a mode= item."""
    try:
        ko = parse_knockout(mask or "all")
        return replace(ko, mode=mode) if mode else ko
    except ValueError as e:
        raise gr.Error(str(e)) from e


def _capture(session: Session, text: str, mask: str, mode: str | None = None):
    try:
        return session.capture(text, _mask(mask, mode))
    except InputError as e:
        raise gr.Error(str(e)) from e


def _floats(a: np.ndarray) -> list:
    """JSON-safe floats: NaN (the last position has no next token) becomes None."""
    return [None if np.isnan(x) else round(float(x), 6) for x in np.asarray(a, dtype=np.float64).ravel()]


def trace_summary(session: Session, text: str, mask: str = "all", mode: str | None = None) -> dict:
    tr = _capture(session, text, mask, mode)
    return {
        "tokens": tr.tokens,
        "offsets": tr.offsets.tolist(),
        "compressed_ids": tr.compressed_ids.tolist(),
        "layers": list(tr.layers),
        "orders": list(tr.orders),
        "heads_per_ngram": tr.heads_per_ngram,
        "hash_rows": tr.hash_rows.tolist(),  # (layers, T, heads)
        "gate": np.round(tr.gate.astype(np.float64), 6).tolist(),  # (layers, T, branches)
        "gate_mean": _floats(tr.gate.mean(axis=(0, 2))),
        "logprob_next": _floats(tr.logprob_next),
        "masked_logprob_next": _floats(tr.masked_logprob_next),
        "kl": _floats(tr.kl),
        "lens_kl_on": _floats(tr.lens_kl_on.mean(1)),
        "lens_kl_off": _floats(tr.lens_kl_off.mean(1)),
        "mask": format_knockout(_mask(mask, mode)),
    }


def knockout_summary(session: Session, text: str, mask: str = "all", mode: str | None = None) -> dict:
    tr = _capture(session, text, mask, mode)
    d = knockout_diff(tr)
    return {
        "mask": format_knockout(_mask(mask, mode)),
        "tokens": tr.tokens,
        "delta_logprob": _floats(d.delta_logprob),
        "kl": _floats(d.kl),
        "top1_changed": d.top1_changed.tolist(),
        "mean_loss_change": round(d.mean_loss_change, 6),
        "mean_kl": round(d.mean_kl, 6),
        "top1_accuracy_on": d.top1_accuracy_on,
        "top1_accuracy_masked": d.top1_accuracy_masked,
        "biggest_losses": [
            {
                "position": x.position,
                "context": x.context,
                "target": x.target,
                "delta_logprob": round(x.delta_logprob, 6),
            }
            for x in d.biggest_losses
        ],
    }


def attribution_records(session: Session, text: str, position: int, method: str, mode: str | None) -> list[dict]:
    """Memory reads behind the prediction at a token position, strongest first (engram_inspect.attribution)."""
    from engram_inspect.attribution import attribute

    try:
        text = clean_input(text)
        if isinstance(position, float) and position.is_integer():
            position = int(position)  # JSON numbers may arrive as floats
        return session.run_model(lambda _m: attribute(session.ck, text, position, method or "exact", mode or "zero"))
    except ValueError as e:  # InputError included
        raise gr.Error(str(e).splitlines()[0] if str(e) else "bad input") from e


def neighbour_rows(session: Session, query: str, layer: int, order: int, head: int | None, k: int) -> list[dict]:
    """Nearest rows of a row ("L:N:K:R") or of the rows an N-gram's text reads."""
    from engram_inspect.collisions import ngram_text
    from engram_inspect.neighbours import nearest_ngram
    from engram_inspect.rows import RowAddress

    if not isinstance(query, str) or not query.strip():
        raise gr.Error("type an N-gram or a row L:N:K:R")
    index, labels = session.neighbour_index(), session.collisions()
    try:
        parts = query.strip().split(":")
        if len(parts) == 4 and all(p.strip().lstrip("-").isdigit() for p in parts):
            address = RowAddress(*(int(p) for p in parts))
            found = [(address, index.nearest_rows(address, k, labels))]
        else:
            found = [
                (r.address, r.neighbours)
                for r in nearest_ngram(session.ck, index, query, layer, order, head, k, labels)
            ]
    except ValueError as e:
        raise gr.Error(str(e)) from e
    out = []
    for query_address, neighbours in found:
        for nb in neighbours:
            a = nb.address
            grams = ", ".join(f"{ngram_text(session.ck, g)!r}×{c}" for g, c in nb.ngrams[:4])
            out.append(
                {
                    "query": [query_address.layer, query_address.order, query_address.head, query_address.row],
                    "layer": a.layer,
                    "order": a.order,
                    "head": a.head,
                    "row": a.row,
                    "similarity": round(nb.similarity, 6),
                    "ngrams": grams,
                }
            )
    return out


def register(session: Session) -> None:
    """API-only endpoints; call inside the Blocks context."""

    def trace(text: str, mask: str = "all", mode: str = "zero") -> dict:
        """Capture a text: tokens, rows read, gates, next-token log-probs on and under the mask, KL, logit lens.
        `mode` says what replaces removed rows: zero, mean or resample."""
        return trace_summary(session, text, mask, mode)

    def knockout(text: str, mask: str = "all", mode: str = "zero") -> dict:
        """Knock-out diff of a text under a mask (all, layer=L, order=N, head=L:N:K, branch=M, row=L:N:K:R)
        whose removed rows become zeros, their head's mean row or another corpus N-gram's row (`mode`)."""
        return knockout_summary(session, text, mask, mode)

    def attribution(text: str, position: int, method: str = "exact", mode: str = "zero") -> list[dict]:
        """Memory reads behind the prediction at token `position`: {layer, order, head, position_read, row,
        ngram, delta_logprob}, strongest first; method exact (conv's reach) or approx (every read)."""
        return attribution_records(session, text, position, method, mode)

    def neighbours(query: str, layer: int = 1, order: int = 2, head: int = 0, k: int = 10) -> list[dict]:
        """Nearest memory rows of an N-gram typed as text, or of a row "L:N:K:R"."""
        return neighbour_rows(session, query, int(layer), int(order), int(head), int(k))

    gr.api(trace, api_name="trace")
    gr.api(knockout, api_name="knockout")
    gr.api(attribution, api_name="attribution")
    gr.api(neighbours, api_name="neighbours")
