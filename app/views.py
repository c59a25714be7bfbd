"""Pure converters from engram_inspect results to what the app shows: figures and tables.

No Gradio here, so every view is testable without a server. Figures are plotly.
T tokens, L Engram layers, M branches.
"""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from engram_inspect.text.capture import PAD_TEXT, Trace
from engram_inspect.text.diff import KnockoutDiff

PALETTE = "Viridis"
CATEGORY_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")


def show(token: str) -> str:
    """A token as a label: whitespace and control characters made visible."""
    out = token.replace("\n", "⏎").replace("\t", "⇥").replace("\r", "␍").replace(PAD_TEXT, "·")
    return "".join(c if c.isprintable() or c == " " else f"\\x{ord(c):02x}" for c in out) or "∅"


def show_blank(token: str) -> str:
    """A token in a list: like `show`, and its spaces drawn as ␣ too (a lone space token is not nothing)."""
    return show(token).replace(" ", "␣")


def gate_choices(trace_layers: tuple[int, ...], n_branches: int) -> list[tuple[str, str]]:
    """(label, value) pairs: the value names the gate as "L:m" (layer, branch), the label is for people."""
    return [("mean", "mean")] + [(f"layer {L} branch {m}", f"{L}:{m}") for L in trace_layers for m in range(n_branches)]


def gate_values(trace: Trace, which: str) -> np.ndarray:
    """(T,) alpha: the mean over layers and branches, or the gate of one layer and branch, "L:m"."""
    if which == "mean":
        return trace.gate.mean(axis=(0, 2))
    layer, _, branch = which.partition(":")
    try:
        i, m = trace.layers.index(int(layer)), int(branch)
    except ValueError:
        raise ValueError(f"no gate {which!r}: use mean or L:m with an Engram layer L and a branch m") from None
    if not 0 <= m < trace.gate.shape[2]:
        raise ValueError(f"no gate {which!r}: branches are 0..{trace.gate.shape[2] - 1}")
    return trace.gate[i, :, m]


# alpha lies in 0..1, but Gradio colours numeric scores on a fixed -1..+1 legend: so the strip
# carries one of ten named bins instead, each with its own colour, and the legend reads 0..1.
# subtle: Gradio draws a label's colour at half opacity and drops any alpha of its own (ten
# opacities of one orange all came out as rgba(255, 140, 0, 0.5)), so the bins differ in colour:
# ten steps of viridis, dark purple (closed) to yellow (open), ordered in lightness and hue alike
GATE_BINS = [f"α {i / 10:.1f}–{(i + 1) / 10:.1f}" for i in range(10)]
VIRIDIS_10 = (
    "#440154",
    "#482878",
    "#3e4989",
    "#31688e",
    "#26828e",
    "#1f9e89",
    "#35b779",
    "#6ece58",
    "#b5de2b",
    "#fde725",
)
GATE_COLOURS = dict(zip(GATE_BINS, VIRIDIS_10, strict=True))
# the strip's text: dark on the light blend of light mode, light on the dark blend of dark mode
# plots are drawn light; in dark mode the browser inverts their lightness and keeps their hues
APP_CSS = (
    ".dark #token-strip .token, .dark #token-strip .legend-item { color: #f5f5f5 !important; }\n"
    ".dark .js-plotly-plot { filter: invert(0.92) hue-rotate(180deg); }"
)


def gate_bin(alpha: float) -> str:
    """The bin of one alpha: [0, 0.1) is the first, [0.9, 1] the last."""
    return GATE_BINS[min(max(int(float(alpha) * 10), 0), 9)]


def token_strip(trace: Trace, which: str = "mean") -> list[tuple[str, str]]:
    """(token, gate bin) pairs for a strip coloured by the gate (`GATE_COLOURS`)."""
    return [(t, gate_bin(a)) for t, a in zip(trace.tokens, gate_values(trace, which), strict=True)]


COLLISION_COLUMNS = ["layer", "order", "head", "prime", "distinct_ngrams", "occupied_rows", "collision_rate"]


def collision_rows(head_table: list[dict]) -> list[list]:
    """`CollisionIndex.head_table()` as rows under `COLLISION_COLUMNS` (rates to 4 places)."""
    fmt = lambda v: round(v, 4) if isinstance(v, float) else v  # noqa: E731
    return [[fmt(r[c]) for c in COLLISION_COLUMNS] for r in head_table]


def lookup_rows(trace: Trace, pos: int, index=None, ngram_text=None) -> list[list]:
    """For one position: per layer, order, head, the N-gram, the row, its neighbours in the corpus."""
    rows = []
    for li, L in enumerate(trace.layers):
        for oi, n in enumerate(trace.orders):
            gram = tuple(int(x) for x in trace.ngram_ids[oi, pos, :n])
            seen = index.count(gram) if index is not None else None
            for h in range(trace.heads_per_ngram):
                row = int(trace.hash_rows[li, pos, trace.head_index(n, h)])
                others, top = None, ""
                if index is not None:
                    at = [(g, c) for g, c in index.ngrams_at(L, n, h, row) if g != gram]
                    others = len(at)
                    if ngram_text is not None:
                        top = ", ".join(f"{ngram_text(g)!r}×{c}" for g, c in at[:3])
                rows.append([L, n, h, show(trace.ngram_text[oi][pos]), row, others, top, seen])
    return rows


