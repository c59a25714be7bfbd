"""The HTTP API: the same features as the views, as JSON, for `gradio_client` and scripts.

Endpoints (documented in docs/api.md): /trace, /knockout, /attribution, /neighbours, and
/export (registered in app.main as an event, since it returns a file).
"""

from __future__ import annotations

import re

import gradio as gr

from engram_core.knockout import parse_knockout
from engram_inspect.text.capture import Trace
from engram_inspect.text.summary import knockout_summary, trace_summary

from .session import MAX_CHARS, MAX_NEIGHBOURS, Session, clean_input


def user_trace(session: Session, text: str, mask: str | None, mode: str | None = None) -> Trace:
    """The one way from what a user typed (text, mask string) to a trace; bad input is a one-line gr.Error.

    The mask string becomes a KnockOut here, once (`parse_knockout`); the model checks it
    against its own layers, orders, heads, branches and rows, and says which item is wrong.
    """
    try:
        # a mode= item in the mask and a separate `mode` must agree (parse_knockout refuses otherwise)
        return session.capture(text, parse_knockout(mask or "all", mode=mode or None))
    except ValueError as e:  # InputError included
        raise gr.Error(str(e).splitlines()[0] if str(e) else "bad input") from e


def attribution_records(session: Session, text: str, position: int, method: str, mode: str | None) -> list[dict]:
    """Memory reads behind the prediction at a token position, strongest first (engram_inspect.text.attribution)."""
    from engram_inspect.text.attribution import attribute

    try:
        text = clean_input(text)
        if isinstance(position, float) and position.is_integer():
            position = int(position)  # JSON numbers may arrive as floats
        return session.run_model(lambda _m: attribute(session.ck, text, position, method or "exact", mode or "zero"))
    except ValueError as e:  # InputError included
        raise gr.Error(str(e).splitlines()[0] if str(e) else "bad input") from e


ROW_QUERY = re.compile(r"-?\d+(\s*:\s*-?\d+){3}")  # a row address L:N:K:R, not an N-gram's text


def neighbour_rows(
    session: Session, query: str, layer: int, order: int, head: int | None, k: int, space: str = "value"
) -> list[dict]:
    """Nearest rows of a row ("L:N:K:R") or of the rows an N-gram's text reads, in value space (any head,
    any layer) or in raw-row space (the query's own head only)."""
    from engram_core.addresses import RowAddress
    from engram_inspect.memory.collisions import ngram_text
    from engram_inspect.memory.neighbours import ngram_neighbours, row_neighbours

    if not isinstance(query, str) or not query.strip():
        raise gr.Error("type an N-gram or a row L:N:K:R")
    if len(query) > MAX_CHARS:
        raise gr.Error(f"the query has {len(query):,} characters; the app takes at most {MAX_CHARS:,}")
    if not 1 <= k <= MAX_NEIGHBOURS:
        raise gr.Error(f"k={k}: ask for 1 to {MAX_NEIGHBOURS} neighbours")
    if space not in ("value", "raw"):
        raise gr.Error(f"unknown neighbour space {space!r}: choose value or raw")
    labels = session.collisions()
    index = session.value_index() if space == "value" else None
    try:
        if ROW_QUERY.fullmatch(query.strip()):
            address = RowAddress.parse(query)
            found = [(address, row_neighbours(session.ck, address, k, space, labels, index))]
        else:
            found = [
                (r.address, r.neighbours)
                for r in ngram_neighbours(session.ck, query, layer, order, head, k, space, labels, index)
            ]
    except ValueError as e:
        raise gr.Error(str(e).splitlines()[0] if str(e) else "bad input") from e
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

    def trace(text: str, mask: str = "all", mode: str | None = None) -> dict:
        """Capture a text: tokens, rows read, gates, next-token log-probs on and under the mask, KL, logit lens.
        `mode` says what replaces removed rows: zero, mean or resample (or a mode= item in the mask; given in
        both places, they must agree). Neither: zero."""
        return trace_summary(user_trace(session, text, mask, mode))

    def knockout(text: str, mask: str = "all", mode: str | None = None) -> dict:
        """Knock-out diff of a text under a mask (all, layer=L, order=N, head=L:N:K, branch=M, row=L:N:K:R)
        whose removed rows become zeros, their head's mean row or another corpus N-gram's row (`mode`, or a
        mode= item in the mask; given in both places, they must agree). Neither: zero."""
        return knockout_summary(user_trace(session, text, mask, mode))

    def attribution(text: str, position: int, method: str = "exact", mode: str | None = None) -> list[dict]:
        """Memory reads behind the prediction at token `position`: {layer, order, head, position_read, row,
        ngram, delta_logprob}, strongest first; method exact (conv's reach) or approx (every read)."""
        return attribution_records(session, text, position, method, mode)

    def neighbours(
        query: str, layer: int = 1, order: int = 2, head: int = 0, k: int = 10, space: str = "value"
    ) -> list[dict]:
        """Nearest memory rows of an N-gram typed as text, or of a row "L:N:K:R": by value-space cosine over
        every head and layer (`space` value), or by raw-row cosine within the query's own head (raw)."""
        return neighbour_rows(session, query, int(layer), int(order), int(head), int(k), space)

    gr.api(trace, api_name="trace")
    gr.api(knockout, api_name="knockout")
    gr.api(attribution, api_name="attribution")
    gr.api(neighbours, api_name="neighbours")
