"""Row page: everything known about one memory row L:N:K:R (engram_inspect.memory.rowpage), and the /row API.

Opened by typing an address, by a deep link `?row=L:N:K:R`, or by clicking a point
of the memory map. The slow parts (the corpus-sample statistics) load once per
process; a cached page is array lookups, the exact removal cost a few forwards.
"""

from __future__ import annotations

import gradio as gr
import plotly.graph_objects as go

from ..context import Ctx

NGRAM_HEADERS = ["count", "N-gram", "plays", "code"]
TOKEN_HEADERS = ["promoted", "logit", "suppressed", "logit "]
NEIGHBOUR_HEADERS = ["row", "cosine", "top N-gram"]
CONTEXT_HEADERS = ["alpha", "before", "token", "after", "where", "Δ log p (estimate; – where none)"]


def pages(session):
    """The session's RowPages, loaded (or computed, minutes) on first use; the pass runs under the model lock."""
    from engram_inspect.memory.rowpage import RowPages

    return session._lazy("row-pages", lambda: session.run_model(lambda _m: RowPages.load(session.ck)))


MODES = [("zeros", "zero"), ("head's mean row", "mean"), ("another N-gram's row", "resample")]
BECAME = {"zero": "zeros", "mean": "its head's mean row", "resample": "another corpus N-gram's row"}  # in a sentence


def page_of(session, query: str, exact: bool = False, mode: str | None = "zero"):
    """A RowPage for an address typed as text; gr.Error (one line) for anything that is not a row of this model
    or a mode that is not zero, mean or resample. `mode` says what replaces each read in the exact cost."""
    from engram_core import KnockOut
    from engram_inspect.memory.ablation import install
    from engram_inspect.memory.rowpage import row_page
    from engram_inspect.memory.rows import RowAddress, RowLayout

    try:
        how = KnockOut(mode=mode or "zero")  # checked even without `exact`: a typo is never silently ignored
        address = RowAddress.parse(query)
        RowLayout.of(session.ck).check(address)
        p = pages(session)
        if exact:  # forwards with hooks on the shared model: under its lock

            def measure(_m):
                if how.mode != "zero":
                    install(session.ck)  # the corpus row sources of modes mean and resample (cached)
                return row_page(session.ck, address, p, exact=True, mode=how.mode)

            return session.run_model(measure)
        return row_page(session.ck, address, p)
    except ValueError as e:
        raise gr.Error(str(e).splitlines()[0] if str(e) else "bad input") from e


def summary(page) -> str:
    a = page.address
    lines = [f"### Row {a} (layer {a.layer}, order {a.order}, head {a.head}, row {a.row})"]
    if page.hits:
        crowd = " **Crowded**: no N-gram holds half the hits." if page.crowded else ""
        lines.append(
            f"{len(page.ngrams):,} corpus N-grams hash here, {page.hits:,} hits; "
            f"the top one holds {page.top_share:.0%}.{crowd}"
        )
    else:
        lines.append("No training-corpus N-gram hashes to this row.")
    if page.reads:
        lines.append(f"Read at {page.reads:,} corpus-sample positions; mean α {page.mean_alpha:.3f}.")
    if page.delta_estimate_reads:
        lines.append(
            f"Removing one read changes its window's log-likelihood by {page.delta_estimate:+.4f} nats on average "
            f"(gradient × input estimate, {page.delta_estimate_reads} reads)."
        )
    if page.delta_exact is not None:
        became = BECAME[page.delta_exact_mode]
        if page.delta_exact_mode == "resample":
            became += f", mean of {page.delta_exact_samples} runs from seed {page.delta_exact_seed}"
        lines.append(
            f"Exact removal ({page.delta_exact_reads} reads, each replaced by {became}): {page.delta_exact:+.4f} "
            f"over the window, {page.delta_exact_own:+.4f} at the read's own prediction."
        )
        if page.delta_estimate_reads:
            lines.append(
                "The estimate is first order (the gradient times the row's input, over the sample's windows "
                "that have one); the exact cost re-runs each read without the row. Where they differ, in size "
                "or in sign, the exact cost is the measurement."
            )
    lines.append("Promoted / suppressed tokens follow the direct path only (value → final norm → unembedding).")
    return "\n\n".join(lines)


