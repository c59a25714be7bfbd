"""Model card: what model this is, what it was trained on, and how it scores."""

from __future__ import annotations

import gradio as gr

from ..context import Ctx


def build(ctx: Ctx) -> None:
    card = ctx.session.path / "MODEL_CARD.md"
    with ctx.tab("card", gr.Tab("Model card", id="card")):
        gr.Markdown(card.read_text() if card.is_file() else f"No MODEL_CARD.md in {ctx.session.path}.")
