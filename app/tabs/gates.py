"""Gates: alpha for every token, layer and branch, and the most strongly gated N-grams."""

from __future__ import annotations

import gradio as gr

from .. import views
from ..context import Ctx


def build(ctx: Ctx) -> None:
    with ctx.tab("gates", gr.Tab("Gates", id="gates")), ctx.backbone("gates"):
        heat = gr.Plot(label="gate heatmap", elem_id="gate-heatmap")
        top = gr.Dataframe(headers=["pos", "token", "N-gram", "mean alpha"], label="top-gated tokens of this text")

    def redraw(trace):
        if trace is None:
            return None, []
        return views.gate_heatmap(trace), views.top_gated(trace)

    ctx.view("gates", redraw, [ctx.trace], [heat, top])
