"""The row page through the app: the /row API against engram_inspect, clear errors, and the deep link."""

import pytest

gr = pytest.importorskip("gradio")
from gradio_client import Client  # noqa: E402

from engram_core.addresses import RowAddress  # noqa: E402
from tests.serving import serve  # noqa: E402


@pytest.fixture(scope="module")
def served():
    session, demo, url = serve()
    yield session, Client(url, verbose=False)
    demo.close()


def test_row_api_matches_the_collision_index_and_the_page(served):
    from engram_inspect.memory.rowpage import row_page

    session, client = served
    got = client.predict("1:2:0:8615", False, api_name="/row")
    want = session.collisions().ngrams_at(1, 2, 0, 8615)
    assert [(tuple(n["ngram"]), n["count"]) for n in got["ngrams"]] == want
    assert got["address"] == "1:2:0:8615" and got["hits"] == sum(c for _, c in want)
    from app.tabs.rows import pages

    page = row_page(session.ck, RowAddress(1, 2, 0, 8615), pages(session))
    assert got["reads"] == page.reads and [t["id"] for t in got["promoted"]] == [t.id for t in page.promoted]
    assert [c["alpha"] for c in got["top_contexts"]] == [c.alpha for c in page.top_contexts]


@pytest.mark.parametrize("bad", ["1:2:0", "x:y:z:w", "7:2:0:1", "1:2:0:99999999"])
def test_row_api_bad_addresses_get_one_clear_error_and_the_server_keeps_serving(served, bad):
    _, client = served
    with pytest.raises(Exception, match="L:N:K:R|not an Engram layer|outside"):
        client.predict(bad, False, api_name="/row")
    assert client.predict("2:3:1:5", False, api_name="/row")["address"] == "2:3:1:5"


def test_row_api_exact_cost_under_each_mode(served):
    """/row's mode input reaches the exact removal cost: resample (seed 0, one run) equals the page
    computed in-process; a bad mode is one clear error and the server keeps serving."""
    import numpy as np

    from app.tabs.rows import pages
    from engram_inspect.memory.rowpage import row_page

    session, client = served
    p = pages(session)
    # a row read at 3 sample positions: three removals, not sixteen, keep the test fast
    row = int(np.flatnonzero(np.bincount(p.rows[1][p.layout.spec.head_index(3, 0)]) == 3)[0])
    a = RowAddress(1, 3, 0, row)
    got = client.predict(str(a), True, "resample", api_name="/row")
    assert (got["delta_exact_mode"], got["delta_exact_samples"], got["delta_exact_seed"]) == ("resample", 1, 0)
    assert got["delta_exact_reads"] == 3
    want = session.run_model(lambda _m: row_page(session.ck, a, pages(session), exact=True, mode="resample"))
    assert got["delta_exact"] == pytest.approx(want.delta_exact, abs=1e-9)
    assert got["delta_exact_own"] == pytest.approx(want.delta_exact_own, abs=1e-9)
    zero = session.run_model(lambda _m: row_page(session.ck, a, pages(session), exact=True, mode="zero"))
    assert zero.delta_exact != pytest.approx(want.delta_exact, abs=1e-6)  # the mode changes the number
    with pytest.raises(Exception, match="choose zero, mean or resample"):
        client.predict("1:2:0:8615", False, "shuffle", api_name="/row")
    assert client.predict("2:3:1:5", False, "mean", api_name="/row")["delta_exact"] is None  # no exact, no cost


def test_map_neighbours_in_value_space(served):
    """The map's search in value space: a row's neighbours come from every head and layer, best first."""
    import numpy as np

    from app.tabs.memory_map import value_neighbour_rows
    from engram_inspect.memory.valuespace import value_vector

    session, _ = served
    got = value_neighbour_rows(session, "1:2:0:8615", 1, 2, 5)
    assert len(got) == 5 and [r[0] for r in got] == sorted((r[0] for r in got), reverse=True)
    me = value_vector(session.ck, RowAddress(1, 2, 0, 8615))
    for sim, L, n, k, r, _, near in got:
        v = value_vector(session.ck, RowAddress(L, n, k, r))
        assert sim == pytest.approx(float(me @ v / np.linalg.norm(me) / np.linalg.norm(v)), abs=1e-5)
        assert near.startswith("1:2:0:8615")
    # an N-gram reads one row per head: the k nearest of all its heads' neighbours, best first, each saying
    # which of the N-gram's rows it is nearest to (once: four unlabelled blocks of k, one per head)
    by_text = value_neighbour_rows(session, "my lord", 1, 2, 3)
    assert len(by_text) == 3 and [r[0] for r in by_text] == sorted((r[0] for r in by_text), reverse=True)
    per_head = [value_neighbour_rows(session, q, 1, 2, 3) for q in {r[6].split()[0] for r in by_text}]
    assert by_text[0][0] == max(r[0] for rows in per_head for r in rows)
    with pytest.raises(gr.Error, match="outside"):
        value_neighbour_rows(session, "1:2:0:99999999", 1, 2, 3)
