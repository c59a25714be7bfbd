"""The HTTP API: the same features as the views, as JSON, for `gradio_client` and scripts.

Endpoints (documented in docs/api.md): /trace, /knockout, /neighbours, and /export
(registered in app.main as an event, since it returns a file).
"""

from __future__ import annotations

import re

import gradio as gr

from engram_core.knockout import parse_knockout
from engram_inspect.capture import Trace
from engram_inspect.summary import knockout_summary, trace_summary

from .session import Session


def user_trace(session: Session, text: str, mask: str | None) -> Trace:
    """The one way from what a user typed (text, mask string) to a trace; bad input is a one-line gr.Error.

    The mask string becomes a KnockOut here, once (`parse_knockout`); the model checks it
    against its own layers, orders, heads, branches and rows, and says which item is wrong.
    """
    try:
        return session.capture(text, parse_knockout(mask or "all"))
    except ValueError as e:  # InputError included
        raise gr.Error(str(e).splitlines()[0] if str(e) else "bad input") from e


ROW_QUERY = re.compile(r"-?\d+(\s*:\s*-?\d+){3}")  # a row address L:N:K:R, not an N-gram's text


def neighbour_rows(session: Session, query: str, layer: int, order: int, head: int | None, k: int) -> list[dict]:
    """Nearest rows of a row ("L:N:K:R") or of the rows an N-gram's text reads."""
    from engram_core.addresses import RowAddress
    from engram_inspect.collisions import ngram_text
    from engram_inspect.neighbours import nearest_ngram

    if not isinstance(query, str) or not query.strip():
        raise gr.Error("type an N-gram or a row L:N:K:R")
    index, labels = session.neighbour_index(), session.collisions()
    try:
        if ROW_QUERY.fullmatch(query.strip()):
            address = RowAddress.parse(query)
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

    def trace(text: str, mask: str = "all") -> dict:
        """Capture a text: tokens, rows read, gates, next-token log-probs on and under the mask, KL, logit lens."""
        return trace_summary(user_trace(session, text, mask))

    def knockout(text: str, mask: str = "all") -> dict:
        """Knock-out diff of a text under a mask (all, layer=L, order=N, head=L:N:K, branch=M, row=L:N:K:R)."""
        return knockout_summary(user_trace(session, text, mask))

    def neighbours(query: str, layer: int = 1, order: int = 2, head: int = 0, k: int = 10) -> list[dict]:
        """Nearest memory rows of an N-gram typed as text, or of a row "L:N:K:R"."""
        return neighbour_rows(session, query, int(layer), int(order), int(head), int(k))

    gr.api(trace, api_name="trace")
    gr.api(knockout, api_name="knockout")
    gr.api(neighbours, api_name="neighbours")
