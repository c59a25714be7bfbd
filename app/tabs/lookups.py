"""Lookups: the token strip coloured by the gate, and what one token's N-grams read."""

from __future__ import annotations

import gradio as gr

from .. import views
from ..context import Ctx
from . import layout_views


def build(ctx: Ctx) -> None:
    s = ctx.session
    with ctx.tab("lookups", gr.Tab("Lookups", id="lookups")):
        layout_views.lookups_panel(ctx)  # shown instead of what follows when an addressing-only model is picked
        with ctx.backbone("lookups"):
            which = gr.Dropdown(
                views.gate_choices(s.layers, s.n_branches), value="mean", label="colour tokens by the gate of"
            )
            strip = gr.HighlightedText(
                label="tokens (colour: gate alpha, 0 to 1; click a token)",
                show_legend=True,
                color_map=views.GATE_COLOURS,
                combine_adjacent=False,
                elem_id="token-strip",
            )
            pos = gr.Number(value=0, precision=0, label="selected token position", minimum=0)
            table = gr.Dataframe(
                headers=views.LOOKUP_HEADERS, label="what this token's N-grams read", wrap=True, elem_id="lookup-table"
            )
            with gr.Row():
                method = gr.Radio(["exact", "approx"], value="exact", label="attribution")
                mode = gr.Radio(["zero", "mean", "resample"], value="zero", label="a removed read becomes")
            bars = gr.Plot(label="which memory reads carried the prediction of the next token", elem_id="attribution")

    def redraw(trace, which_gate):
        return (views.token_strip(trace, which_gate), 0) if trace is not None else ([], 0)

    def lookup(trace, p):
        if trace is None:
            return []
        p = min(max(int(p or 0), 0), trace.n_tokens - 1)
        index = s.collisions()
        return views.lookup_rows(trace, p, index, lambda g: _ngram_text(s, g))

    def select(trace, evt: gr.SelectData):
        return evt.index if isinstance(evt.index, int) else evt.index[0]

    def attribution(trace, p, how, ablation):
        if trace is None:
            return None
        from ..api import attribution_records

        p = min(max(int(p or 0), 0), trace.n_tokens - 1)  # of the text that ran, not of the box's newer text
        return views.attribution_figure(attribution_records(s, trace.text, p, how, ablation))

    which.change(redraw, [ctx.trace, which], [strip, pos], api_visibility="private")
    strip.select(select, [ctx.trace], [pos], api_visibility="private")
    pos.change(lookup, [ctx.trace, pos], [table], api_visibility="private")
    # computed on a click or a changed selector, not on every Run (the exact removals take a second or two)
    for trigger in (pos, method, mode):
        trigger.change(attribution, [ctx.trace, pos, method, mode], [bars], api_visibility="private")
    ctx.view("lookups", redraw, [ctx.trace, which], [strip, pos])
    ctx.view("lookups", lookup, [ctx.trace, pos], [table])


def _ngram_text(session, gram) -> str:
    from engram_inspect.memory.collisions import ngram_text

    return views.show(ngram_text(session.ck, gram))