LOOKUP_HEADERS = ["layer", "order", "head", "N-gram", "row", "other N-grams in row", "top others", "seen in training"]


def gate_heatmap(trace: Trace) -> go.Figure:
    L, T, M = trace.gate.shape
    z = trace.gate.transpose(0, 2, 1).reshape(L * M, T)  # rows: (layer, branch)
    s = trace.gate_score.transpose(0, 2, 1).reshape(L * M, T)
    labels = [f"L{layer} b{m}" for layer in trace.layers for m in range(M)]
    grams = [" | ".join(show(trace.ngram_text[o][t]) for o in range(len(trace.orders))) for t in range(T)]
    hover = [
        [f"{show(trace.tokens[t])}<br>{grams[t]}<br>alpha {z[r, t]:.3f}, score {s[r, t]:.3f}" for t in range(T)]
        for r in range(L * M)
    ]
    fig = go.Figure(
        go.Heatmap(z=z, y=labels, x=list(range(T)), text=hover, hoverinfo="text", colorscale=PALETTE, zmin=0, zmax=1)
    )
    fig.update_layout(
        title="gate alpha per token, layer and branch",
        xaxis_title="token position",
        height=320,
        margin=dict(l=60, r=20, t=40, b=40),
    )
    fig.update_xaxes(
        tickmode="array", tickvals=list(range(T)), ticktext=[show(t) for t in trace.tokens]
    ) if T <= 60 else None
    return fig


def top_gated(trace: Trace, n: int = 15) -> list[list]:
    """The positions with the highest mean alpha, with their longest suffix N-gram."""
    mean = trace.gate.mean(axis=(0, 2))
    order = np.argsort(-mean, kind="stable")[:n]
    return [[int(t), show(trace.tokens[t]), show(trace.ngram_text[-1][t]), round(float(mean[t]), 4)] for t in order]


def gate_histogram(trace: Trace) -> go.Figure:
    fig = go.Figure()
    for li, L in enumerate(trace.layers):
        for m in range(trace.gate.shape[2]):
            fig.add_trace(
                go.Histogram(
                    x=trace.gate[li, :, m], name=f"L{L} b{m}", opacity=0.6, xbins=dict(start=0, end=1, size=0.05)
                )
            )
    fig.update_layout(
        barmode="overlay",
        title="gate distribution (this text)",
        xaxis_title="alpha",
        yaxis_title="tokens",
        height=340,
        legend=dict(orientation="h", y=-0.3),  # below: a column at the right was clipped behind a scrollbar
    )
    return fig


def lens_figure(trace: Trace) -> go.Figure:
    Y = trace.lens_kl_on.shape[0]
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=list(range(Y)), y=trace.lens_kl_on.mean(1), name="memory on", mode="lines+markers"))
    fig.add_trace(go.Scatter(x=list(range(Y)), y=trace.lens_kl_off.mean(1), name="memory off", mode="lines+markers"))
    fig.update_layout(
        title="logit lens: KL(block || final), mean over tokens",
        xaxis_title="block",
        yaxis_title="KL (nats)",
        height=300,
    )
    return fig


def delta_figure(trace: Trace, diff: KnockoutDiff) -> go.Figure:
    T = trace.n_tokens
    labels = [f"{t}:{show(trace.tokens[t + 1])}" for t in range(T - 1)]
    d = diff.delta_logprob[:-1]
    colours = np.where(d < 0, "#c0392b", "#2e86c1")
    fig = go.Figure(go.Bar(x=labels, y=d, marker_color=colours, name="Δ log p (red: lost under the mask)"))
    fig.add_trace(
        go.Scatter(
            x=labels,
            y=diff.kl[:-1],
            name="KL(memory on || masked)",
            yaxis="y2",
            mode="lines+markers",
            line=dict(color="#7d3c98"),  # not the bars' red or blue
        )
    )
    fig.update_layout(
        title=f"Δ log p(next token) under the mask: mean loss change {diff.mean_loss_change:+.3f} nats/token",
        yaxis=dict(title="Δ log p"),
        yaxis2=dict(title="KL (nats)", overlaying="y", side="right"),
        height=340,
        legend=dict(orientation="h"),
    )
    return fig


def topk_rows(trace: Trace, diff: KnockoutDiff) -> list[list]:
    rows = []
    for t in range(trace.n_tokens - 1):
        on = topk_cell(trace.topk_text[t], trace.topk_logprob[t])
        off = topk_cell(trace.masked_topk_text[t], trace.masked_topk_logprob[t])
        rows.append(
            [t, show(trace.tokens[t]), show(trace.tokens[t + 1]), round(float(diff.delta_logprob[t]), 3), on, off]
        )
    return rows


