"""Model card: what model this is, what it was trained on, and how it scores; for an addressing-only
model, what its memory layout is."""

from __future__ import annotations

import gradio as gr

from ..context import Ctx
from ..layouts import SHIPPED


def layout_card(layout) -> str:
    """The facts of an addressing-only model's memory, from its layout (sources: docs/addressing.md)."""
    spec = layout.spec
    rows = sum(layout.stored_rows(L) for L in layout.layers)
    lines = [
        f"### {layout.name}: memory layout (addressing only)",
        "The app reads this model's memory addressing, not its backbone: Lookups shows the rows every token "
        "reads, Health the traffic and cache curves of a corpus sample. The weights are not loaded.",
        "",
        "| | |",
        "|---|---|",
        f"| Engram layers | {', '.join(str(L) for L in layout.layers)} |",
        f"| N-gram orders | {', '.join(str(n) for n in range(2, spec.max_ngram + 1))} |",
        f"| hash heads per order | {spec.heads_per_ngram} |",
        f"| tokenizer vocabulary | {layout.vocab_size:,} ids, {spec.vocab_size:,} after compression |",
        f"| rows per layer | {', '.join(f'{layout.stored_rows(L):,}' for L in layout.layers)} |",
        f"| values per row | {layout.d_head} ({layout.dtype}, {layout.row_bytes} bytes a row) |",
        f"| tables in all | {rows:,} rows, {rows * layout.row_bytes / 2**30:,.1f} GiB |",
        "",
        "Where every number comes from (repository, path, commit): `docs/addressing.md`.",
    ]
    return "\n".join(lines)


def build(ctx: Ctx) -> None:
    card = ctx.session.path / "MODEL_CARD.md"
    with ctx.tab("card", gr.Tab("Model card", id="card")):
        with ctx.backbone("card"):
            gr.Markdown(
                card.read_text() if card.is_file() else f"No MODEL_CARD.md beside the model `{ctx.session.path.name}`."
            )
        other = gr.Markdown(elem_id="layout-card")

    def draw(model):
        if model in (None, SHIPPED) or ctx.layouts is None:
            return ""
        return layout_card(ctx.layouts.layout(model))

    ctx.view("card", draw, [ctx.model], [other])
