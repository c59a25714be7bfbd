"""What the Lookups and Health tabs show when an addressing-only model (DeepSeek-V4.1-Flash) is picked,
and the one line every backbone view shows instead of its plots.

The panels are built inside the existing tabs (lookups.py, health.py call them) and
are visible only while such a model is picked; app.main draws them as views of those tabs.
"""

from __future__ import annotations

import gradio as gr
import plotly.graph_objects as go

from engram_inspect.corpus.layout_summary import LAYER_COLUMNS, LOOKUP_COLUMNS, lookup_rows, token_ngrams

from .. import views
from ..context import Ctx
from ..layouts import BACKBONE_VIEWS, NO_BACKBONE, SHIPPED, unavailable

TOKEN_COLUMNS = ["pos", "token", "id", "compressed", "dead", "N-grams (oldest token first)"]
TABLE_COLUMNS = ["layer", "order", "head", "row", "norm", "nearest rows (cosine)"]


def user_addresses(ctx: Ctx, text: str, model: str):
    """The rows a user's text reads under an addressing-only model; bad input is a one-line gr.Error."""
    from engram_core.addressing import address_text

    from ..session import clean_input

    try:
        ctx.layouts.check(model)
        return address_text(ctx.layouts.layout(model), clean_input(text))
    except ValueError as e:
        raise gr.Error(str(e).splitlines()[0] if str(e) else "bad input") from e


def _addressing(model) -> bool:
    return model not in (None, SHIPPED)


def lookups_panel(ctx: Ctx) -> None:
    lay = ctx.layouts
    with gr.Column(visible=False) as panel:
        about = gr.Markdown(elem_id="v41-about")
        tokens = gr.Dataframe(headers=TOKEN_COLUMNS, label="tokens", wrap=True, elem_id="v41-tokens")
        pos = gr.Number(value=0, precision=0, label="token position", minimum=0, elem_id="v41-pos")
        note = gr.Markdown(elem_id="v41-lookup-note")
        table = gr.Dataframe(headers=LOOKUP_COLUMNS, label="what this token reads", wrap=True, elem_id="v41-lookups")
        rows = gr.Dataframe(headers=TABLE_COLUMNS, label="table rows (--tables)", visible=lay.tables_dir is not None)

    def redraw(model, addresses):
        if not _addressing(model) or addresses is None:
            return gr.Column(visible=_addressing(model)), "", [], 0
        grams = token_ngrams(addresses)
        out = []
        for t, raw in enumerate(addresses.ids.tolist()):
            shown = " | ".join(repr("".join(addresses.layout.token_text(i) for i in g)) for g in grams[t].values())
            out.append(
                [
                    t,
                    views.show(addresses.layout.token_text(raw)),
                    raw,
                    int(addresses.compressed[t]),
                    bool(addresses.dead[t]),
                    shown,
                ]
            )
        return gr.Column(visible=True), _about(addresses.layout), out, 0

    def lookup(model, addresses, p):
        if not _addressing(model) or addresses is None:
            return "", [], []
        p = min(max(int(p or 0), 0), len(addresses.ids) - 1)
        try:
            stats = lay.stats(model, start=True)
            tables = _table_rows(lay.tables(model), addresses, p)
        except ValueError as e:
            raise gr.Error(str(e)) from e
        note = _scan_note(lay, model, stats)
        return note, lookup_rows(addresses, p, stats), tables

    def pick(evt: gr.SelectData):  # a click on a token's line selects it
        return evt.index[0] if isinstance(evt.index, list | tuple) else evt.index

    tokens.select(pick, None, [pos], api_visibility="private")
    pos.change(lookup, [ctx.model, ctx.addresses, pos], [note, table, rows], api_visibility="private")
    ctx.view("lookups", redraw, [ctx.model, ctx.addresses], [panel, about, tokens, pos])
    ctx.view("lookups", lookup, [ctx.model, ctx.addresses, pos], [note, table, rows])


def _about(layout) -> str:
    """One line on what the token table shows for this model's memory."""
    n = len(layout.layers)
    where = "its one N-gram table" if n == 1 else f"all {n} Engram layers"
    layers = ", ".join(str(x) for x in layout.layers)
    return (
        f"Rows read by every token in {where} (layer {layers}: {layout.spec.heads_per_layer} heads each, "
        f"order-major), and the N-gram each order reads."
    )


def _scan_note(lay, model, stats) -> str:
    if stats is not None:
        s = stats.summary
        # the folder's name only: the server's own paths are not the page's business
        given = lay.scan_for(model) is not None
        where = "the scan" if given else "the default sample's scan (kept under ENGRAM_CACHE)"
        return (
            f"Counts for {model} from {where} `{stats.folder.name}`: {s['tokens']:,} tokens, "
            f"{s['documents']:,} documents."
        )
    p = lay.progress(model)
    done = f" ({p['done']}/{p['total']} shards, {p['tokens']:,} tokens)" if "total" in p else ""
    return f"Scanning a small default corpus sample in the background: {p['state']}{done}; run again for its counts."


