"""The handful of objects every tab needs: the shared session, this user's state, and the views.

A tab registers what it draws from a trace with `ctx.view(tab_id, fn, inputs, outputs)`
and its `gr.Tab` with `ctx.tab(tab_id, tab)`; app.main draws a tab's views when the tab
is shown and, after a Run, only those of the tab on screen.

The state on screen is one triple, text, model and mask (its mode included). Only
app.main changes it, in one event per change: a tab that sets a new mask (Apply, the
map's "Knock out these rows") registers how with `ctx.mask_source`, and app.main runs
it, redraws the switches, the mask box, the status line and the link from the result.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import gradio as gr

from .layouts import Layouts
from .session import Session


@dataclass
class View:
    fn: Callable  # fn(*inputs) -> one value per output
    inputs: list
    outputs: list


@dataclass
class Ctx:
    session: Session
    trace: gr.State  # this user's current Trace (None before the first run)
    text: gr.Textbox  # the text being inspected
    mask: gr.Textbox  # the knock-out mask, as `engram trace --knockout` spells it
    views: dict[str, list[View]] = field(default_factory=dict)  # tab id -> what it draws from a trace
    tabs: dict[str, gr.Tab] = field(default_factory=dict)  # tab id -> the tab
    model: gr.Dropdown | None = None  # the picked model (Layouts.models())
    addresses: gr.State | None = None  # this user's Addresses when an addressing-only model is picked
    layouts: Layouts | None = None  # the addressing-only models, shared like the session
    switches: list = field(default_factory=list)  # the Knock-out tab's controls (knockout.switches_knockout's order)
    mask_sources: list = field(default_factory=list)  # (triggers, fn(*inputs, mask) -> mask, inputs, follow)

    def view(self, tab_id: str, fn: Callable, inputs: list, outputs: list) -> None:
        self.views.setdefault(tab_id, []).append(View(fn, list(inputs), list(outputs)))

    def tab(self, tab_id: str, tab: gr.Tab) -> gr.Tab:
        self.tabs[tab_id] = tab
        return tab

    def mask_source(self, triggers: list, fn: Callable, inputs: list, switches_follow: bool = True) -> None:
        """Triggers that set the mask to fn(*inputs, mask in the box) and run the text under it.

        switches_follow=False when the inputs are the switches themselves: they already show the mask,
        and a result written back could undo a switch the user changed while it ran."""
        self.mask_sources.append((list(triggers), fn, list(inputs), switches_follow))

    def backbone(self, tab_id: str) -> gr.Column:
        """A column of views that need the shipped model's backbone: shown only while it is picked
        (the tab then shows the one line of app.tabs.layout_views.notice instead)."""
        from .layouts import SHIPPED

        column = gr.Column(visible=self.model is None or self.model.value == SHIPPED)
        self.view(tab_id, lambda model: gr.Column(visible=model in (None, SHIPPED)), [self.model], [column])
        return column
