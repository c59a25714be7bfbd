"""The app as an HTTP API: gradio_client against the app launched on a free port.

Numbers are checked against engram_inspect called directly; bad inputs get a clear
error and the server keeps serving; concurrent clients never see each other's state.
"""

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

gr = pytest.importorskip("gradio")
from gradio_client import Client  # noqa: E402

from app.session import MAX_CHARS  # noqa: E402
from engram_core import KnockOut  # noqa: E402
from engram_inspect.text.capture import capture  # noqa: E402
from engram_inspect.text.diff import knockout_diff  # noqa: E402
from engram_inspect.text.export import read  # noqa: E402

TEXT = "I pray you, my lord, let me know your pleasure."


@pytest.fixture(scope="module")
def served(served_app):
    session, _, url = served_app  # one app server per test session (conftest)
    return session, Client(url, verbose=False), int(url.rsplit(":", 1)[1].strip("/"))


def test_trace_matches_engram_inspect(served):
    session, client, _ = served
    got = client.predict(TEXT, "layer=2", api_name="/trace")
    want = capture(session.ck, TEXT, mask=KnockOut(layers={2}))
    assert got["tokens"] == want.tokens
    assert got["hash_rows"] == want.hash_rows.tolist()
    np.testing.assert_allclose(np.array(got["gate"]), want.gate, atol=1e-6)
    np.testing.assert_allclose(got["kl"], want.kl, atol=1e-6)
    assert got["logprob_next"][-1] is None
    np.testing.assert_allclose(got["masked_logprob_next"][:-1], want.masked_logprob_next[:-1], atol=1e-6)
    assert got["mask"] == "layer=2"


def test_knockout_matches_diff(served):
    session, client, _ = served
    got = client.predict(TEXT, "all", api_name="/knockout")
    want = knockout_diff(capture(session.ck, TEXT))
    assert got["mean_loss_change"] == pytest.approx(want.mean_loss_change, abs=1e-5)
    assert got["mean_loss_change"] > 0.1  # the shipped model's memory matters on a stock phrase
    assert [x["position"] for x in got["biggest_losses"]] == [x.position for x in want.biggest_losses]
    none = client.predict(TEXT, "none", api_name="/knockout")
    assert none["mean_loss_change"] == 0.0 and not any(none["top1_changed"])


def test_neighbours_of_a_row_and_an_ngram(served):
    from engram_inspect.memory.neighbours import row_neighbours
    from engram_inspect.memory.rows import RowAddress

    session, client, _ = served
    rows = client.predict("1:2:0:99", 1, 2, 0, 5, api_name="/neighbours")  # value space by default
    assert len(rows) == 5 and all(r["query"] == [1, 2, 0, 99] for r in rows)
    want = row_neighbours(session.ck, RowAddress(1, 2, 0, 99), 5, "value", value_index=session.value_index())
    assert [(r["layer"], r["order"], r["head"], r["row"]) for r in rows] == [
        (n.address.layer, n.address.order, n.address.head, n.address.row) for n in want
    ]
    assert [r["similarity"] for r in rows] == pytest.approx([n.similarity for n in want], abs=1e-6)
    sims = [r["similarity"] for r in rows]
    assert sims == sorted(sims, reverse=True)
    raw = client.predict("1:2:0:99", 1, 2, 0, 5, "raw", api_name="/neighbours")
    assert len(raw) == 5 and {(r["layer"], r["order"], r["head"]) for r in raw} == {(1, 2, 0)}
    assert [r["row"] for r in raw] == [
        n.address.row for n in row_neighbours(session.ck, RowAddress(1, 2, 0, 99), 5, "raw")
    ]
    by_text = client.predict(" my lord", 1, 2, 1, 3, api_name="/neighbours")
    assert len(by_text) == 3 and by_text[0]["ngrams"]
    with pytest.raises(Exception, match="choose value or raw"):
        client.predict("1:2:0:99", 1, 2, 0, 5, "pooled", api_name="/neighbours")
    assert len(client.predict("1:2:0:99", 1, 2, 0, 2, api_name="/neighbours")) == 2  # still serving


@pytest.mark.parametrize("fmt", ["json", "csv", "parquet", "npz"])
def test_export_file_loads_back(served, fmt, tmp_path):
    import shutil
    from pathlib import Path

    session, client, _ = served
    paths = client.predict(TEXT, fmt, "all", api_name="/export")
    assert len(paths) == (2 if fmt == "csv" else 1)
    for p in paths:  # the client downloads each file into its own folder
        shutil.copy(p, tmp_path / Path(p).name)
    assert read(tmp_path / Path(paths[0]).name) == capture(session.ck, TEXT)


BAD = ["", "   \n\t ", "x" * (MAX_CHARS + 1)]
ODD = ["😀🎭", "日本語のテキスト", "שלום עולם مرحبا", "\x00\x01\x07 bell", "a" * 5000, "x" * 100_000]


@pytest.mark.parametrize("text", BAD)
def test_bad_text_is_a_clear_error_and_server_survives(served, text):
    _, client, _ = served
    with pytest.raises(Exception) as e:
        client.predict(text, "all", api_name="/trace")
    assert any(w in str(e.value) for w in ("empty", "at most")), str(e.value)
    assert client.predict("still serving", "all", api_name="/trace")["tokens"]


@pytest.mark.parametrize("text", ODD)
def test_odd_text_gives_a_result(served, text):
    _, client, _ = served
    if len(text) > MAX_CHARS:  # a 100,000-character paste: a clear message
        with pytest.raises(Exception, match="at most"):
            client.predict(text, "all", api_name="/trace")
        return
    got = client.predict(text, "all", api_name="/trace")
    assert len(got["tokens"]) >= 1


