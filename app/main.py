"""The Gradio app: `build_app(session) -> gr.Blocks`, and `launch`.

Nothing loads at import time; the model and its indexes load once per process
(app.session.Session) and are shared read-only by every user.
"""

from __future__ import annotations

import os
import threading
import urllib.parse
from pathlib import Path

for _k, _v in (("GRADIO_ANALYTICS_ENABLED", "False"), ("HF_HUB_OFFLINE", "1"), ("HF_HUB_DISABLE_TELEMETRY", "1")):
    os.environ.setdefault(_k, _v)

import gradio as gr  # noqa: E402

from engram_core.knockout import format_knockout  # noqa: E402

from . import api  # noqa: E402
from .context import Ctx  # noqa: E402
from .layouts import SHIPPED, Layouts, address_json  # noqa: E402
from .session import MAX_CHARS, Session  # noqa: E402
from .tabs import card, export, gates, health, knockout, layout_views, lookups, memory_map, paper, rows  # noqa: E402
from .views import APP_CSS  # noqa: E402

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
          let fills = 0;
          const fill = () => {
            const rowBox = document.querySelector('#row-page-query textarea, #row-page-query input');
            if (!rowBox) {
              if (tries++ < 100) setTimeout(fill, 100);
              return;
            }
            // a freshly shown tab may still be mounting: fill a few times, until the value holds, then open
            if ((fills < 3 || rowBox.value !== String(p.customdata)) && fills < 20) {
              rowBox.value = String(p.customdata);
              rowBox.dispatchEvent(new Event('input', {bubbles: true}));
              fills += 1;
              setTimeout(fill, 150);
              return;
            }
            document.querySelector('#row-page-go').click();
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


def build_app(session: Session, layouts: Layouts | None = None) -> gr.Blocks:
    layouts = layouts or Layouts()
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
            model = gr.Dropdown(
                list(layouts.models()), value=SHIPPED, label="model", elem_id="model", scale=1, min_width=220
            )
            run = gr.Button("Run", variant="primary", elem_id="run")
            mask = gr.Textbox(
                label="knock-out mask (type one and Run, or set it in the Knock-out tab)",
                value="all",
                elem_id="mask",
                scale=2,
            )
            link = gr.Textbox(label="link to this state", elem_id="share-link", scale=3, buttons=["copy"])
        status = gr.Markdown(elem_id="status")
        examples = gr.Examples(EXAMPLES, inputs=[text], label="examples (held-out plays, code)")
        ctx = Ctx(session=session, trace=gr.State(None), text=text, mask=mask)
        ctx.model, ctx.addresses, ctx.layouts = model, gr.State(None), layouts
        # the documented endpoints first, so no internal event can take their names
        _wire_export_api(ctx)
        api.register(session)
        rows.register(session)

        def address(text: str, model: str = SHIPPED) -> dict:
            """The rows a text reads under a model: the JSON form of `engram address` (docs/addressing.md)."""
            return _address(ctx, text, model)

        gr.api(address, api_name="address")
        notice = gr.Markdown(elem_id="backbone-notice")
        with gr.Tabs() as tabs:
            for tab in (lookups, gates, memory_map, knockout, health, export, paper, card):
                tab.build(ctx)
            row_deep_link = rows.build(ctx)
        layout_views.notice(ctx, notice)
        _wire_state(ctx, demo, [run.click, text.submit, model.select], examples, status, link)
        row_deep_link(demo, tabs)
        dark.click(None, js=DARK_JS)
    return demo


class Runs:
    """Per browser session: the newest run it asked for, and the tab on its screen.

    A run of the opening link and a run the user starts may overlap (two events, which Gradio
    runs side by side); under load the older can finish last. Each run takes a number; its
    result, and the views drawn from it, are dropped when the session has started a newer run.
    The tab on screen is kept here, not in the page, and written the moment a tab's own draw
    starts: a run that ends while that draw is still computing (for the older state, so it is
    dropped) then redraws that tab for the newer state.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._next = 0
        self._newest: dict[str, int] = {}
        self._shown: dict[str, str] = {}

    def start(self, request: gr.Request | None) -> int:
        with self._lock:
            self._next += 1
            self._newest[_session_key(request)] = self._next
            return self._next

    def current(self, request: gr.Request | None, number: int | None) -> bool:
        with self._lock:
            return number is not None and self._newest.get(_session_key(request)) == number

    def superseded(self, request: gr.Request | None, number: int | None) -> bool:
        """True when the session has started a run other than `number` (so that run draws instead)."""
        with self._lock:
            return self._newest.get(_session_key(request), number) != number

    def show(self, request: gr.Request | None, tab_id: str) -> None:
        with self._lock:
            self._shown[_session_key(request)] = tab_id

    def shown(self, request: gr.Request | None) -> str:
        with self._lock:
            return self._shown.get(_session_key(request), "lookups")


def _session_key(request: gr.Request | None) -> str:
    return str(getattr(request, "session_hash", None) or "")


def _link(base: str, text: str, model: str, mask: str | None) -> str:
    params = {"text": text, "mask": mask, "model": model} if mask else {"text": text, "model": model}
    return f"{base}?{urllib.parse.urlencode(params)}"


def _wire_state(ctx: Ctx, demo: gr.Blocks, triggers: list, examples: gr.Examples, status, link) -> None:
    """Every change of the state on screen (text, model, mask) in one event that runs it and redraws from it.

    Run, Enter and the picker take the text and mask in their boxes; an opening link takes
    its own; Apply and the map's "Knock out these rows" (ctx.mask_sources) compute a mask
    from their controls. Each event computes the new state, runs it, and sets the mask box,
    the switches, the status line and the link from what ran: the trace's own mask, in
    its canonical spelling. Then only the tab on screen redraws (every other tab draws
    when shown, so a Run never pays for views nobody sees). A result for an older state
    than the session's newest is dropped whole (Runs), and a click while a run is under
    way is kept and runs after it (trigger_mode="always_last").
    """
    from .tabs.knockout import knockout_switches

    runs, run_id = Runs(), gr.State(None)
    outputs = [ctx.text, ctx.model, ctx.mask, *ctx.switches, ctx.trace, ctx.addresses, status, link, run_id]
    keep = [gr.skip() for _ in ctx.switches]

    def commit(request: gr.Request | None, text, model, mask, opened: bool = False, follow: bool = True) -> tuple:
        number = runs.start(request)
        base = str(request.request.base_url) if request is not None and request.request is not None else "/"
        boxes = (text, model) if opened else (gr.skip(), gr.skip())
        if model != SHIPPED:  # an addressing-only model: rows, no trace; the mask waits for the shipped model
            addresses = layout_views.user_addresses(ctx, text, model)
            shown = None if (mask or "all") == "all" else mask
            state = (mask if opened else gr.skip(), *keep, None, addresses)
            words = f"{len(addresses.ids)} tokens · {model} (addressing only)"
        else:
            trace = api.user_trace(ctx.session, text, mask)
            shown = format_knockout(trace.mask)
            switches = knockout_switches(trace.mask) if ctx.switches and follow else keep
            state, words = (shown, *switches, trace, None), f"{trace.n_tokens} tokens · mask `{shown}`"
        out = (*boxes, *state, words, _link(base, text, model, shown), number)
        return out if runs.current(request, number) else tuple(gr.skip() for _ in out)

    def run(request: gr.Request, text, model, mask):
        return commit(request, text, model, mask)

    def opened(request: gr.Request):
        text, mask, model = _from_url(request, ctx.layouts.models())
        try:
            return commit(request, text, model, mask, opened=True)
        except gr.Error as e:  # the link's text and mask stay in their boxes to be mended
            gr.Warning(f"the link's state did not run: {e.message}")
            words = f"not run: {e.message}"
            return (text, model, mask, *keep, None, None, words, gr.skip(), None)

    def source(fn, follow: bool):
        def run_source(request: gr.Request, text, model, mask, *values):
            return commit(request, text, model, fn(*values, mask), follow=follow)

        return run_source

    state = [ctx.text, ctx.model, ctx.mask]
    hidden = {"api_visibility": "private", "trigger_mode": "always_last"}  # the HTTP API is /trace (app.api)
    # gr.on cannot take a `.then` as a trigger: the example's run follows the event that fills the text
    events = [
        gr.on(triggers, run, state, outputs, **hidden),
        examples.load_input_event.then(run, state, outputs, api_visibility="private"),
    ]
    events.append(demo.load(opened, None, outputs, api_visibility="private"))
    events += [gr.on(t, source(fn, f), state + inputs, outputs, **hidden) for t, fn, inputs, f in ctx.mask_sources]
    _wire_redraw(ctx, events, runs, run_id)


def _wire_redraw(ctx: Ctx, events: list, runs: Runs, run_id: gr.State) -> None:
    """After each state change the tab on screen redraws; every tab draws when it is shown."""
    ins, outs = _union(ctx, "inputs"), _union(ctx, "outputs")
    hidden = {"api_visibility": "private"}

    # subtle: the request first: Gradio puts it at its parameter's place among the inputs
    def redraw_shown(request: gr.Request, number, *values):
        if not runs.current(request, number):  # a newer run is on its way: its own redraw follows
            return [gr.skip() for _ in outs]
        by_id, shown = {id(c): v for c, v in zip(ins, values, strict=True)}, runs.shown(request)
        drawn = {k: v for t in ctx.views if t != shown for k, v in _draw(ctx, t, by_id, layout_only=True).items()}
        drawn.update(_draw(ctx, shown, by_id))
        if not runs.current(request, number):  # overtaken while drawing: the newer run draws
            return [gr.skip() for _ in outs]
        return [drawn.get(id(c), gr.skip()) for c in outs]

    # subtle: "always_last", not the default "once": a run that ends while the previous run's redraw
    # is still drawing would otherwise have its own redraw skipped, and the older one is dropped
    for event in events:
        event.success(redraw_shown, [run_id, *ins], outs, trigger_mode="always_last", **hidden)
    for tab_id, tab in ctx.tabs.items():
        view_ins, view_outs = _union(ctx, "inputs", tab_id), _union(ctx, "outputs", tab_id)

        def on_select(request: gr.Request, number, *values, tab_id=tab_id, view_ins=view_ins, view_outs=view_outs):
            runs.show(request, tab_id)  # first: a run ending from now on redraws this tab
            if runs.superseded(request, number):  # drawn for an older state: that run's redraw draws it
                return [gr.skip() for _ in view_outs]
            drawn = _draw(ctx, tab_id, {id(c): v for c, v in zip(view_ins, values, strict=True)})
            if runs.superseded(request, number):
                return [gr.skip() for _ in view_outs]
            return [drawn[id(c)] for c in view_outs]

        tab.select(on_select, [run_id, *view_ins], view_outs, **hidden)


def _union(ctx: Ctx, which: str, tab_id: str | None = None) -> list:
    """The distinct components the views of one tab (or all tabs) read or write, in a fixed order."""
    out: dict[int, object] = {}
    for t, views in ctx.views.items():
        for v in views if tab_id in (None, t) else ():
            out.update({id(c): c for c in getattr(v, which)})
    return list(out.values())


def _draw(ctx: Ctx, tab_id: str, values: dict[int, object], layout_only: bool = False) -> dict[int, object]:
    """Run the views of one tab on the given input values; {id(output component): value}.

    layout_only: only the views drawn from the picked model alone (which parts show, the one-line
    notices): cheap, and drawn for every tab after a run, so no tab opens on another model's layout."""
    drawn: dict[int, object] = {}
    for v in ctx.views.get(tab_id, ()):
        if layout_only and any(c is not ctx.model for c in v.inputs):
            continue
        result = v.fn(*(values[id(c)] for c in v.inputs))
        result = result if len(v.outputs) > 1 else (result,)
        drawn.update({id(c): r for c, r in zip(v.outputs, result, strict=True)})
    return drawn


def _from_url(request: gr.Request, models: tuple[str, ...]):
    params = dict(request.query_params) if request is not None else {}
    model = params.get("model", SHIPPED)
    return params.get("text", EXAMPLES[0])[:MAX_CHARS], params.get("mask", "all"), model if model in models else SHIPPED


def _address(ctx: Ctx, text: str, model: str = SHIPPED) -> dict:
    """The JSON form of `engram address` (docs/addressing.md) for a text under a model."""
    try:
        return address_json(ctx.layouts, ctx.session, text, model)
    except ValueError as e:
        raise gr.Error(str(e).splitlines()[0] if str(e) else "bad input") from e


def _wire_export_api(ctx: Ctx) -> None:
    """/export: text + format -> a trace file (an event, since the API returns a file)."""
    with gr.Row(visible=False):
        e_text, e_fmt, e_mask = gr.Textbox(), gr.Textbox(value="json"), gr.Textbox(value="all")
        e_file, e_go = gr.File(file_count="multiple"), gr.Button()

    def export_text(text: str, fmt: str, mask: str):
        return export.export_file(api.user_trace(ctx.session, text, mask), fmt)

    e_go.click(export_text, [e_text, e_fmt, e_mask], [e_file], api_name="export")


def launch(
    checkpoint: str,
    host: str = "127.0.0.1",
    port: int | None = None,
    scan=None,
    tables=None,
    layouts: list[str] | None = None,
    **kw,
) -> gr.Blocks:
    session = Session.load(checkpoint)
    picker = Layouts.with_folders(layouts, scan_dir=scan and Path(scan), tables_dir=tables and Path(tables))
    demo = build_app(session, picker)
    demo.queue(default_concurrency_limit=4)
    demo.launch(
        server_name=host,
        server_port=port,
        share=False,
        js=CLICK_JS,
        css=APP_CSS,
        theme=gr.themes.Soft(),
        allowed_paths=[str(export.EXPORT_DIR)],
        **kw,
    )
    return demo