def tables(page) -> tuple[list, list, list, list]:
    ngrams = [[n.count, n.text, n.plays, n.code] for n in page.ngrams[:200]]
    tokens = [
        [p.text, round(p.logit, 3), s.text, round(s.logit, 3)]
        for p, s in zip(page.promoted, page.suppressed, strict=True)
    ]

    def ctx_rows(ctxs):
        def delta(c):  # only the sample's windows with a gradient pass carry an estimate
            return "–" if c.delta is None else f"{c.delta:+.4f}"

        return [[round(c.alpha, 3), c.before, c.token, c.after, f"{c.stream} @ {c.offset:,}", delta(c)] for c in ctxs]

    return ngrams, tokens, ctx_rows(page.top_contexts), ctx_rows(page.bottom_contexts)


def alpha_figure(page) -> go.Figure:
    edges = [i / len(page.alpha_hist) for i in range(len(page.alpha_hist))]
    fig = go.Figure(go.Bar(x=edges, y=page.alpha_hist, width=1 / len(page.alpha_hist), offset=0))
    fig.update_layout(title="α over the corpus-sample positions that read this row", height=260, bargap=0.05)
    fig.update_xaxes(title="α", range=[0, 1])
    return fig


def build(ctx: Ctx):
    s = ctx.session
    with ctx.tab("row-page", gr.Tab("Row page", id="row-page")), ctx.backbone("row-page"):
        with gr.Row():
            query = gr.Textbox(label="row L:N:K:R", placeholder="1:2:0:44404", elem_id="row-page-query", scale=3)
            exact = gr.Checkbox(label="exact removal cost (a few seconds)", value=False)
            mode = gr.Dropdown(MODES, value="zero", label="removed reads become", elem_id="row-page-mode")
            go_btn = gr.Button("Open row page", elem_id="row-page-go")
        head = gr.Markdown(elem_id="row-page-summary")
        with gr.Row():
            ngrams = gr.Dataframe(headers=NGRAM_HEADERS, label="corpus N-grams that hash here", wrap=True)
            tokens = gr.Dataframe(headers=TOKEN_HEADERS, label="what the row writes (direct path)", wrap=True)
        hist = gr.Plot(label="gate")
        with gr.Row():
            value_nb = gr.Dataframe(
                headers=NEIGHBOUR_HEADERS, label="nearest rows in value space (any head, any layer)", wrap=True
            )
            head_nb = gr.Dataframe(headers=NEIGHBOUR_HEADERS, label="nearest rows of the same head (raw)", wrap=True)
        top = gr.Dataframe(headers=CONTEXT_HEADERS, label="20 contexts with the highest α", wrap=True)
        bottom = gr.Dataframe(headers=CONTEXT_HEADERS, label="10 contexts with the lowest α", wrap=True)

    def show(q, ex, m):
        page = page_of(s, q, bool(ex), m)
        nb = [
            [[n.address, n.similarity, n.top_ngram] for n in ns] for ns in (page.value_neighbours, page.head_neighbours)
        ]
        return (summary(page), *tables(page)[:2], alpha_figure(page), *nb, *tables(page)[2:])

    outputs = [head, ngrams, tokens, hist, value_nb, head_nb, top, bottom]
    hidden = {"api_visibility": "private"}  # the HTTP API is /row (register below)
    gr.on([go_btn.click, query.submit], show, [query, exact, mode], outputs, **hidden)

    def deep_link(demo: gr.Blocks, tabs: gr.Tabs) -> None:
        """`?row=L:N:K:R` fills the address, shows this tab and opens the page."""

        def maybe_show(q, ex, m):
            return show(q, ex, m) if q else tuple(gr.skip() for _ in outputs)

        demo.load(from_url, None, [query, tabs], **hidden).then(maybe_show, [query, exact, mode], outputs, **hidden)

    return deep_link


def register(session) -> None:
    """The /row endpoint (docs/api.md); call inside the Blocks, before the tabs' private events."""

    def row(address: str, exact: bool = False, mode: str = "zero") -> dict:
        """The page of one memory row "L:N:K:R": N-grams, promoted tokens, gate statistics, removal cost;
        `mode` (zero, mean, resample) says what replaces each read in the exact removal cost."""
        return page_of(session, address, bool(exact), mode).to_dict()

    gr.api(row, api_name="row")


def from_url(request: gr.Request):
    """The `row` query parameter of a deep link and the tab to show; nothing changes without one."""
    params = dict(request.query_params) if request is not None else {}
    row = params.get("row", "")
    # subtle: without a row, touch nothing: the load may finish after a map click has filled the box
    return (row, gr.Tabs(selected="row-page")) if row else (gr.skip(), gr.skip())
