"""Row addressing and exact cosine neighbours, checked against brute-force numpy and the model's own hashes."""

import numpy as np
import pytest
import torch

from engram_core import Checkpoint, HashSpec
from engram_core.tokenizer import encode
from engram_inspect.memory.neighbours import NeighbourIndex, nearest_ngram, ngram_rows
from engram_inspect.memory.rows import RowAddress, RowLayout, all_rows, layer_table, row_vectors

SPEC = HashSpec(vocab_size=50, table_sizes=(40, 60), max_ngram=3, heads_per_ngram=2, layer_ids=(3, 0))


@pytest.fixture()
def tiny_ck(tiny_parts, tiny_model):
    return Checkpoint(model=tiny_model, tokenizer=tiny_parts[0], meta={})


def brute_force(table: np.ndarray, query: np.ndarray, k: int, exclude: int | None = None):
    """Cosine similarity of every row by plain numpy, best first."""
    t = table / np.maximum(np.linalg.norm(table, axis=1, keepdims=True), 1e-30)
    sims = t @ (query / np.linalg.norm(query))
    if exclude is not None:
        sims[exclude] = -np.inf
    order = np.argsort(-sims, kind="stable")[:k]
    return order, sims[order]


def assert_same_neighbours(got_ids, got_sims, want_ids, want_sims):
    np.testing.assert_allclose(got_sims, want_sims, atol=1e-5)
    # ties aside: where two similarities agree to 1e-5 the order between them is arbitrary
    distinct = np.abs(np.diff(want_sims)) > 1e-5
    boundaries = np.concatenate([[True], distinct]) & np.concatenate([distinct, [True]])
    np.testing.assert_array_equal(np.asarray(got_ids)[boundaries], np.asarray(want_ids)[boundaries])


# --- rows.py ---------------------------------------------------------------------------------


def test_layout_round_trips_every_row():
    layout = RowLayout(SPEC)
    assert layout.layers == (3, 0)
    assert layout.total == sum(sum(p) for p in SPEC.primes.values())
    flat = np.arange(layout.total)
    layer, order, head, row = layout.decode(flat)
    for f in range(0, layout.total, 7):
        a = layout.address(f)
        assert a == RowAddress(int(layer[f]), int(order[f]), int(head[f]), int(row[f]))
        assert layout.flat(a) == f
        assert layout.from_global(a.layer, layout.global_row(a)) == a
    # flat ids run over layer 3 first (configured order), then layer 0
    assert layout.address(0) == RowAddress(3, 2, 0, 0)
    assert layout.address(layout.layer_size(3)) == RowAddress(0, 2, 0, 0)
    last = SPEC.primes[0][-1] - 1
    assert layout.address(layout.total - 1) == RowAddress(0, 3, 1, last)


def test_layout_matches_the_model_offsets(tiny_ck):
    layout = RowLayout.of(tiny_ck)
    for layer in layout.layers:
        engram = tiny_ck.model.blocks[layer].engram
        np.testing.assert_array_equal(layout.offsets(layer), engram.offsets.numpy())
        assert layout.layer_size(layer) == engram.table.weight.shape[0]
    a = RowAddress(1, 3, 1, 5)
    g = layout.global_row(a)
    np.testing.assert_array_equal(row_vectors(tiny_ck, [layout.flat(a)])[0], layer_table(tiny_ck, 1)[g])
    assert len(all_rows(tiny_ck)) == layout.total
    r = layout.flat_range(0, 3, 1)
    np.testing.assert_array_equal(all_rows(tiny_ck, 0, 3, 1), np.arange(r.start, r.stop))
    assert layout.decode(all_rows(tiny_ck, 1))[0].tolist() == [1] * layout.layer_size(1)


