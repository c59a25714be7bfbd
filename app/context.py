"""The handful of objects every tab needs: the shared session and this user's state."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import gradio as gr

from .session import Session


@dataclass
class Ctx:
    session: Session
    trace: gr.State  # this user's current Trace (None before the first run)
    text: gr.Textbox  # the text being inspected
    mask: gr.Textbox  # the knock-out mask, as `engram trace --knockout` spells it
    # (fn, inputs, outputs) of every view that redraws when a new trace arrives
    on_trace: list[tuple[Callable, list, list]] = field(default_factory=list)