TOPK_HEADERS = ["pos", "token", "next (actual)", "Δ log p", "top-k memory on", "top-k masked"]


def topk_cell(texts, logprobs) -> str:
    """Each candidate quoted, its blanks made visible (a space token once rendered as nothing and a ","
    read as the separator): `"␣the" 0.41 · "," 0.12`."""
    return " · ".join(f'"{show_blank(s)}" {np.exp(p):.2f}' for s, p in zip(texts, logprobs, strict=True))


def memory_map(
    projection, layout, trace: Trace | None, color_by: str = "order", values: np.ndarray | None = None
) -> go.Figure:
    """WebGL scatter of memory rows; rows the current text reads drawn on top.

    values: per flat row id, the corpus hits (color_by "hits") or the mean gate ("mean gate").
    """
    labels = row_labels(projection, layout)
    hover = "row %{customdata} (layer:order:head:row)<extra></extra>"
    categories = {"order": projection.order, "head": projection.head, "layer": projection.layer}
    fig = go.Figure()

    def points(at, name: str, marker: dict) -> None:
        xy = projection.coords[at]
        fig.add_trace(
            go.Scattergl(
                x=xy[:, 0],
                y=xy[:, 1],
                mode="markers",
                name=name,
                marker=marker,
                customdata=labels[at],
                hovertemplate=hover,
            )
        )

    if color_by in categories:  # a few distinct values: one legend entry and colour each, not a colour bar
        values_of = np.asarray(categories[color_by])
        for i, v in enumerate(np.unique(values_of).tolist()):
            colour = CATEGORY_COLOURS[i % len(CATEGORY_COLOURS)]
            points(np.flatnonzero(values_of == v), f"{color_by} {v}", dict(size=3, color=colour, opacity=0.6))
    else:
        color = np.log1p(values[projection.rows]) if color_by == "hits" else values[projection.rows]
        title = "log(1 + hits)" if color_by == "hits" else color_by
        fig.add_trace(
            go.Scattergl(
                x=projection.coords[:, 0],
                y=projection.coords[:, 1],
                mode="markers",
                name="memory rows",
                marker=dict(
                    size=3, color=color, colorscale=PALETTE, showscale=True, opacity=0.6, colorbar=dict(title=title)
                ),
                customdata=labels,
                hovertemplate=hover,
            )
        )
    title = f"memory rows ({projection.method.upper()}, a sample of {len(projection.rows):,})"
    if trace is not None:
        flat = read_rows(trace, layout)
        pos = {int(r): i for i, r in enumerate(projection.rows)}
        hit = [pos[f] for f in flat if f in pos]
        # the map is a sample: say how many of the text's rows it holds, not just draw those
        title += f"; this text reads {len(flat):,} rows, {len(hit):,} of them in the sample"
        if hit:
            marker = dict(size=9, color="#e74c3c", line=dict(width=1, color="white"))
            points(np.asarray(hit), f"read by this text ({len(hit)} of {len(flat)} in the sample)", marker)
    fig.update_layout(title=title, height=560, legend=dict(orientation="h"))
    return fig


def row_labels(projection, layout) -> np.ndarray:
    """'L:N:K:R' for every point: what the neighbour search box takes."""
    L, n, k, r = layout.decode(projection.rows)
    return np.array([f"{a}:{b}:{c}:{d}" for a, b, c, d in zip(L, n, k, r, strict=True)], dtype=object)


def read_rows(trace: Trace, layout) -> list[int]:
    """Flat ids of every row the text reads."""
    from engram_inspect.memory.rows import RowAddress

    out = []
    for li, L in enumerate(trace.layers):
        for n in trace.orders:
            for h in range(trace.heads_per_ngram):
                for r in np.unique(trace.hash_rows[li, :, trace.head_index(n, h)]):
                    out.append(layout.flat(RowAddress(L, n, h, int(r))))
    return out


def attribution_label(r: dict) -> str:
    """layer:order:head @ position_read, then the N-gram and the row it read."""
    return f"{r['layer']}:{r['order']}:{r['head']} @ {r['position_read']}  {show(str(r['ngram']))}  row {r['row']}"


def attribution_figure(records: list[dict], top: int = 40) -> go.Figure:
    """Horizontal bars of delta log p per memory read, largest |delta| at the top; the `top` largest only
    (approx attributes thousands of reads, too many bars to read)."""
    recs = sorted(records, key=lambda r: abs(r["delta_logprob"]), reverse=True)[:top]
    fig = go.Figure(
        go.Bar(
            x=[r["delta_logprob"] for r in recs],
            y=[attribution_label(r) for r in recs],
            orientation="h",
            marker_color=["#2a6fdb" if r["delta_logprob"] < 0 else "#d9534f" for r in recs],
        )
    )
    fig.update_layout(
        title="delta log p(next token) when one read is removed (negative: the read helped)",
        yaxis={"autorange": "reversed"},
        height=max(240, 22 * len(recs) + 80),
        margin={"l": 10, "r": 10, "t": 40, "b": 30},
    )
    return fig
