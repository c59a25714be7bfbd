"""Memory map: a WebGL scatter of memory rows, the current text's rows on top, and neighbours.

A click on a point (see app/main.py's script) or a typed N-gram or row lists the
faiss nearest rows with the corpus N-grams that hash to them; "knock out" sends
the listed rows to the knock-out mask.
"""

from __future__ import annotations

import gradio as gr

from .. import views
from ..context import Ctx

NEIGHBOUR_HEADERS = ["similarity", "layer", "order", "head", "row", "corpus N-grams (count)"]


def build(ctx: Ctx) -> None:
    s = ctx.session
    with ctx.tab("memory-map", gr.Tab("Memory map", id="memory-map")):
        with gr.Row():
            method = gr.Radio(["umap", "pca"], value="umap", label="projection")
            colour = gr.Radio(["order", "head", "layer", "hits", "mean gate"], value="order", label="colour by")
        plot = gr.Plot(label="memory rows", elem_id="memory-map")
        with gr.Row():
            query = gr.Textbox(
                label="N-gram (text) or row L:N:K:R", placeholder=" my lord   or   1:2:0:8615", elem_id="row-query"
            )
            layer = gr.Dropdown(list(s.layers), value=s.layers[0] if s.layers else None, label="layer")
            order = gr.Dropdown([2, 3], value=2, label="order")
            k = gr.Slider(1, 50, value=10, step=1, label="k")
        find = gr.Button("Find nearest rows", elem_id="find-neighbours")
        table = gr.Dataframe(headers=NEIGHBOUR_HEADERS, label="nearest rows", elem_id="neighbours-table", wrap=True)
        send = gr.Button("Knock out these rows")

    def redraw(trace, m, c):
        p = s.projection(m)
        if p is None:
            gr.Warning("UMAP is not precomputed for this model: showing PCA (run `engram project`)")
            p = s.projection("pca")
        from engram_inspect.rows import RowLayout

        values = _hits(s) if c == "hits" else s.mean_gate() if c == "mean gate" else None
        return views.memory_map(p, RowLayout.of(s.ck), trace, c, values)

    def find_rows(q, L, n, kk):
        from ..api import neighbour_rows

        rows = neighbour_rows(s, q, int(L), int(n), None, int(kk))
        return [[r["similarity"], r["layer"], r["order"], r["head"], r["row"], r["ngrams"]] for r in rows]

    def to_mask(rows, mask):
        """The listed rows added to the mask (an `all` mask gives way: it would hide them)."""
        import dataclasses

        from engram_core.knockout import format_knockout, parse_knockout

        try:
            base = parse_knockout(mask or "none")
        except ValueError as e:
            raise gr.Error(str(e)) from e
        # gradio hands the table over as a pandas frame: columns similarity, layer, order, head, row, ...
        picked = {tuple(int(x) for x in r[1:5]) for r in rows.values.tolist()} if len(rows) else set()
        return format_knockout(dataclasses.replace(base, all=False, rows=base.rows | picked))

    hidden = {"api_visibility": "private"}  # the HTTP API is /neighbours (app.api)
    gr.on([method.change, colour.change], redraw, [ctx.trace, method, colour], [plot], **hidden)
    gr.on([find.click, query.submit], find_rows, [query, layer, order, k], [table], **hidden)
    send.click(to_mask, [table, ctx.mask], [ctx.mask], **hidden)
    ctx.view("memory-map", redraw, [ctx.trace, method, colour], [plot])


def _hits(session):
    import numpy as np

    from engram_inspect.health import table_hits
    from engram_inspect.rows import RowAddress, RowLayout

    def build():
        index, layout = session.collisions(), RowLayout.of(session.ck)
        out = np.zeros(layout.total, dtype=np.int64)
        spec = layout.spec
        for L in spec.layer_ids:
            for n in spec.orders:
                for h in range(spec.heads_per_ngram):
                    start = layout.flat(RowAddress(L, n, h, 0))
                    hits = table_hits(index, L, n, h)
                    out[start : start + len(hits)] = hits
        return out

    return session._lazy("hits", build)
