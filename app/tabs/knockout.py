"""Knock-out: switch parts of the memory off and watch the current text re-run live.

The switches carry values (layer ids, orders, `HeadAddress` strings, branch ids), from which
`switches_knockout` builds a KnockOut directly; only the typed row list is text, and
it goes through the one parser of user strings, `parse_knockout`.
"""

from __future__ import annotations

from dataclasses import astuple

import gradio as gr

from engram_core import KnockOut
from engram_core.addresses import HeadAddress
from engram_core.knockout import format_knockout, parse_knockout

from .. import views
from ..context import Ctx

CONTINUATION_TOKENS = 24


def switches_knockout(
    all_off: bool, layers: list, orders: list, heads: list, branches: list, rows: str, mode: str = "zero"
) -> KnockOut:
    """The KnockOut the switches describe; a bad row list raises ValueError (one line)."""
    typed = [r.strip() for r in (rows or "").split(",") if r.strip()]
    # every typed item becomes a row= item, so the list can only ever name rows
    from_rows = parse_knockout(",".join(r if r.startswith("row=") else f"row={r}" for r in typed))
    return KnockOut(
        all=bool(all_off),
        layers=frozenset(int(x) for x in layers or ()),
        orders=frozenset(int(x) for x in orders or ()),
        heads=frozenset(astuple(HeadAddress.parse(x)) for x in heads or ()),
        branches=frozenset(int(x) for x in branches or ()),
        rows=from_rows.rows,
        mode=mode or "zero",
    )


def greedy(session, ids: list[int], mask: KnockOut, n: int = CONTINUATION_TOKENS) -> str:
    def run(model):
        text = session.ck.tokenizer.decode(model.generate(ids, n, knockout=mask)[0].tolist())
        return text if text.strip() else views.show(text)  # a run of blank lines, made visible

    return session.run_model(run)


def knockout_switches(ko: KnockOut) -> tuple:
    """The switch values that describe `ko` (the inverse of switches_knockout, for the switches to follow
    the state); typed rows come back as "L:N:K:R" items."""
    rows = ", ".join(f"{L}:{n}:{h}:{r}" for L, n, h, r in sorted(ko.rows))
    heads = [str(HeadAddress(*h)) for h in sorted(ko.heads)]
    return ko.all, sorted(ko.layers), sorted(ko.orders), heads, sorted(ko.branches), rows, ko.mode


def build(ctx: Ctx) -> None:
    s = ctx.session
    spec = s.ck.model.cfg.memory.hash_spec
    with ctx.tab("knockout", gr.Tab("Knock-out", id="knockout")), ctx.backbone("knockout"):
        with gr.Row():
            all_off = gr.Checkbox(label="all memory off", value=True, elem_id="ko-all")
            layers = gr.CheckboxGroup([(f"layer {L}", L) for L in s.layers], label="layers off", elem_id="ko-layers")
            orders = gr.CheckboxGroup([(f"order {n}", n) for n in spec.orders], label="orders off", elem_id="ko-orders")
            branches = gr.CheckboxGroup(
                [(f"branch {m}", m) for m in range(s.n_branches)], label="branches off", elem_id="ko-branches"
            )
        heads = gr.CheckboxGroup(
            [
                (f"L{L} n{n} h{h}", str(HeadAddress(L, n, h)))
                for L in s.layers
                for n in spec.orders
                for h in range(spec.heads_per_ngram)
            ],
            label="heads off",
            elem_id="ko-heads",
        )
        rows = gr.Textbox(
            label="rows off (L:N:K:R, comma-separated)", placeholder="1:2:0:44404, 2:3:1:42", elem_id="ko-rows"
        )
        mode = gr.Radio(
            [("zeros", "zero"), ("head's mean row", "mean"), ("another N-gram's row", "resample")],
            value="zero",
            label="removed rows become",
            elem_id="ko-mode",
        )
        apply = gr.Button("Apply knock-out", variant="primary", elem_id="ko-apply")
        delta = gr.Plot(label="Δ log p per token", elem_id="ko-delta")
        summary = gr.Markdown(elem_id="ko-summary")
        topk = gr.Dataframe(
            headers=views.TOPK_HEADERS, label="top-k, memory on vs masked", wrap=True, elem_id="ko-topk"
        )
        with gr.Row():
            cont_on = gr.Textbox(label="greedy continuation, memory on", lines=3)
            cont_off = gr.Textbox(label="greedy continuation, masked", lines=3)

    switches = [all_off, layers, orders, heads, branches, rows, mode]
    outputs = [delta, summary, topk, cont_on, cont_off]
    ctx.switches = switches

    def compose(*values) -> str:
        try:
            ko = switches_knockout(*values)
            ko.validate(s.ck.model.cfg)  # a row past its head's prime says so before any run
        except ValueError as e:
            raise gr.Error(str(e)) from e
        return format_knockout(ko)  # the mask box shows the mask as a user would type it

    def preview(*values):  # a bad typed row is left for Apply to name: one message, not one per edit
        try:
            return compose(*values)
        except gr.Error:
            return gr.skip()

    def views_of(trace):
        if trace is None:
            return None, "", [], "", ""
        from engram_inspect.text.diff import knockout_diff

        d = knockout_diff(trace)
        lost = ", ".join(f"{views.show(x.target)} ({x.delta_logprob:+.2f})" for x in d.biggest_losses[:5])
        md = (
            f"**mask** `{format_knockout(trace.mask)}` · mean loss change "
            f"**{d.mean_loss_change:+.3f}** nats/token · mean KL {d.mean_kl:.3f} · top-1 accuracy "
            f"{d.top1_accuracy_on:.2f} → {d.top1_accuracy_masked:.2f} · lost most: {lost or 'nothing'}"
        )
        ids = trace.token_ids.tolist()
        on, off = greedy(s, ids, KnockOut()), greedy(s, ids, trace.mask)
        return views.delta_figure(trace, d), md, views.topk_rows(trace, d), on, off

    # a switch a user changes shows its mask in the box at once (`input`: not when the state redraws them);
    # Apply sets the state to the switches' mask and runs it, in one event (app.main), never reading the box back
    hidden = {"api_visibility": "private"}  # the HTTP API is /knockout (app.api)
    # (typed rows when the box is left or Enter pressed: a half-typed row is no error)
    edits = [w.input for w in switches if w is not rows] + [rows.blur, rows.submit]
    gr.on(edits, preview, switches, [ctx.mask], show_progress="hidden", **hidden)
    ctx.mask_source([apply.click], lambda *values: compose(*values[:-1]), switches, switches_follow=False)
    ctx.view("knockout", views_of, [ctx.trace], outputs)
