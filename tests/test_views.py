"""The app's pure views and tab wiring on a tiny checkpoint: what the user reads is what the data says."""

import dataclasses

import numpy as np
import pytest

gr = pytest.importorskip("gradio")

from app import views  # noqa: E402
from engram_inspect.text.capture import capture  # noqa: E402


def _component(demo, elem_id):
    return next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == elem_id)


@pytest.fixture(scope="module")
def tiny_demo(tiny_session):
    from app.main import build_app

    return build_app(tiny_session)


def test_gate_bins_by_hand():
    assert views.gate_bin(0.0) == "α 0.0–0.1"
    assert views.gate_bin(0.099) == "α 0.0–0.1"
    assert views.gate_bin(0.55) == "α 0.5–0.6"
    assert views.gate_bin(1.0) == "α 0.9–1.0"  # alpha = 1 belongs to the last bin, not an eleventh
    assert views.GATE_BINS[0].startswith("α 0.0") and views.GATE_BINS[-1].endswith("1.0")
    # ten distinct opaque colours (Gradio drops a colour's own alpha), lighter bin by bin
    colours = list(views.GATE_COLOURS.values())
    assert list(views.GATE_COLOURS) == views.GATE_BINS and len(set(colours)) == 10
    assert all(c.startswith("#") and len(c) == 7 for c in colours)
    light = [0.2126 * int(c[1:3], 16) + 0.7152 * int(c[3:5], 16) + 0.0722 * int(c[5:7], 16) for c in colours]
    assert light == sorted(light)


def test_token_strip_legend_runs_from_0_to_1(tiny_session, tiny_demo):
    """Bug 8: numeric scores get Gradio's fixed -1..+1 legend; the strip must carry 0..1 bins."""
    tr = capture(tiny_session.ck, "I pray you, my lord.")
    gate = np.zeros_like(tr.gate)
    gate[:, :, :] = np.linspace(0, 1, tr.n_tokens)[None, :, None]
    tr = dataclasses.replace(tr, gate=gate)
    strip = views.token_strip(tr)
    assert [t for t, _ in strip] == tr.tokens
    assert strip[0][1] == "α 0.0–0.1" and strip[-1][1] == "α 0.9–1.0"
    shown = _component(tiny_demo, "token-strip")
    assert shown.color_map == views.GATE_COLOURS  # the legend lists the ten bins, 0 to 1
    sent = shown.postprocess(strip).model_dump()
    labels = [e["class_or_confidence"] for e in sent]
    assert all(isinstance(x, str) and x in views.GATE_BINS for x in labels)  # no number: no -1..+1 scale


def test_collision_table_has_named_columns(tiny_session, tiny_demo, monkeypatch, tmp_path):
    """Bug 7: the Health tab's collision table showed columns named 1..7."""
    from engram_inspect.memory.collisions import build_collision_index

    tr = capture(tiny_session.ck, "I pray you, my lord. " * 5)
    head_table = build_collision_index(tiny_session.ck, [tr.token_ids]).head_table()
    assert views.COLLISION_COLUMNS == list(head_table[0])
    rows = views.collision_rows(head_table)
    sent = _component(tiny_demo, "collision-table").postprocess(rows)
    assert sent.headers == views.COLLISION_COLUMNS
    assert [r[3] for r in sent.data] == [h["prime"] for h in head_table]


def _fn(demo, name):
    return next(f for f in demo.fns.values() if f.name == name)


def test_api_lists_only_the_documented_endpoints(tiny_demo):
    import re
    from pathlib import Path

    documented = set(re.findall(r"^## (/\w+)$", (Path(__file__).parent.parent / "docs" / "api.md").read_text(), re.M))
    assert documented == {
        "/trace",
        "/knockout",
        "/attribution",
        "/neighbours",
        "/export",
        "/row",
        "/address",
        "/cache_sizing",
    }
    info = tiny_demo.get_api_info()
    assert set(info["named_endpoints"]) == documented and not info["unnamed_endpoints"]


