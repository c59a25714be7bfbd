"""Health: memory health and collision tables per table, gate distributions, logit lens."""

from __future__ import annotations

import gradio as gr

from engram_inspect.memory.health import mhc_check

from .. import views
from ..context import Ctx
from . import cache_sizing, layout_views

HEALTH_COLUMNS = [
    "layer",
    "order",
    "head",
    "rows",
    "usage",
    "kl_uniform",
    "gini",
    "rows_for_50",
    "rows_for_90",
    "rows_for_99",
    "dead_rows",
]


def build(ctx: Ctx) -> None:
    s = ctx.session
    with ctx.tab("health", gr.Tab("Health", id="health")):
        layout_views.health_panel(ctx)  # shown instead of what follows when an addressing-only model is picked
        cache_sizing.build(ctx)  # every model: curves for the text shown and a corpus
        with ctx.backbone("health"):
            load = gr.Button("Load memory health and collisions (indexes the training corpus on first use)")
            health = gr.Dataframe(
                headers=HEALTH_COLUMNS, label="memory health per table (training corpus)", elem_id="health-table"
            )
            # a Dataframe without headers names its columns 1..N
            collisions = gr.Dataframe(
                headers=views.COLLISION_COLUMNS, label="collisions per table", elem_id="collision-table"
            )
            mhc = gr.Markdown(elem_id="mhc-check")
            with gr.Row():
                hist = gr.Plot(label="gate distribution")
                lens = gr.Plot(label="logit lens")

    def tables(progress=gr.Progress()):  # noqa: B008 - how Gradio injects a progress bar
        progress(0, desc="indexing the training corpus (first use only)")
        rows = s.health()
        fmt = lambda v: round(v, 4) if isinstance(v, float) else v  # noqa: E731
        return [[fmt(r[c]) for c in HEALTH_COLUMNS] for r in rows], views.collision_rows(s.collisions().head_table())

    def redraw(trace):
        if trace is None:
            return None, None, ""
        check = s.run_model(lambda _model: mhc_check(s.ck, trace.token_ids))
        return views.gate_histogram(trace), views.lens_figure(trace), check.describe()

    load.click(tables, None, [health, collisions], api_visibility="private")
    ctx.view("health", redraw, [ctx.trace], [hist, lens, mhc])