@pytest.mark.parametrize(
    "address, match",
    [
        (RowAddress(2, 2, 0, 0), "not an Engram layer"),
        (RowAddress(0, 1, 0, 0), "order 1 is outside 2..3"),
        (RowAddress(0, 4, 0, 0), "order 4 is outside"),
        (RowAddress(0, 2, 2, 0), "head 2 is outside 0..1"),
        (RowAddress(0, 2, -1, 0), "head -1"),
        (RowAddress(0, 2, 0, 10_000), "row 10000 is outside"),
        (RowAddress(0, 2, 0, -1), "row -1 is outside"),
    ],
)
def test_bad_addresses_raise_clear_errors(address, match):
    with pytest.raises(ValueError, match=match):
        RowLayout(SPEC).flat(address)


def test_bad_flat_ids_raise():
    layout = RowLayout(SPEC)
    with pytest.raises(ValueError, match="flat row ids must lie"):
        layout.decode(np.array([layout.total]))
    with pytest.raises(ValueError, match="global row"):
        layout.from_global(0, layout.layer_size(0))


# --- neighbours against brute force ------------------------------------------------------------


def random_index(rng):
    layout = RowLayout(SPEC)
    tables = {layer: rng.standard_normal((layout.layer_size(layer), 8)).astype(np.float32) for layer in SPEC.layer_ids}
    return layout, tables, NeighbourIndex(layout, tables)


def test_nearest_vector_matches_brute_force(rng):
    layout, tables, index = random_index(rng)
    pooled = np.concatenate([tables[layer] for layer in layout.layers])  # flat-id order
    assert len(index) == layout.total
    for _ in range(20):
        q = rng.standard_normal(8).astype(np.float32)
        got = index.nearest_vector(q, k=10)
        want_ids, want_sims = brute_force(pooled, q, 10)
        assert_same_neighbours([layout.flat(n.address) for n in got], [n.similarity for n in got], want_ids, want_sims)


def test_nearest_rows_matches_brute_force_and_excludes_itself(rng):
    layout, tables, index = random_index(rng)
    pooled = np.concatenate([tables[layer] for layer in layout.layers])
    for f in rng.choice(layout.total, 20, replace=False):
        a = layout.address(int(f))
        got = index.nearest_rows(a, k=7)
        assert len(got) == 7 and all(n.address != a for n in got)
        want_ids, want_sims = brute_force(pooled, pooled[f], 7, exclude=int(f))
        assert_same_neighbours([layout.flat(n.address) for n in got], [n.similarity for n in got], want_ids, want_sims)


def test_neighbours_on_tiny_model_tables(tiny_ck, rng):
    layout = RowLayout.of(tiny_ck)
    for layers in [None, (1,)]:
        index = NeighbourIndex.build(tiny_ck, layers)
        rows = all_rows(tiny_ck) if layers is None else all_rows(tiny_ck, 1)
        matrix = row_vectors(tiny_ck, rows)
        for i in rng.choice(len(rows), 15, replace=False):
            a = layout.address(int(rows[i]))
            got = index.nearest_rows(a, k=10)
            want_pos, want_sims = brute_force(matrix, matrix[i], 10, exclude=int(i))
            got_flat = [layout.flat(n.address) for n in got]
            assert_same_neighbours(got_flat, [n.similarity for n in got], rows[want_pos], want_sims)


def test_duplicate_rows_and_zero_rows(rng):
    layout = RowLayout(SPEC)
    tables = {layer: rng.standard_normal((layout.layer_size(layer), 4)).astype(np.float32) for layer in SPEC.layer_ids}
    tables[0][5] = tables[0][6] * 3.0  # same direction: cosine 1
    tables[0][7] = 0.0  # a zero row has cosine 0 with everything, never NaN
    index = NeighbourIndex(layout, tables)
    a5, a6 = layout.from_global(0, 5), layout.from_global(0, 6)
    best = index.nearest_rows(a5, k=1)[0]
    assert best.address == a6 and best.similarity == pytest.approx(1.0, abs=1e-6)
    zero = index.nearest_rows(layout.from_global(0, 7), k=3)
    assert all(n.similarity == 0.0 for n in zero)
    assert len(index.nearest_vector(np.ones(4), k=10_000)) == layout.total  # k capped at the index size


