"""Export: the current trace in every engram_inspect format, and figures as HTML.

Files go only to this app's temporary folder, under generated names. PNG comes
from each figure's own toolbar (the camera icon), drawn by the browser.
"""

from __future__ import annotations

import tempfile
import uuid
from pathlib import Path

import gradio as gr

from engram_inspect.text.export import FORMATS, sidecar_path, write

from .. import views
from ..context import Ctx

EXPORT_DIR = Path(tempfile.gettempdir()) / "engram-inspector-exports"


def export_file(trace, fmt: str) -> list[str]:
    """The trace file, and for CSV its metadata sidecar (`<file>.json`), which `read` needs beside it."""
    if trace is None:
        raise gr.Error("run a text first: there is no trace to export")
    if fmt not in FORMATS:
        raise gr.Error(f"unknown format {fmt!r}")
    EXPORT_DIR.mkdir(parents=True, exist_ok=True)
    path = EXPORT_DIR / f"trace-{uuid.uuid4().hex[:12]}.{fmt}"
    write(trace, path, fmt)
    return [str(path)] + ([str(sidecar_path(path))] if fmt == "csv" else [])


def figure_file(trace, which: str) -> str:
    if trace is None:
        raise gr.Error("run a text first: there is no figure to export")
    from engram_inspect.text.diff import knockout_diff

    fig = {
        "gate heatmap": lambda: views.gate_heatmap(trace),
        "Δ log p": lambda: views.delta_figure(trace, knockout_diff(trace)),
        "logit lens": lambda: views.lens_figure(trace),
        "gate distribution": lambda: views.gate_histogram(trace),
    }[which]()
    EXPORT_DIR.mkdir(parents=True, exist_ok=True)
    path = EXPORT_DIR / f"figure-{uuid.uuid4().hex[:12]}.html"
    fig.write_html(path, include_plotlyjs=True)  # self-contained: opens offline
    return str(path)


def build(ctx: Ctx) -> None:
    with ctx.tab("export", gr.Tab("Export", id="export")), ctx.backbone("export"):
        fmt = gr.Radio(list(FORMATS), value="json", label="trace format")
        go = gr.Button("Export trace", elem_id="export-trace")
        out = gr.File(label="trace file (CSV: with its .json sidecar)", file_count="multiple", elem_id="export-file")
        which = gr.Radio(
            ["gate heatmap", "Δ log p", "logit lens", "gate distribution"], value="gate heatmap", label="figure"
        )
        fig_go = gr.Button("Export figure (HTML)")
        fig_out = gr.File(label="figure file")
    go.click(export_file, [ctx.trace, fmt], [out], api_visibility="private")  # the HTTP API is /export
    fig_go.click(figure_file, [ctx.trace, which], [fig_out], api_visibility="private")
