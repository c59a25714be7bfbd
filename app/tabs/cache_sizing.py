"""Cache sizing, in the Health tab of every model: hit-rate curves of a hot-row cache for the
text shown and for a corpus, with the policy, concurrent streams and read granularity chosen,
and the capacities a person sizing a cache quotes (80, 90, 95 % hits per layer) in words."""

from __future__ import annotations

import gradio as gr
import plotly.graph_objects as go

from engram_inspect.serving.caches import POLICIES, CacheSimError

from ..context import Ctx
from ..layouts import SHIPPED, sample_paths

CORPUS_TOKENS = 50_000  # tokens of the corpus replayed: a few seconds per policy
STREAMS = ("1", "4", "16")


def corpus_source(ctx: Ctx, model: str):
    """(documents, what they are): the model's scan's kept streams where there are some, else the sample texts."""
    from engram_inspect.serving.sources import check_scan, corpus_docs, scan_docs

    lay = ctx.layouts
    if model in lay.addressing():
        layout, folder = lay.layout(model), lay.scan_for(model) or lay.default_scan_dir(model)
        try:
            check_scan(layout, folder)
            return scan_docs(layout, folder), f"the scan in `{folder.name}`"
        except CacheSimError:
            pass  # no finished scan with token streams yet: the sample texts themselves
        return corpus_docs(layout, sample_paths()), "the default corpus sample"
    return corpus_docs(lay.shipped(ctx.session), sample_paths()), "the default corpus sample"


def sizing(ctx: Ctx, text_ids, model: str, policy: str, streams: str, granularity: str) -> tuple[list, list[str]]:
    """(records, words) for the text's ids (or None) and the corpus; bad input is a one-line gr.Error."""
    from engram_inspect.serving.sizing import curves, words

    try:
        model = ctx.layouts.check(model)
        if policy not in POLICIES:
            raise ValueError(f"unknown policy {policy!r}: choose from {', '.join(POLICIES)}")
        if str(streams) not in STREAMS:
            raise ValueError(f"streams {streams!r}: choose 1, 4 or 16")
        if granularity not in ("row", "page"):
            raise ValueError(f"unknown granularity {granularity!r}: row or page")
        layout = ctx.layouts.of(ctx.session, model)
        key = ("cache-sizing", model, policy, str(streams), granularity)
        with ctx.layouts._lock:
            found = ctx.layouts._cache.get(key)
        if found is None:
            docs, what = corpus_source(ctx, model)
            recs = curves(layout, docs, policy, int(streams), granularity, max_tokens=CORPUS_TOKENS)
            found = ([{**r, "traffic": "corpus"} for r in recs], what)
            with ctx.layouts._lock:
                ctx.layouts._cache[key] = found
        records, what = found
        lines = words(records, f"{what} (first {CORPUS_TOKENS:,} tokens), ")
        if text_ids is not None and len(text_ids):
            ids = [list(map(int, text_ids))]
            mine = curves(layout, lambda: ids, policy, int(streams), granularity)
            records = records + [{**r, "traffic": "text"} for r in mine]
            lines += words(mine, "the text shown, ")
    except ValueError as e:
        raise gr.Error(str(e).splitlines()[0] if str(e) else "bad input") from e
    return records, lines


def figure(records: list[dict]) -> go.Figure:
    fig = go.Figure()
    for traffic, dash in (("corpus", "solid"), ("text", "dot")):
        for layer in sorted({r["layer"] for r in records}):
            pts = sorted(
                (r for r in records if (r["traffic"], r["layer"]) == (traffic, layer)), key=lambda r: r["capacity_mib"]
            )
            if pts:
                fig.add_trace(
                    go.Scatter(
                        x=[p["capacity_mib"] for p in pts],
                        y=[p["hit_rate"] for p in pts],
                        mode="lines+markers",
                        line={"dash": dash},
                        name=f"{traffic}, layer {layer}",
                        hovertemplate="%{x:.3g} MiB: %{y:.1%} hits",
                    )
                )
    fig.update_layout(
        xaxis={"type": "log", "title": "cache per layer (MiB)"},
        yaxis={"title": "reads served from the cache", "range": [0, 1], "tickformat": ".0%"},
        margin={"t": 30},
    )
    return fig


def build(ctx: Ctx) -> None:
    with gr.Accordion("Cache sizing: hot-row cache hit rates (text shown and corpus)", open=False):
        gr.Markdown(
            "How large a cache of hot rows each layer needs when the tables live on SSD or in host memory. "
            "Curves from `engram cache-sim`: static is the corpus's most-read rows loaded ahead (trained on the "
            "traffic itself), belady the optimal offline policy."
        )
        with gr.Row():
            policy = gr.Dropdown(list(POLICIES), value="lru", label="policy", elem_id="cache-policy")
            streams = gr.Radio(list(STREAMS), value="1", label="requests decoding at once", elem_id="cache-streams")
            gran = gr.Radio(["row", "page"], value="row", label="read granularity", elem_id="cache-granularity")
            go_button = gr.Button("Simulate", elem_id="cache-simulate")
        words = gr.Markdown(elem_id="cache-words")
        plot = gr.Plot(label="hit rate against cache size", elem_id="cache-plot")

    def text_ids(model, trace, addresses):
        if model == SHIPPED:
            return None if trace is None else trace.token_ids
        return None if addresses is None else addresses.ids.tolist()

    def cache_curves(model, trace, addresses, pol, s, g, progress=gr.Progress()):  # noqa: B008 - Gradio injects it
        progress(0, desc="replaying the corpus through the cache (first time for these settings)")
        records, lines = sizing(ctx, text_ids(model, trace, addresses), model, pol, s, g)
        return figure(records), "\n".join(f"- {line}" for line in lines)

    go_button.click(
        cache_curves,
        [ctx.model, ctx.trace, ctx.addresses, policy, streams, gran],
        [plot, words],
        api_visibility="private",
    )

    def api(text: str, model: str = SHIPPED, policy: str = "lru", streams: str = "1", granularity: str = "row") -> dict:
        """/cache_sizing: hit rates against capacity for a text and the corpus, and the capacities in words."""
        from engram_core.addressing import address_text

        from ..session import clean_input

        try:
            model = ctx.layouts.check(model)
            layout = ctx.layouts.of(ctx.session, model)
            ids = address_text(layout, clean_input(text)).ids.tolist() if text else None
        except ValueError as e:
            raise gr.Error(str(e).splitlines()[0] if str(e) else "bad input") from e
        records, lines = sizing(ctx, ids, model, policy, str(streams), granularity)
        return {"model": model, "records": records, "words": lines}

    gr.api(api, api_name="cache_sizing")