class FakeCollisions:
    def ngrams_at(self, layer, order, head, row):
        return [((layer, order), head), ((row,), 1)]


def test_labels_come_from_the_collision_source(rng):
    _, _, index = random_index(rng)
    a = index.layout.address(3)
    for n in index.nearest_rows(a, k=4, labels=FakeCollisions()):
        assert n.ngrams == [((n.address.layer, n.address.order), n.address.head), ((n.address.row,), 1)]
    assert all(n.ngrams == [] for n in index.nearest_rows(a, k=4))


# --- typed N-grams read the model's rows --------------------------------------------------------


@pytest.mark.parametrize("text", ["To be, or not to be", "Apple", " ", "self.value = value\n"])
def test_nearest_ngram_reads_the_row_the_model_reads(tiny_ck, text):
    index = NeighbourIndex.build(tiny_ck)
    spec = tiny_ck.model.cfg.memory.hash_spec
    ids, _ = encode(tiny_ck.tokenizer, text)
    _, cache = tiny_ck.model.run_with_cache(torch.tensor([ids]))
    for layer in spec.layer_ids:
        model_rows = cache[f"blocks.{layer}.engram.hook_hash_ids"][0, -1]  # (H,) at the last position
        np.testing.assert_array_equal(ngram_rows(tiny_ck, text, layer)[0], model_rows.numpy())
        for order in spec.orders:
            per_head = nearest_ngram(tiny_ck, index, text, layer, order, k=3)
            assert [r.address.head for r in per_head] == list(range(spec.heads_per_ngram))
            for r in per_head:
                assert r.address.row == int(model_rows[spec.head_index(order, r.address.head)])
                assert len(r.ngram) == order and len(r.neighbours) == 3
                assert r.neighbours == index.nearest_rows(r.address, k=3)
            one = nearest_ngram(tiny_ck, index, text, layer, order, head=1, k=3)
            assert len(one) == 1 and one[0].address == per_head[1].address


def test_short_text_reads_pad_like_the_model(tiny_ck, tiny_parts):
    _, _, pad = tiny_parts
    index = NeighbourIndex.build(tiny_ck)
    ids, _ = encode(tiny_ck.tokenizer, "A")
    assert len(ids) == 1
    (r,) = nearest_ngram(tiny_ck, index, "A", 0, 3, head=0, k=2)
    assert r.ngram[:2] == (pad, pad)
    _, cache = tiny_ck.model.run_with_cache(torch.tensor([ids]))
    assert r.address.row == int(cache["blocks.0.engram.hook_hash_ids"][0, -1, 2])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"text": ""}, "text is empty"),
        ({"layer": 2}, "not an Engram layer"),
        ({"order": 1}, "order 1 is outside 2..3"),
        ({"order": 4}, "order 4 is outside 2..3"),
        ({"head": 2}, "head 2 is outside 0..1"),
        ({"k": 0}, "k must be at least 1"),
    ],
)
def test_nearest_ngram_clear_errors(tiny_ck, kwargs, match):
    index = NeighbourIndex.build(tiny_ck)
    args = {"text": "to be", "layer": 0, "order": 2, "head": None, "k": 5, **kwargs}
    with pytest.raises(ValueError, match=match):
        nearest_ngram(tiny_ck, index, **args)


def test_index_errors(tiny_ck):
    index = NeighbourIndex.build(tiny_ck, layers=[1])
    with pytest.raises(ValueError, match="not in this index"):
        index.nearest_rows(RowAddress(0, 2, 0, 0))
    with pytest.raises(ValueError, match="k must be at least 1"):
        index.nearest_rows(RowAddress(1, 2, 0, 0), k=0)
    with pytest.raises(ValueError, match="dims"):
        index.nearest_vector(np.ones(3))
    with pytest.raises(ValueError, match="not an Engram layer"):
        NeighbourIndex.build(tiny_ck, layers=[2])


# --- neighbours in value space, raw rows only within one head (issue 8 §4) ------------------------