def test_a_run_draws_only_the_tab_on_screen(tiny_session, tiny_demo, monkeypatch):
    """The Knock-out tab's two greedy continuations run when it is shown, not on every Run."""
    from app.main import Runs
    from app.tabs import knockout

    calls = []
    monkeypatch.setattr(knockout, "greedy", lambda s, ids, mask, n=24: calls.append(mask) or "...")
    runs = [f for f in tiny_demo.fns.values() if f.name in ("run", "opened", "run_source")]
    # Run/Enter/model (one event, three triggers), clicking an example, opening a link, Apply, the map's rows
    assert len(runs) == 5
    redraw = _fn(tiny_demo, "redraw_shown")
    tr = capture(tiny_session.ck, "I pray you, my lord.")
    # the run's number, then the views' inputs; the tab on screen is kept per browser session (Runs)
    assert isinstance(redraw.inputs[0], gr.State)
    values = [tr if isinstance(b, gr.State) else b.value for b in redraw.inputs[1:]]
    run_states = next(c.cell_contents for c in redraw.fn.__closure__ if isinstance(c.cell_contents, Runs))

    class Req:
        session_hash = "a-browser"

    number = run_states.start(Req())  # the newest run of this browser: its redraw draws
    run_states.show(Req(), "gates")
    out = dict(zip(_ids(redraw.outputs), redraw.fn(Req(), number, *values), strict=True))
    assert calls == []
    assert out["gate-heatmap"] is not None and out["gate-heatmap"] != gr.skip()
    assert out["ko-summary"] == gr.skip() and out["token-strip"] == gr.skip()
    run_states.show(Req(), "knockout")
    out = dict(zip(_ids(redraw.outputs), redraw.fn(Req(), number, *values), strict=True))
    assert len(calls) == 2 and "mean loss change" in out["ko-summary"] and out["gate-heatmap"] == gr.skip()
    # showing the tab draws it, and marks it as the tab on screen
    select = next(f for f in tiny_demo.fns.values() if f.name == "on_select" and "ko-summary" in _ids(f.outputs))
    run_states.show(Req(), "gates")
    sel_values = [tr if isinstance(b, gr.State) else b.value for b in select.inputs[1:]]
    drawn = dict(zip(_ids(select.outputs), select.fn(Req(), number, *sel_values), strict=True))
    assert run_states.shown(Req()) == "knockout" and len(calls) == 4 and "mean loss change" in drawn["ko-summary"]
    # a newer run of the same browser: the older run's redraw, and a tab drawn for it, draw nothing
    run_states.start(Req())
    stale = redraw.fn(Req(), number, *values)
    assert all(x == gr.skip() for x in stale)
    assert all(x == gr.skip() for x in select.fn(Req(), number, *sel_values)) and len(calls) == 4


def _ids(blocks):
    return [getattr(b, "elem_id", None) for b in blocks]


def test_knockout_switches_carry_values():
    from app.tabs.knockout import switches_knockout
    from engram_core import KnockOut

    ko = switches_knockout(False, [1], [3], ["1:2:0", "0:3:1"], [0, 2], " 1:2:0:5, row=0:3:1:7 ")
    assert ko == KnockOut(
        layers={1}, orders={3}, heads={(1, 2, 0), (0, 3, 1)}, branches={0, 2}, rows={(1, 2, 0, 5), (0, 3, 1, 7)}
    )
    assert switches_knockout(True, [], [], [], [], "") == KnockOut(all=True)
    assert switches_knockout(True, [], [], [], [], "", "mean") == KnockOut(all=True, mode="mean")
    for typed in ("layer=1", "1:2:0", "all"):  # the row list names rows only
        with pytest.raises(ValueError, match="bad row address"):
            switches_knockout(False, [], [], [], [], typed)


def test_gate_choices_carry_values_not_labels(tiny_session):
    tr = capture(tiny_session.ck, "I pray you, my lord.")
    choices = views.gate_choices(tr.layers, tr.gate.shape[2])
    assert choices[0] == ("mean", "mean") and len(choices) == 1 + len(tr.layers) * tr.gate.shape[2]
    for label, value in choices[1:]:
        layer, branch = map(int, value.split(":"))
        assert label == f"layer {layer} branch {branch}"
        np.testing.assert_array_equal(views.gate_values(tr, value), tr.gate[tr.layers.index(layer), :, branch])
    np.testing.assert_allclose(views.gate_values(tr, "mean"), tr.gate.mean(axis=(0, 2)))
    for bad in ("9:0", f"{tr.layers[0]}:99", "layer 1 branch 0"):
        with pytest.raises(ValueError, match="no gate"):
            views.gate_values(tr, bad)


def test_row_page_tab_has_a_mode_selector_beside_the_exact_cost(tiny_session, tiny_demo):
    from app.tabs.rows import page_of, summary
    from engram_core.addresses import RowAddress
    from engram_inspect.memory.rowpage import RowPage

    mode = _component(tiny_demo, "row-page-mode")
    assert [v for _, v in mode.choices] == ["zero", "mean", "resample"] and mode.value == "zero"
    show = next(f for f in tiny_demo.fns.values() if f.name == "show")
    assert mode in show.inputs  # the selector reaches the page
    with pytest.raises(gr.Error, match="choose zero, mean or resample"):
        page_of(tiny_session, "0:2:0:1", True, "shuffle")  # before any slow part loads
    nan = float("nan")
    page = RowPage(RowAddress(0, 2, 0, 1), [], 0, nan, False, [], [], 0, nan, [0] * 10, [], [], nan, 0,
                   delta_exact=-0.5, delta_exact_own=-0.25, delta_exact_reads=3, delta_exact_mode="resample",
                   delta_exact_samples=4, delta_exact_seed=7)  # fmt: skip
    assert "each replaced by another corpus N-gram's row, mean of 4 runs from seed 7): -0.5000" in summary(page)
    mean = dataclasses.replace(page, delta_exact_mode="mean", delta_exact_samples=1, delta_exact_seed=None)
    assert "each replaced by its head's mean row): -0.5000 over the window, -0.2500" in summary(mean)
