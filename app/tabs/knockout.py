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
from ..api import user_trace
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


def build(ctx: Ctx) -> None:
    s = ctx.session
    spec = s.ck.model.cfg.memory.hash_spec
    with ctx.tab("knockout", gr.Tab("Knock-out", id="knockout")):
        with gr.Row():
            all_off = gr.Checkbox(label="all memory off", value=True, elem_id="ko-all")
            layers = gr.CheckboxGroup([(f"layer {L}", L) for L in s.layers], label="layers off")
            orders = gr.CheckboxGroup([(f"order {n}", n) for n in spec.orders], label="orders off")
            branches = gr.CheckboxGroup([(f"branch {m}", m) for m in range(s.n_branches)], label="branches off")
        heads = gr.CheckboxGroup(
            [
                (f"L{L} n{n} h{h}", str(HeadAddress(L, n, h)))
                for L in s.layers
                for n in spec.orders
                for h in range(spec.heads_per_ngram)
            ],
            label="heads off",
        )
        rows = gr.Textbox(label="rows off (L:N:K:R, comma-separated)", placeholder="1:2:0:44404, 2:3:1:42")
        mode = gr.Radio(
            [("zeros", "zero"), ("head's mean row", "mean"), ("another N-gram's row", "resample")],
            value="zero",
            label="removed rows become",
            elem_id="ko-mode",
        )
        apply = gr.Button("Apply knock-out", variant="primary", elem_id="ko-apply")
        delta = gr.Plot(label="Δ log p per token", elem_id="ko-delta")
        summary = gr.Markdown(elem_id="ko-summary")
        topk = gr.Dataframe(headers=views.TOPK_HEADERS, label="top-k, memory on vs masked", wrap=True)
        with gr.Row():
            cont_on = gr.Textbox(label="greedy continuation, memory on", lines=3)
            cont_off = gr.Textbox(label="greedy continuation, masked", lines=3)

    switches = [all_off, layers, orders, heads, branches, rows, mode]
    outputs = [delta, summary, topk, cont_on, cont_off]

    def compose(*values) -> str:
        try:
            ko = switches_knockout(*values)
            ko.validate(s.ck.model.cfg)  # a row past its head's prime says so before any run
        except ValueError as e:
            raise gr.Error(str(e)) from e
        return format_knockout(ko)  # the mask box shows the mask as a user would type it

    def rerun(text, mask):
        trace = user_trace(s, text, mask)
        return trace, *views_of(trace)

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

    def apply_switches(text, *values):
        # subtle: one function from the switches to the views: a chained event read the mask box back
        # from the page, where a compose of an earlier switch change could still be landing
        mask = compose(*values)
        return mask, *rerun(text, mask)

    hidden = {"api_visibility": "private"}  # the HTTP API is /knockout (app.api)
    gr.on([w.change for w in switches], compose, switches, [ctx.mask], show_progress="hidden", **hidden)
    # always_last: a click while the last one still runs is kept (the default drops it), and runs last
    apply.click(
        apply_switches, [ctx.text, *switches], [ctx.mask, ctx.trace, *outputs], trigger_mode="always_last", **hidden
    )
    ctx.view("knockout", views_of, [ctx.trace], outputs)