def _value_cosines(ck, flat: int) -> np.ndarray:
    """Cosine of every row's value vector (W_V slice of its head times the row) with row `flat`'s, by numpy."""
    from engram_inspect.memory.valuespace import value_vectors

    layout = RowLayout.of(ck)
    vecs = value_vectors(ck, np.arange(layout.total)).astype(np.float64)
    unit = vecs / np.linalg.norm(vecs, axis=1, keepdims=True)
    return unit @ unit[flat]


def test_value_space_neighbours_equal_brute_force_cosine_and_cross_heads(tiny_ck):
    from engram_inspect.memory.neighbours import row_neighbours
    from engram_inspect.memory.valuespace import ValueIndex

    layout = RowLayout.of(tiny_ck)
    index = ValueIndex(tiny_ck)
    heads_seen = set()
    for flat in (0, 45, layout.flat_range(1).start + 7, layout.total - 1):
        a = layout.address(flat)
        got = row_neighbours(tiny_ck, a, k=8, space="value", value_index=index)
        sims = _value_cosines(tiny_ck, flat)
        sims[flat] = -np.inf  # the row itself is left out
        np.testing.assert_allclose([n.similarity for n in got], np.sort(sims)[::-1][:8], atol=1e-5)
        for n in got:  # each neighbour's reported cosine is its own, not just a sorted list of numbers
            assert n.similarity == pytest.approx(sims[layout.flat(n.address)], abs=1e-5)
        assert a not in [n.address for n in got]
        heads_seen |= {(n.address.layer, n.address.order, n.address.head) for n in got}
    assert len({h[0] for h in heads_seen}) == 2 and len(heads_seen) > 4  # one space for every head and layer
    assert row_neighbours(tiny_ck, a, k=8) == got  # value space is the default, with or without a built index


def test_raw_space_neighbours_stay_in_the_querys_head(tiny_ck):
    from engram_inspect.memory.neighbours import row_neighbours

    layout = RowLayout.of(tiny_ck)
    a = RowAddress(1, 3, 1, 5)
    r = layout.flat_range(a.layer, a.order, a.head)
    table = layer_table(tiny_ck, a.layer)[r.start - layout.flat_range(a.layer).start :][: len(r)]
    want_ids, want_sims = brute_force(table.astype(np.float64), table[a.row].astype(np.float64), 6, exclude=a.row)
    got = row_neighbours(tiny_ck, a, k=6, space="raw")
    assert [n.address for n in got] == [RowAddress(1, 3, 1, int(i)) for i in want_ids]
    np.testing.assert_allclose([n.similarity for n in got], want_sims, atol=1e-5)
    everything = row_neighbours(tiny_ck, a, k=1000, space="raw")  # more than the head holds: all its other rows
    assert len(everything) == len(r) - 1 and a not in [n.address for n in everything]
    assert {(n.address.layer, n.address.order, n.address.head) for n in everything} == {(1, 3, 1)}


def test_ngram_neighbours_are_each_heads_row_neighbours(tiny_ck):
    from engram_inspect.memory.neighbours import ngram_neighbours, row_neighbours

    spec = tiny_ck.model.cfg.memory.hash_spec
    for space in ("value", "raw"):
        found = ngram_neighbours(tiny_ck, "To be, or not to be", 1, 2, k=3, space=space)
        rows = ngram_rows(tiny_ck, "To be, or not to be", 1)[0]
        assert [r.address for r in found] == [RowAddress(1, 2, h, int(rows[spec.head_index(2, h)])) for h in (0, 1)]
        for r in found:
            assert r.neighbours == row_neighbours(tiny_ck, r.address, 3, space)
    with pytest.raises(ValueError, match="choose value or raw"):
        ngram_neighbours(tiny_ck, "to be", 0, 2, space="pooled")
    with pytest.raises(ValueError, match="choose value or raw"):
        row_neighbours(tiny_ck, RowAddress(0, 2, 0, 1), space="Value")
    with pytest.raises(ValueError, match="row 99 is outside"):
        row_neighbours(tiny_ck, RowAddress(0, 2, 0, 99))
