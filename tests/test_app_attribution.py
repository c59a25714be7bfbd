"""The HTTP inputs added for attribution and knock-out modes: /attribution, and `mode` on /trace and /knockout."""

import numpy as np
import pytest

gr = pytest.importorskip("gradio")
from gradio_client import Client  # noqa: E402

from engram_core import KnockOut  # noqa: E402
from engram_inspect.text.attribution import attribute  # noqa: E402
from engram_inspect.text.capture import capture  # noqa: E402
from engram_inspect.text.diff import knockout_diff  # noqa: E402
from tests.serving import serve  # noqa: E402

TEXT = "I pray you, my lord, let me know your pleasure."


@pytest.fixture(scope="module")
def served():
    session, demo, url = serve()
    yield session, Client(url, verbose=False)
    demo.close()


def test_attribution_matches_engram_inspect(served):
    session, client = served
    got = client.predict(TEXT, 5, "exact", "zero", api_name="/attribution")
    assert got == attribute(session.ck, TEXT, 5)
    approx = client.predict(TEXT, 5, "approx", "mean", api_name="/attribution")
    assert approx == attribute(session.ck, TEXT, 5, "approx", "mean")
    assert {r["position_read"] for r in approx} == set(range(6))


def test_knockout_and_trace_take_a_mode(served):
    session, client = served
    got = client.predict(TEXT, "layer=2", "mean", api_name="/knockout")
    want = knockout_diff(capture(session.ck, TEXT, mask=KnockOut(layers={2}, mode="mean")))
    assert got["mask"] == "layer=2,mode=mean"
    assert got["mean_loss_change"] == pytest.approx(want.mean_loss_change, abs=1e-5)
    zero = client.predict(TEXT, "layer=2", "zero", api_name="/knockout")
    assert zero["mean_loss_change"] != pytest.approx(got["mean_loss_change"], abs=1e-4)
    tr = client.predict(TEXT, "all", "resample", api_name="/trace")
    want = capture(session.ck, TEXT, mask=KnockOut(all=True, mode="resample"))
    np.testing.assert_allclose(tr["masked_logprob_next"][:-1], want.masked_logprob_next[:-1], atol=1e-5)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((TEXT, 500, "exact", "zero"), "no next token"),
        ((TEXT, 3, "exact", "half"), "mode"),
        (("", 0, "exact", "zero"), "empty"),
    ],
)
def test_bad_attribution_input_is_one_line_and_server_survives(served, args, message):
    _, client = served
    with pytest.raises(Exception, match=message):
        client.predict(*args, api_name="/attribution")
    assert client.predict(TEXT, 2, "exact", "zero", api_name="/attribution")


def test_attribution_bars_are_the_records_sorted_by_size():
    """The Lookups bars hold attribute()'s deltas, largest |delta| first, one label per read."""
    from app import views

    recs = [
        {"layer": 1, "order": 2, "head": 0, "position_read": 3, "row": 7, "ngram": "ab", "delta_logprob": -0.2},
        {"layer": 2, "order": 3, "head": 1, "position_read": 2, "row": 9, "ngram": "xyz", "delta_logprob": 0.5},
        {"layer": 1, "order": 3, "head": 1, "position_read": 3, "row": 4, "ngram": "q", "delta_logprob": -0.01},
    ]
    bar = views.attribution_figure(recs).data[0]
    assert list(bar.x) == [0.5, -0.2, -0.01]
    assert bar.y[0].startswith("2:3:1 @ 2") and "row 9" in bar.y[0]
    assert len(set(bar.y)) == 3
    assert list(views.attribution_figure(recs, top=2).data[0].x) == [0.5, -0.2]


def test_lookups_bars_equal_attribute_for_the_same_text_position_and_mode(served):
    """The figure the Lookups tab draws holds attribute()'s deltas under the chosen method and mode."""
    from app import views
    from app.api import attribution_records

    session, _ = served
    for method, mode in (("exact", "zero"), ("approx", "mean")):
        recs = attribute(session.ck, TEXT, 5, method, mode)
        bar = views.attribution_figure(attribution_records(session, TEXT, 5, method, mode)).data[0]
        want = sorted((r["delta_logprob"] for r in recs), key=abs, reverse=True)
        assert list(bar.x) == pytest.approx(want[:40])
        assert len(bar.x) == min(len(recs), 40) > 0


def test_v41_lookups_notice_names_the_attribution_bars():
    """Under the addressing-only model the Lookups tab's one line says the bars need the backbone."""
    from app.layouts import BACKBONE_VIEWS, V41, unavailable

    line = unavailable(V41, BACKBONE_VIEWS["lookups"])
    assert line.startswith(f"Not for {V41}:") and "attribution bars" in line and "\n" not in line
