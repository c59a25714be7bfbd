"""Paper checks: the paper's findings reproduced in miniature (docs/paper-checks.md), as figures."""

from __future__ import annotations

import json
from pathlib import Path

import gradio as gr
import plotly.graph_objects as go

from ..context import Ctx

DATA = Path(__file__).resolve().parent.parent.parent / "docs" / "paper-checks"

PAPER = {
    "curves": "Paper: Engram-27B beats MoE-27B at equal parameters and FLOPs (MMLU 57.4 → 60.4, BBH 50.9 → 55.9).",
    "allocation": "Paper (§3.1): a U-shaped curve; 20–25 % of the sparse budget in memory minimises loss.",
    "size": "Paper (§3.2): loss falls linearly in log(memory slots).",
    "kinds": "Paper (§6.3): memory off keeps 29–44 % on knowledge tasks, 81–93 % on reading comprehension.",
    "lens": "Paper (§6.1): with Engram each layer is closer to the final prediction, most of all early.",
    "placement": "Paper (Fig. 5): a single Engram module works best at an early layer.",
}


def _load(name: str) -> dict | None:
    path = DATA / name
    return json.loads(path.read_text()) if path.is_file() else None


def _sweep_figure(sw: dict | None, x_key: str, title: str, x_title: str, log_x: bool = False) -> go.Figure | None:
    """One line per domain through the sweep's averaged records (`configs`, written by studies.sweep)."""
    if not sw or not sw.get("configs"):
        return None
    x_of = lambda r: r[x_key][0] if isinstance(r[x_key], list) else r[x_key]  # noqa: E731 - placement: [layer]
    configs = sorted(sw["configs"], key=x_of)
    fig = go.Figure()
    for d in ("plays", "code"):
        ys = [r[f"val_{d}"] for r in configs]
        fig.add_trace(
            go.Scatter(x=[x_of(r) for r in configs], y=ys, name=f"{d} (mean over seeds)", mode="lines+markers")
        )
    fig.update_layout(title=title, xaxis_title=x_title, yaxis_title="held-out loss (nats/token)", height=320)
    if log_x:
        fig.update_xaxes(type="log")
    return fig


def figures() -> dict[str, go.Figure | None]:
    a = _load("analysis.json")
    out: dict[str, go.Figure | None] = {k: None for k in PAPER}
    if a is not None:
        fig = go.Figure()
        for name, rows in a["curves"].items():
            fig.add_trace(
                go.Scatter(x=[r["tokens"] for r in rows], y=[r["val_plays"] for r in rows], name=f"{name}, plays")
            )
            fig.add_trace(
                go.Scatter(x=[r["tokens"] for r in rows], y=[r["val_code"] for r in rows], name=f"{name}, code")
            )
        fig.update_layout(
            title="learning curves at equal tokens",
            xaxis_title="training tokens",
            yaxis_title="held-out loss (nats/token)",
            height=320,
        )
        out["curves"] = fig
        kinds = go.Figure()
        for kind in ("frequent_ngram_completion", "other"):
            kinds.add_trace(
                go.Bar(
                    x=list(a["by_domain"]),
                    y=[v["knockout_by_kind"][kind]["loss_increase"] for v in a["by_domain"].values()],
                    name=kind.replace("_", " "),
                )
            )
        kinds.update_layout(
            title="loss increase with all memory off, by kind of token",
            xaxis_title="held-out domain",
            yaxis_title="loss increase (nats/token)",
            height=320,
        )
        out["kinds"] = kinds
        lens = go.Figure()
        for d, v in a["by_domain"].items():
            lens.add_trace(go.Scatter(y=v["logit_lens_engram"], name=f"Engram, {d}", mode="lines+markers"))
            lens.add_trace(
                go.Scatter(y=v["logit_lens_baseline"], name=f"twin, {d}", mode="lines+markers", line=dict(dash="dash"))
            )
        lens.update_layout(
            title="logit lens: KL(block || final)", xaxis_title="block", yaxis_title="KL (nats)", height=320
        )
        out["lens"] = lens
    out["allocation"] = _sweep_figure(
        _load("sweep-allocation.json"),
        "memory_share",
        "loss vs share of the budget in memory",
        "share of the parameter budget in memory",
    )
    out["size"] = _sweep_figure(_load("sweep-size.json"), "rows", "loss vs rows per head", "rows per head", True)
    out["placement"] = _sweep_figure(_load("sweep-placement.json"), "layers", "loss vs Engram layer", "Engram layer")
    return out


def controls_markdown() -> str:
    """Studies 8 and 9 of docs/paper-checks.md (knock-out modes, memorisation controls): tables and conclusion."""
    path = DATA.parent / "paper-checks.md"
    text = path.read_text() if path.is_file() else ""
    start = text.find("## 8.")
    return text[start:] if start >= 0 else "Run `python -m studies.controls` and `python -m studies.report` first."


def build(ctx: Ctx) -> None:
    with ctx.tab("paper", gr.Tab("Paper checks", id="paper")), ctx.backbone("paper"):
        gr.Markdown("The paper's findings, measured on this model (details and commands: `docs/paper-checks.md`).")
        show = gr.Button("Show the paper checks")
        slots = []
        for key, note in PAPER.items():
            with gr.Row():
                slots.append(gr.Plot(label=key))
                gr.Markdown(note)
        controls = gr.Markdown(elem_id="paper-controls")

    def draw():
        figs = figures()
        return [*(figs[k] for k in PAPER), controls_markdown()]

    show.click(draw, None, [*slots, controls], api_visibility="private")