def test_lone_surrogate_over_raw_http(served):
    """A lone surrogate cannot be UTF-8 encoded, but JSON can escape it, as a browser's JSON.stringify does."""
    import json

    import httpx

    _, _, port = served
    base = f"http://127.0.0.1:{port}/gradio_api/call/trace"
    r = httpx.post(
        base,
        content='{"data": ["lone \\ud800 surrogate", "all", "zero"]}',
        headers={"content-type": "application/json"},
    )
    r.raise_for_status()
    stream = httpx.get(f"{base}/{r.json()['event_id']}", timeout=60).text
    data = [line[len("data: ") :] for line in stream.splitlines() if line.startswith("data: ")]
    result = json.loads(data[-1])[0]
    assert "\ufffd" in "".join(result["tokens"])  # the surrogate became U+FFFD, the rest is kept
    assert "surrogate" in "".join(result["tokens"])


@pytest.mark.parametrize(
    "mask, message",
    [
        ("layer=x", "bad knock-out"),
        ("head=1:2:4", "head=1:2:4"),  # heads are 0..3: once this aliased head 1:3:0
        ("head=1:2:-1", "head=1:2:-1"),
        ("layer=99", "layer=99"),
        ("order=9", "order=9"),
        ("branch=9", "branch=9"),
        ("row=1:2:0:99999999", "row=1:2:0:99999999"),
    ],
)
@pytest.mark.parametrize("endpoint", ["/knockout", "/trace"])
def test_bad_mask_is_one_line_and_the_server_keeps_serving(served, mask, message, endpoint):
    _, client, _ = served
    with pytest.raises(Exception) as e:
        client.predict(TEXT, mask, api_name=endpoint)
    assert message in str(e.value) and "Traceback" not in str(e.value) and "\n" not in str(e.value).strip()
    assert client.predict(TEXT, "layer=1", api_name=endpoint)["mask"] == "layer=1"


def test_concurrent_clients_do_not_cross_talk(served):
    session, _, port = served
    texts = [f"Client {i} says: to be or not to be, {i * 7} times." for i in range(8)]
    expected = {t: capture(session.ck, t).hash_rows.tolist() for t in texts}
    errors = []

    def worker(i):
        c = Client(f"http://127.0.0.1:{port}/", verbose=False)
        for j in range(6):  # 48 requests, 8 at a time: enough to interleave captures
            t = texts[(i + j) % 8]
            got = c.predict(t, "all", api_name="/trace")
            if got["hash_rows"] != expected[t]:
                errors.append((i, j))

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(worker, range(8)))
    assert errors == []


def test_binds_loopback_only():
    import argparse

    from app.cli import add_commands

    p = argparse.ArgumentParser()
    sub = p.add_subparsers()
    add_commands(sub)
    args = p.parse_args(["app"])
    assert args.host == "127.0.0.1"


def test_a_mode_in_the_mask_is_kept_and_a_disagreeing_one_refused(served):
    session, client, _ = served
    mean = client.predict(TEXT, "layer=2,mode=mean", api_name="/knockout")  # once ran as zero
    want = knockout_diff(capture(session.ck, TEXT, mask=KnockOut(layers={2}, mode="mean")))
    zero = knockout_diff(capture(session.ck, TEXT, mask=KnockOut(layers={2})))
    assert mean["mean_loss_change"] == pytest.approx(want.mean_loss_change, abs=1e-5)
    assert abs(want.mean_loss_change - zero.mean_loss_change) > 1e-3  # the two modes differ here
    assert mean["mask"] == "layer=2,mode=mean"
    agreed = client.predict(TEXT, "layer=2,mode=mean", "mean", api_name="/knockout")
    assert agreed["mean_loss_change"] == pytest.approx(want.mean_loss_change, abs=1e-5)
    alone = client.predict(TEXT, "layer=2", "mean", api_name="/trace")
    assert alone["mask"] == "layer=2,mode=mean"
    for endpoint in ("/knockout", "/trace"):
        with pytest.raises(Exception) as e:
            client.predict(TEXT, "layer=2,mode=mean", "zero", api_name=endpoint)
        assert "mode=mean" in str(e.value) and "mode=zero" in str(e.value) and "\n" not in str(e.value).strip()


def test_every_request_is_bounded(served):
    from app.session import MAX_NEIGHBOURS, MAX_SAMPLES

    _, client, _ = served
    with pytest.raises(Exception, match=f"1 to {MAX_NEIGHBOURS}"):
        client.predict("1:2:0:99", 1, 2, 0, 1_000_000, api_name="/neighbours")
    with pytest.raises(Exception, match=f"at most {MAX_SAMPLES}"):
        client.predict(TEXT, f"layer=1,mode=resample,samples={MAX_SAMPLES + 1}", api_name="/knockout")
    with pytest.raises(Exception) as e:
        client.predict("1:2:0:" + "9" * 30_000, api_name="/row")
    assert "characters" in str(e.value) and len(str(e.value)) < 400  # named, not echoed back
    assert len(client.predict("1:2:0:99", 1, 2, 0, MAX_NEIGHBOURS, api_name="/neighbours")) == MAX_NEIGHBOURS


def test_approx_attribution_under_resample(served):
    _, client, _ = served
    records = client.predict(TEXT, 5, "approx", "resample", api_name="/attribution")
    assert len(records) > 16 and all(np.isfinite(r["delta_logprob"]) for r in records)


def test_address_carries_no_server_path(served):
    import json

    session, client, _ = served
    got = client.predict(TEXT, "shipped model", api_name="/address")
    assert got["model"] == "shipped model"
    assert str(session.path.resolve()) not in json.dumps(got) and str(session.path) not in json.dumps(got)
