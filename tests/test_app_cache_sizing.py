"""/cache_sizing: the Health tab's cache curves over HTTP, equal to `simulate` called directly,
with the capacities in words; bad input gets one line and the server keeps serving."""

import pytest

gr = pytest.importorskip("gradio")
from gradio_client import Client  # noqa: E402

from engram_core.layout import load_layout  # noqa: E402
from engram_inspect.serving.sizing import curves  # noqa: E402

TEXT = "def parse(self, args):\n    return self.parser.parse_args(args)\n"


@pytest.fixture(scope="module")
def client(served_app):
    return Client(served_app[2], verbose=False)


def test_curves_match_the_simulator_for_text_and_corpus(client, served_app):
    session = served_app[0]
    got = client.predict(TEXT, "shipped model", "set-assoc", "4", "row", api_name="/cache_sizing")
    text = [r for r in got["records"] if r["traffic"] == "text"]
    corpus = [r for r in got["records"] if r["traffic"] == "corpus"]
    layout = load_layout(session.path)
    want = curves(layout, lambda: [layout.encode(TEXT)], "set-assoc", 4, "row")
    assert [r["hits"] for r in text] == [r["hits"] for r in want]
    assert corpus and all(r["tokens"] == corpus[0]["tokens"] > 10_000 for r in corpus)
    # more cache never serves fewer reads of the corpus under LRU-like set-associative caches here
    rates = [r["hit_rate"] for r in sorted(corpus, key=lambda r: r["capacity_mib"]) if r["layer"] == 1]
    assert rates == sorted(rates) and rates[-1] > 0.5
    assert any("Per layer for 80% hits" in w and w.startswith("the default corpus sample") for w in got["words"])
    assert any(w.startswith("the text shown, layer 1, 4 streams, rows") for w in got["words"])


def test_v41_curves_and_bad_input(client):
    got = client.predict(TEXT, "deepseek-v4.1-flash", "lru", "1", "page", api_name="/cache_sizing")
    assert {r["granularity"] for r in got["records"]} == {"page"}
    assert {r["layer"] for r in got["records"]} == {1, 14}
    with pytest.raises(Exception, match="unknown policy 'mru'"):
        client.predict(TEXT, "shipped model", "mru", "1", "row", api_name="/cache_sizing")
    with pytest.raises(Exception, match="choose 1, 4 or 16"):
        client.predict(TEXT, "shipped model", "lru", "3", "row", api_name="/cache_sizing")
    assert client.predict(TEXT, "shipped model", "lru", "1", "row", api_name="/cache_sizing")["records"]
