"""The model picker: DeepSeek-V4.1-Flash addressed through the app, checked against engram_core.

Through gradio_client against the one app server of the test session (conftest.served_app).
"""

import numpy as np
import pytest

gr = pytest.importorskip("gradio")
from gradio_client import Client  # noqa: E402

from app.layouts import SHIPPED, V41, unavailable  # noqa: E402
from engram_core.addressing import address_text  # noqa: E402
from engram_core.layout import load_layout  # noqa: E402

TEXT = "I pray you, my lord, let me know your pleasure."


@pytest.fixture(scope="module")
def client(served_app):
    return Client(served_app[2], verbose=False)


@pytest.fixture(scope="module")
def v41():
    return load_layout(V41)


def test_v41_rows_match_engram_core(client, v41):
    got = client.predict(TEXT, V41, api_name="/address")
    want = address_text(v41, TEXT)
    assert got["model"] == V41 and got["layers"] == [1, 14]
    assert [t["id"] for t in got["tokens"]] == want.ids.tolist()
    for i, layer in enumerate(v41.layers):
        rows = np.array([t["rows"][str(layer)] for t in got["tokens"]])
        assert rows.shape == (len(want.ids), 24)
        np.testing.assert_array_equal(rows, want.rows[i])
        # global = head offset (sum of the primes before it) + head-local row
        local = np.array([t["local_rows"][str(layer)] for t in got["tokens"]])
        np.testing.assert_array_equal(rows - local, np.broadcast_to(v41.offsets[layer], rows.shape))


def test_shipped_model_rows_match_its_trace(client, served_app):
    session = served_app[0]
    got = client.predict(TEXT, SHIPPED, api_name="/address")
    trace = client.predict(TEXT, "all", api_name="/trace")
    assert [t["id"] for t in got["tokens"]] == session.ck.tokenizer.encode(TEXT, add_special_tokens=False).ids
    for i, layer in enumerate(trace["layers"]):
        local = [t["local_rows"][str(layer)] for t in got["tokens"]]
        assert local == trace["hash_rows"][i]


def test_backbone_view_answers_one_line(client):
    for endpoint in ("/trace", "/knockout"):
        with pytest.raises(Exception) as err:
            client.predict(TEXT, "all", V41, api_name=endpoint)
        msg = str(err.value)
        assert "backbone" in msg and V41 in msg and "\n" not in msg.strip()
    assert unavailable(V41, "the gates").startswith("Not for deepseek-v4.1-flash: the gates need the backbone")


def test_bad_model_one_line_and_server_keeps_serving(client):
    with pytest.raises(Exception) as err:
        client.predict(TEXT, "gpt-2", api_name="/address")
    assert "unknown model 'gpt-2'" in str(err.value)
    with pytest.raises(Exception) as err:
        client.predict(TEXT, "all", "gpt-2", api_name="/trace")
    assert "unknown model" in str(err.value)
    with pytest.raises(Exception) as err:
        client.predict("   ", V41, api_name="/address")
    assert "empty" in str(err.value)
    assert client.predict("O, I am fortune's fool!", V41, api_name="/address")["tokens"]


def test_link_round_trips_the_model(served_app):
    """The Run event writes the model into the link; opening the link picks it again."""
    from app.main import _from_url

    demo = served_app[1]
    run = next(fn for fn in demo.fns.values() if fn.name == "run")
    trace, addresses, status, link = run.fn("O, I am fortune's fool!", "all", V41, None)
    assert trace is None and V41 in status and "model=deepseek-v4.1-flash" in link

    class Req:
        query_params = dict(p.split("=", 1) for p in link.split("?", 1)[1].split("&"))

    import urllib.parse

    Req.query_params = {k: urllib.parse.unquote_plus(v) for k, v in Req.query_params.items()}
    assert _from_url(Req()) == ("O, I am fortune's fool!", "all", V41)
    Req.query_params = {"text": "x", "model": "gpt-2"}
    assert _from_url(Req())[2] == SHIPPED  # a bad model in a link falls back to the shipped one