def _table_rows(tables: dict, addresses, p: int, k: int = 3) -> list[list]:
    """Norm and nearest rows (among the rows this text reads) of each row the token reads."""
    from engram_inspect.corpus.table_views import neighbours, row_norms

    out = []
    for li, layer in enumerate(addresses.layout.layers):
        if layer not in tables:
            continue
        rows = addresses.rows[li, p]
        norms = row_norms(tables[layer], rows)
        near = neighbours(tables[layer], rows, addresses.rows[li].reshape(-1), k)
        for j, row in enumerate(rows.tolist()):
            order, head = addresses.layout.head_of(j)
            shown = ", ".join(f"{r} ({s:.3f})" for r, s in near[j])
            out.append([layer, order, head, row, round(float(norms[j]), 4), shown])
    return out


def health_panel(ctx: Ctx) -> None:
    lay = ctx.layouts
    with gr.Column(visible=False) as panel:
        load = gr.Button("Load the traffic statistics (scans a small default sample on first use)", elem_id="v41-load")
        note = gr.Markdown(elem_id="v41-health-note")
        layers = gr.Dataframe(headers=LAYER_COLUMNS, label="traffic per layer", elem_id="v41-traffic")
        sizes = gr.Dataframe(headers=CACHE_COLUMNS, label="hot-row cache hit rate at a few sizes", elem_id="v41-cache")
        with gr.Row():
            zipf = gr.Plot(label="reads per row by rank (Zipf)")
            cache = gr.Plot(label="hot-row cache hit rate")

    def drawn(model, stats):
        curves = (stats.layer_table(), cache_table(stats.cache), zipf_figure(stats.summary), cache_figure(stats.cache))
        return _scan_note(lay, model, stats), *curves

    def redraw(model):
        return gr.Column(visible=_addressing(model))

    def statistics(model, addresses):
        """The picked model's statistics when they are at hand, else empty until Load (never another
        model's). It reads more than the model, so it draws only with the tab on screen, not after
        every run for a tab nobody sees."""
        stats = None
        if _addressing(model):
            try:
                stats = lay.stats(model)  # never starts a scan
            except ValueError:
                stats = None  # Load says why
        return drawn(model, stats) if stats is not None else ("", [], [], None, None)

    def tables(model, progress=gr.Progress()):  # noqa: B008 - how Gradio injects a progress bar
        import time

        try:
            stats = lay.stats(model, start=True)
            while stats is None and not lay.progress(model)["state"].startswith("failed"):
                p = lay.progress(model)
                progress((p.get("done", 0), p.get("total", 1) or 1), desc=f"scanning the sample: {p['state']}")
                time.sleep(1.0)
                stats = lay.stats(model)
        except ValueError as e:
            raise gr.Error(str(e)) from e
        if stats is None:
            raise gr.Error(f"the default scan {lay.progress(model)['state']}")
        return drawn(model, stats)

    load.click(tables, [ctx.model], [note, layers, sizes, zipf, cache], api_visibility="private")
    ctx.view("health", redraw, [ctx.model], [panel])
    ctx.view("health", statistics, [ctx.model, ctx.addresses], [note, layers, sizes, zipf, cache])


CACHE_COLUMNS = ["layer", "rows", "MiB", "LRU hit rate", "static hit rate"]
CACHE_MIB = (1, 64, 1024, 16384)  # sizes in the table; the plot has the whole curve


def cache_table(cache: list[dict]) -> list[list]:
    """Per layer, the largest cache size of the curve at or below each of CACHE_MIB."""
    out = []
    for layer in sorted({c["layer"] for c in cache}):
        pts = [c for c in cache if c["layer"] == layer]
        for mib in CACHE_MIB:
            below = [c for c in pts if c["mib"] <= mib]
            if below:
                c = below[-1]
                out.append([layer, c["rows"], round(c["mib"], 3), round(c["lru"], 4), round(c["static"], 4)])
    return out


def zipf_figure(summary: dict) -> go.Figure:
    fig = go.Figure()
    for layer, curve in summary["zipf"].items():
        fig.add_trace(go.Scatter(x=[r for r, _ in curve], y=[v for _, v in curve], name=f"layer {layer}"))
    fig.update_layout(xaxis={"type": "log", "title": "row rank"}, yaxis={"type": "log", "title": "reads"})
    return fig


def cache_figure(cache: list[dict]) -> go.Figure:
    fig = go.Figure()
    for layer in sorted({c["layer"] for c in cache}):
        pts = [c for c in cache if c["layer"] == layer]
        for kind, dash in (("lru", "solid"), ("static", "dot")):
            fig.add_trace(
                go.Scatter(
                    x=[c["mib"] for c in pts],
                    y=[c[kind] for c in pts],
                    name=f"layer {layer} {kind.upper() if kind == 'lru' else kind}",
                    line={"dash": dash},
                    customdata=[c["rows"] for c in pts],
                    hovertemplate="%{x:.3g} MiB (%{customdata:,} rows): %{y:.3f}",
                )
            )
    fig.update_layout(xaxis={"type": "log", "title": "cache size (MiB)"}, yaxis={"title": "hit rate", "range": [0, 1]})
    return fig


def notice(ctx: Ctx, box: gr.Markdown) -> None:
    """Register, for every tab, the one line its backbone views show for an addressing-only model."""

    def line(tab_id):
        def draw(model):
            if not _addressing(model) or tab_id in NO_BACKBONE:
                return ""
            return unavailable(model, BACKBONE_VIEWS.get(tab_id, "this tab's views"))

        return draw

    for tab_id in list(ctx.tabs):
        ctx.view(tab_id, line(tab_id), [ctx.model], [box])
