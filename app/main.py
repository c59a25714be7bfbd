"""The Gradio app: `build_app(session) -> gr.Blocks`, and `launch`.

Nothing loads at import time; the model and its indexes load once per process
(app.session.Session) and are shared read-only by every user.
"""

from __future__ import annotations

import os
import urllib.parse

for _k, _v in (("GRADIO_ANALYTICS_ENABLED", "False"), ("HF_HUB_OFFLINE", "1"), ("HF_HUB_DISABLE_TELEMETRY", "1")):
    os.environ.setdefault(_k, _v)

import gradio as gr  # noqa: E402

from engram_core.knockout import format_knockout, parse_knockout  # noqa: E402

from . import api  # noqa: E402
from .context import Ctx  # noqa: E402
from .session import MAX_CHARS, InputError, Session  # noqa: E402
from .tabs import card, export, gates, health, knockout, lookups, memory_map, paper, rows  # noqa: E402

EXAMPLES = [
    "I pray you, my lord, let me know your pleasure.",
    "Good night, sweet prince, and flights of angels sing thee to thy rest!",
    "O, I am fortune's fool!",
    "class Stack:\n    def __init__(self):\n        self.items = []\n\n"
    "    def push(self, item):\n        self.items.append(item)\n",
    "import os\nif isinstance(path, str):\n    raise ValueError('bad path')\n",
]

# a click on a memory-map point fills the row query and searches (plotly emits plotly_click)
CLICK_JS = """
() => {
  const hook = () => {
    const div = document.querySelector('#memory-map .js-plotly-plot');
    if (div && !div.__engramHooked && div.on) {
      div.__engramHooked = true;
      div.on('plotly_click', (ev) => {
        const p = ev.points && ev.points[0];
        if (!p || p.customdata === undefined) return;
        const box = document.querySelector('#row-query textarea, #row-query input');
        box.value = String(p.customdata);
        box.dispatchEvent(new Event('input', {bubbles: true}));
        setTimeout(() => document.querySelector('#find-neighbours').click(), 50);
        // ...then opens the point's row page (the tab renders on first show, so wait for its box)
        setTimeout(() => {
          const tabs = [...document.querySelectorAll('button[role="tab"]')];
          const tab = tabs.find((b) => b.innerText.trim() === 'Row page');
          if (tab) tab.click();
          let tries = 0;
          const fill = () => {
            const rowBox = document.querySelector('#row-page-query textarea, #row-page-query input');
            if (!rowBox) {
              if (tries++ < 100) setTimeout(fill, 100);
              return;
            }
            rowBox.value = String(p.customdata);
            rowBox.dispatchEvent(new Event('input', {bubbles: true}));
            setTimeout(() => document.querySelector('#row-page-go').click(), 80);
          };
          fill();
        }, 400);
      });
    }
  };
  setInterval(hook, 500);
}
"""

DARK_JS = "() => { document.body.classList.toggle('dark'); }"


def build_app(session: Session) -> gr.Blocks:
    with gr.Blocks(title="Engram Inspector") as demo:
        with gr.Row():
            gr.Markdown(
                "# Engram Inspector\nWhat a hashed N-gram memory looks up for every token, how far each gate opens, "
                "and what is lost when it is switched off."
            )
            dark = gr.Button("◐ dark mode", size="sm", scale=0)
        text = gr.Textbox(
            label=f"text (Enter runs, Shift+Enter adds a line; up to {MAX_CHARS:,} characters)",
            lines=1,
            max_lines=12,
            elem_id="text-input",
            value=EXAMPLES[0],
        )
        with gr.Row():
            run = gr.Button("Run", variant="primary", elem_id="run")
            mask = gr.Textbox(label="knock-out mask (set in the Knock-out tab)", value="all", elem_id="mask", scale=2)
            link = gr.Textbox(label="link to this state", elem_id="share-link", scale=3)
        status = gr.Markdown(elem_id="status")
        gr.Examples(EXAMPLES, inputs=[text], label="examples (held-out plays, code)")
        ctx = Ctx(session=session, trace=gr.State(None), text=text, mask=mask)
        with gr.Tabs() as tabs:
            for tab in (lookups, gates, memory_map, knockout, health, export, paper, card):
                tab.build(ctx)
            row_deep_link = rows.build(ctx)
        loaded = demo.load(_from_url, None, [text, mask], api_name="load_state")
        _wire_run(ctx, (run.click, text.submit, loaded.then), status, link)
        _wire_export_api(ctx)
        row_deep_link(demo, tabs)
        api.register(session)
        dark.click(None, js=DARK_JS, api_name="dark_mode")
    return demo


def _run_event(ctx: Ctx, status, link):
    def run(text, mask, request: gr.Request):
        try:
            ko = parse_knockout(mask or "all")
            trace = ctx.session.capture(text, ko)
        except (InputError, ValueError) as e:
            return None, f"⚠️ {e}", ""
        q = urllib.parse.urlencode({"text": text, "mask": format_knockout(ko)})
        base = str(request.request.base_url) if request is not None and request.request is not None else "/"
        return trace, f"{trace.n_tokens} tokens · mask `{format_knockout(ko)}`", f"{base}?{q}"

    return run, [ctx.text, ctx.mask], [ctx.trace, status, link]


def _wire_run(ctx: Ctx, triggers, status, link) -> None:
    """Each trigger (Run, Enter, opening a link) captures the text, then every view redraws."""
    fn, inputs, outputs = _run_event(ctx, status, link)
    for i, trigger in enumerate(triggers):
        ev = trigger(fn, inputs, outputs, api_name=f"run_{i}")
        for j, (view, v_in, v_out) in enumerate(ctx.on_trace):
            ev = ev.then(view, v_in, v_out, api_name=f"view_{i}_{j}")


def _from_url(request: gr.Request):
    params = dict(request.query_params) if request is not None else {}
    return params.get("text", EXAMPLES[0])[:MAX_CHARS], params.get("mask", "all")


def _wire_export_api(ctx: Ctx) -> None:
    """/export: text + format -> a trace file (an event, since the API returns a file)."""
    with gr.Row(visible=False):
        e_text, e_fmt, e_mask = gr.Textbox(), gr.Textbox(value="json"), gr.Textbox(value="all")
        e_file, e_go = gr.File(), gr.Button()

    def export_text(text: str, fmt: str, mask: str):
        try:
            trace = ctx.session.capture(text, parse_knockout(mask or "all"))
        except (InputError, ValueError) as e:
            raise gr.Error(str(e)) from e
        return export.export_file(trace, fmt)

    e_go.click(export_text, [e_text, e_fmt, e_mask], [e_file], api_name="export")


def launch(checkpoint: str, host: str = "127.0.0.1", port: int | None = None, **kw) -> gr.Blocks:
    session = Session.load(checkpoint)
    demo = build_app(session)
    demo.queue(default_concurrency_limit=4)
    demo.launch(
        server_name=host,
        server_port=port,
        share=False,
        js=CLICK_JS,
        theme=gr.themes.Soft(),
        allowed_paths=[str(export.EXPORT_DIR)],
        **kw,
    )
    return demo
