"""Knock-out: switch parts of the memory off and watch the current text re-run live."""

from __future__ import annotations

import gradio as gr

from engram_core.knockout import format_knockout, parse_knockout

from .. import views
from ..context import Ctx
from ..session import InputError

CONTINUATION_TOKENS = 24


def mask_from_switches(all_off: bool, layers: list, orders: list, heads: list, branches: list, rows: str) -> str:
    items = ["all"] if all_off else []
    items += [f"layer={x.split()[-1]}" for x in layers or []] + [f"order={x.split()[-1]}" for x in orders or []]
    items += ["head=" + ":".join(x.replace("L", "").replace("n", "").replace("h", "").split()) for x in heads or []]
    items += [f"branch={x.split()[-1]}" for x in branches or []]
    items += [
        r.strip() if r.strip().startswith("row=") else f"row={r.strip()}" for r in (rows or "").split(",") if r.strip()
    ]
    return format_knockout(parse_knockout(",".join(items)))


def greedy(session, ids: list[int], mask, n: int = CONTINUATION_TOKENS) -> str:
    def run(model):
        text = session.ck.tokenizer.decode(model.generate(ids, n, knockout=mask)[0].tolist())
        return text if text.strip() else views.show(text)  # a run of blank lines, made visible

    return session.run_model(run)


def build(ctx: Ctx) -> None:
    s = ctx.session
    spec = s.ck.model.cfg.memory.hash_spec
    with gr.Tab("Knock-out", id="knockout"):
        with gr.Row():
            all_off = gr.Checkbox(label="all memory off", value=True, elem_id="ko-all")
            layers = gr.CheckboxGroup([f"layer {L}" for L in s.layers], label="layers off")
            orders = gr.CheckboxGroup([f"order {n}" for n in spec.orders], label="orders off")
            branches = gr.CheckboxGroup([f"branch {m}" for m in range(s.n_branches)], label="branches off")
        heads = gr.CheckboxGroup(
            [f"L{L} n{n} h{h}" for L in s.layers for n in spec.orders for h in range(spec.heads_per_ngram)],
            label="heads off",
        )
        rows = gr.Textbox(label="rows off (L:N:K:R, comma-separated)", placeholder="1:2:0:8615, 2:3:1:42")
        apply = gr.Button("Apply knock-out", variant="primary", elem_id="ko-apply")
        delta = gr.Plot(label="Δ log p per token", elem_id="ko-delta")
        summary = gr.Markdown(elem_id="ko-summary")
        topk = gr.Dataframe(headers=views.TOPK_HEADERS, label="top-k, memory on vs masked", wrap=True)
        with gr.Row():
            cont_on = gr.Textbox(label="greedy continuation, memory on", lines=3)
            cont_off = gr.Textbox(label="greedy continuation, masked", lines=3)

    switches = [all_off, layers, orders, heads, branches, rows]

    def compose(*values):
        try:
            return mask_from_switches(*values)
        except ValueError as e:
            raise gr.Error(str(e)) from e

    def rerun(text, mask):
        try:
            trace = s.capture(text, parse_knockout(mask or "all"))
        except (InputError, ValueError) as e:
            raise gr.Error(str(e)) from e
        return trace, *views_of(trace)

    def views_of(trace):
        if trace is None:
            return None, "", [], "", ""
        from engram_inspect.diff import knockout_diff

        d = knockout_diff(trace)
        lost = ", ".join(f"{views.show(x.target)} ({x.delta_logprob:+.2f})" for x in d.biggest_losses[:5])
        md = (
            f"**mask** `{format_knockout(parse_knockout(_mask_str(trace.mask)))}` · mean loss change "
            f"**{d.mean_loss_change:+.3f}** nats/token · mean KL {d.mean_kl:.3f} · top-1 accuracy "
            f"{d.top1_accuracy_on:.2f} → {d.top1_accuracy_masked:.2f} · lost most: {lost or 'nothing'}"
        )
        ids = trace.token_ids.tolist()
        on = greedy(s, ids, parse_knockout("none"))
        off = greedy(s, ids, parse_knockout(_mask_str(trace.mask)))
        return views.delta_figure(trace, d), md, views.topk_rows(trace, d), on, off

    for i, w in enumerate(switches):
        w.change(compose, switches, [ctx.mask], api_name=f"ko_switch_{i}", show_progress="hidden")
    apply.click(compose, switches, [ctx.mask], api_name="ko_compose").then(
        rerun, [ctx.text, ctx.mask], [ctx.trace, delta, summary, topk, cont_on, cont_off], api_name="ko_apply"
    )
    ctx.on_trace.append((views_of, [ctx.trace], [delta, summary, topk, cont_on, cont_off]))


def _mask_str(mask: dict) -> str:
    from engram_core import KnockOut

    return format_knockout(KnockOut.from_dict(mask))
