"""Memory map: a WebGL scatter of memory rows, the current text's rows on top, and neighbours.

A click on a point (see app/main.py's script) or a typed N-gram or row lists the
faiss nearest rows with the corpus N-grams that hash to them; "knock out" sends
the listed rows to the knock-out mask.
"""

from __future__ import annotations

import gradio as gr

from .. import views
from ..context import Ctx

# colour name -> key of RowPages.colours(); kinds and domains are codes (engram_inspect.memory.valuemap.KINDS, DOMAINS)
ROW_COLOURS = {
    "promoted kind (0 punct., 1 name, 2 keyword, 3 other)": "kind",
    "N-gram domain (0 plays, 1 code)": "domain",
    "top N-gram share (crowded < 0.5)": "top_share",
    "mean α (corpus sample)": "mean_alpha",
}
NEIGHBOUR_HEADERS = ["similarity", "layer", "order", "head", "row", "corpus N-grams (count)", "nearest to"]


def build(ctx: Ctx) -> None:
    s = ctx.session
    with ctx.tab("memory-map", gr.Tab("Memory map", id="memory-map")), ctx.backbone("memory-map"):
        with gr.Row():
            space = gr.Radio(
                ["value", "raw"],
                value="value",
                label="space (value: each row through its head's W_V slice, one space for all heads and layers)",
            )
            method = gr.Radio(["umap", "pca"], value="umap", label="projection")
            colours = ["order", "head", "layer", "hits", "mean gate", *ROW_COLOURS]
            colour = gr.Radio(colours, value="order", label="colour by")
        plot = gr.Plot(label="memory rows", elem_id="memory-map")
        with gr.Row():
            query = gr.Textbox(
                label="N-gram (text) or row L:N:K:R", placeholder=" my lord   or   1:2:0:44404", elem_id="row-query"
            )
            layer = gr.Dropdown(list(s.layers), value=s.layers[0] if s.layers else None, label="layer")
            order = gr.Dropdown([2, 3], value=2, label="order")
            k = gr.Slider(1, 50, value=10, step=1, label="k")
        find = gr.Button("Find nearest rows", elem_id="find-neighbours")
        table = gr.Dataframe(
            headers=NEIGHBOUR_HEADERS,
            label="nearest rows (value space: the k nearest over every head and layer; raw: the query's own head)",
            elem_id="neighbours-table",
            wrap=True,
        )
        send = gr.Button("Knock out these rows")

    def redraw(trace, sp, m, c):
        p = _value_projection(s, m) if sp == "value" else s.projection(m)
        if p is None:
            gr.Warning("UMAP is not precomputed for this model: showing PCA (run `engram project`)")
            p = _value_projection(s, "pca") if sp == "value" else s.projection("pca")
        from engram_inspect.memory.rows import RowLayout

        if c in ROW_COLOURS:
            from .rows import pages

            values = pages(s).colours()[ROW_COLOURS[c]].astype("float32")
            values[values < 0] = float("nan")  # domain -1: no corpus N-gram reads the row
        else:
            values = _hits(s) if c == "hits" else s.mean_gate() if c == "mean gate" else None
        return views.memory_map(p, RowLayout.of(s.ck), trace, c, values)

    def find_rows(q, sp, L, n, kk):
        if sp == "value":  # the map's own space: any head, any layer
            return value_neighbour_rows(s, q, int(L), int(n), int(kk))
        from ..api import neighbour_rows

        rows = neighbour_rows(s, q, int(L), int(n), None, int(kk), "raw")  # raw cosine: the query's own head
        return [
            [r["similarity"], r["layer"], r["order"], r["head"], r["row"], r["ngrams"], f"head {r['head']}"]
            for r in rows
        ]

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
        if not picked:
            raise gr.Error("no rows listed: find the nearest rows first")
        return format_knockout(dataclasses.replace(base, all=False, rows=base.rows | picked))

    hidden = {"api_visibility": "private"}  # the HTTP API is /neighbours (app.api)
    gr.on([space.change, method.change, colour.change], redraw, [ctx.trace, space, method, colour], [plot], **hidden)
    gr.on([find.click, query.submit], find_rows, [query, space, layer, order, k], [table], **hidden)
    ctx.mask_source([send.click], to_mask, [table])  # the rows join the state's mask, and the text runs under it
    ctx.view("memory-map", redraw, [ctx.trace, space, method, colour], [plot])


def _hits(session):
    import numpy as np

    from engram_inspect.memory.health import table_hits
    from engram_inspect.memory.rows import RowAddress, RowLayout

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


def _value_projection(session, method: str):
    """The value-space map; UMAP only when precomputed (no JIT wait in the app)."""
    from engram_inspect.base.cache import find_file
    from engram_inspect.memory.valuemap import SCOPE, value_projection

    def build():
        if method == "umap" and not find_file(session.ck, f"projection-umap-{SCOPE}", ".npz").is_file():
            return None
        return value_projection(session.ck, method)

    return session._lazy(f"value-projection-{method}", build)


def value_neighbour_rows(session, query: str, layer: int, order: int, k: int) -> list[list]:
    """Nearest rows in value space of a row "L:N:K:R", or of the rows an N-gram's text reads on every head
    of `order` in `layer`: the k nearest of all, searched over every head and layer, most similar first,
    [similarity, layer, order, head, row, corpus N-grams, which of the query's rows it is nearest to]."""
    from engram_core.addresses import RowAddress
    from engram_inspect.memory.collisions import ngram_text
    from engram_inspect.memory.neighbours import ngram_rows
    from engram_inspect.memory.rows import RowLayout

    if not isinstance(query, str) or not query.strip():
        raise gr.Error("type an N-gram or a row L:N:K:R")
    layout, labels = RowLayout.of(session.ck), session.collisions()
    index = session.value_index()
    try:
        parts = query.strip().split(":")
        if len(parts) == 4 and all(p.strip().lstrip("-").isdigit() for p in parts):
            addresses = [RowAddress.parse(query)]
            layout.check(addresses[0])
        else:
            layout.check(RowAddress(layer, order, 0, 0))
            rows, _ = ngram_rows(session.ck, query, layer)
            hpo = layout.spec.heads_per_ngram
            addresses = [RowAddress(layer, order, h, int(rows[layout.spec.head_index(order, h)])) for h in range(hpo)]
    except ValueError as e:
        raise gr.Error(str(e)) from e
    best: dict = {}  # neighbour -> (similarity, the query row it is nearest to)
    for address in addresses:
        for a, sim in index.nearest(session.ck, address, k):
            if a not in best or sim > best[a][0]:
                best[a] = (sim, address)
    out = []
    for a, (sim, near) in sorted(best.items(), key=lambda item: -item[1][0])[:k]:
        grams = labels.ngrams_at(a.layer, a.order, a.head, a.row)[:4]
        text = ", ".join(f"{ngram_text(session.ck, g)!r}×{c}" for g, c in grams)
        out.append([round(sim, 6), a.layer, a.order, a.head, a.row, text, f"{near} (head {near.head})"])
    return out
