"""Row pages and value space on the tiny model: hand computations, the collision index, direct captures."""

import numpy as np
import pytest
import torch

from engram_core import Checkpoint, KnockOut
from engram_core.tokenizer import encode
from engram_inspect.memory.collisions import build_collision_index
from engram_inspect.memory.rowpage import RowPages, exact_removal, parse_row, row_page
from engram_inspect.memory.rows import RowAddress, RowLayout, layer_table
from engram_inspect.memory.rowstats import compute_row_stats, grad_times_input
from engram_inspect.memory.valuespace import (
    ValueIndex,
    direct_logits,
    neighbour_agreement,
    promotes,
    top_tokens,
    value_vector,
    value_vectors,
)
from tests.conftest import TINY_TEXT, make_tiny_model


@pytest.fixture(scope="module")
def tiny_ck(tiny_parts):
    # one model for the module: the pages built on it are the slow part (tests restore any change they make)
    return Checkpoint(model=make_tiny_model(tiny_parts), tokenizer=tiny_parts[0], meta={})


def tiny_streams(tok) -> dict[str, np.ndarray]:
    ids = np.asarray(encode(tok, TINY_TEXT)[0], dtype=np.int64)
    half = len(ids) // 2
    return {"train/code": ids[:half], "train/plays": ids[half:]}


def pages_for(ck, streams, delta_tokens=4 * 64):
    stats = compute_row_stats(ck, streams, max_tokens=10_000, delta_tokens=delta_tokens)
    return RowPages(ck, stats, streams, build_collision_index(ck, streams))


# --- value space ----------------------------------------------------------------------------------


def test_value_vector_is_the_heads_w_v_slice_times_the_row_by_hand(tiny_ck):
    """Tiny model: 2 heads per order, orders 2 and 3, d_head 8. Row 5 of (layer 1, order 3, head 1)
    is head index (3 - 2) * 2 + 1 = 3, so it feeds W_V's input columns 24..31 (order-major, head-minor)."""
    m = tiny_ck.model
    eng = m.blocks[1].engram
    w_v = eng.readout.w_v.weight.detach().double().numpy()  # (32, 32)
    row = eng.table.weight.detach().double().numpy()[int(eng.offsets[3]) + 5]  # (8,)
    want = np.zeros(32)
    for i in range(32):  # a plain loop: sum_j W_V[i, 24 + j] * row[j]
        for j in range(8):
            want[i] += w_v[i, 24 + j] * row[j]
    got = value_vector(tiny_ck, RowAddress(1, 3, 1, 5))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # and through the model's own W_V: e holds only this row, in its head's slot
    e = torch.zeros(1, 4 * 8)
    e[0, 24:32] = torch.as_tensor(row, dtype=torch.float32)
    with torch.no_grad():
        np.testing.assert_allclose(eng.readout.w_v(e)[0].numpy(), got, rtol=1e-5, atol=1e-6)


def test_value_vectors_of_many_rows_match_one_by_one(tiny_ck, rng):
    layout = RowLayout.of(tiny_ck)
    flat = rng.choice(layout.total, size=40, replace=False)
    many = value_vectors(tiny_ck, flat)
    for f, v in zip(flat, many, strict=True):
        np.testing.assert_allclose(v, value_vector(tiny_ck, layout.address(int(f))), rtol=1e-6, atol=1e-7)


def test_top_tokens_factored_equal_argmax_of_the_direct_path(tiny_ck):
    layout = RowLayout.of(tiny_ck)
    tops = top_tokens(tiny_ck)
    logits = direct_logits(tiny_ck, value_vectors(tiny_ck, np.arange(layout.total)))  # norm, then tied head
    np.testing.assert_array_equal(tops, logits.argmax(-1))
    p = promotes(tiny_ck, layout.address(7), k=3)
    assert p.top_ids[0] == tops[7]
    assert p.top_logits == sorted(p.top_logits, reverse=True) and p.bottom_logits == sorted(p.bottom_logits)
    assert p.bottom_ids[0] == int(logits[7].argmin())


def test_value_index_equals_brute_force_cosine(tiny_ck):
    layout = RowLayout.of(tiny_ck)
    vecs = value_vectors(tiny_ck, np.arange(layout.total)).astype(np.float64)
    unit = vecs / np.linalg.norm(vecs, axis=1, keepdims=True)
    index = ValueIndex(tiny_ck)
    sims, ids = index.search(vecs[[3, 100, 250]], 5)
    for q, s_row, i_row in zip([3, 100, 250], sims, ids, strict=True):
        want = unit @ unit[q]
        np.testing.assert_allclose(s_row, np.sort(want)[::-1][:5], atol=1e-5)
        np.testing.assert_allclose(want[i_row], s_row, atol=1e-5)
    near = index.nearest(tiny_ck, layout.address(3), k=4)
    assert len(near) == 4 and all(a != layout.address(3) for a, _ in near)


def test_neighbour_agreement_counts_same_top_tokens(tiny_ck):
    tops = top_tokens(tiny_ck)
    layer = tiny_ck.model.engram_layers[0]
    res = neighbour_agreement(tiny_ck, layer, tops, n_queries=30, k=3)
    assert 0 <= res["raw"] <= 1 and 0 <= res["value"] <= 1 and res["queries"] == 30
    # every row promoting one token: all neighbours agree
    one = np.zeros_like(tops)
    assert neighbour_agreement(tiny_ck, layer, one, n_queries=30, k=3)["value"] == 1.0


# --- row pages --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_pages(tiny_ck):
    return pages_for(tiny_ck, tiny_streams(tiny_ck.tokenizer))


def test_row_page_ngrams_equal_the_collision_index(tiny_ck, tiny_pages):
    index, layout = tiny_pages.index, tiny_pages.layout
    checked = 0
    for flat in range(0, layout.total, 7):
        a = layout.address(flat)
        page = row_page(tiny_ck, a, tiny_pages)
        want = index.ngrams_at(a.layer, a.order, a.head, a.row)
        assert [(n.ngram, n.count) for n in page.ngrams] == want
        assert all(n.plays + n.code == n.count for n in page.ngrams)  # domains split every occurrence
        assert page.hits == sum(c for _, c in want)
        if want:
            checked += 1
            assert page.top_share == pytest.approx(want[0][1] / page.hits)
            assert page.crowded == (want[0][1] / page.hits < 0.5)
    assert checked > 10


def test_reads_are_the_positions_whose_ngram_hashes_to_the_row(tiny_ck, tiny_pages):
    """Every position of the sample that reads the row, and no other, by the model's own hash."""
    layout = tiny_pages.layout
    a = layout.address(int(tiny_pages.rows[0][0][70]) + layout.flat_range(0, 2, 0).start)
    w, t = tiny_pages.reads(a)
    assert len(w) > 0
    for wi in np.unique(w):
        ids = torch.from_numpy(tiny_pages.tokens[wi])
        T = len(ids)
        stream = tiny_pages.streams[tiny_pages.stats.sample.names[tiny_pages.stats.sample.stream[wi]]]
        start = int(tiny_pages.stats.sample.start[wi])
        full = tiny_ck.model.hash_rows(torch.from_numpy(stream[: start + T].astype(np.int64))[None])[a.layer]
        model_rows = full[0, start:, layout.spec.head_index(a.order, a.head)].numpy()
        np.testing.assert_array_equal(np.sort(t[w == wi]), np.flatnonzero(model_rows == a.row))


def test_top_contexts_sorted_and_equal_to_a_direct_capture(tiny_ck, tiny_pages):
    layout = tiny_pages.layout
    a = layout.address(layout.flat_range(1, 2, 1).start + int(tiny_pages.rows[1][1][5]))  # head index 1
    page = row_page(tiny_ck, a, tiny_pages)
    assert page.reads == len(tiny_pages.reads(a)[0]) > 0
    top = [c.alpha for c in page.top_contexts]
    bottom = [c.alpha for c in page.bottom_contexts]
    assert top == sorted(top, reverse=True) and bottom == sorted(bottom)
    assert len(page.top_contexts) == min(20, page.reads) and len(page.bottom_contexts) == min(10, page.reads)
    assert sum(page.alpha_hist) == page.reads
    T = tiny_pages.stats.sample.length
    names = [f"blocks.{a.layer}.engram.hook_hash_ids", f"blocks.{a.layer}.engram.readout.hook_gate"]
    captures = {}
    for c in page.top_contexts + page.bottom_contexts:
        ids = torch.from_numpy(tiny_pages.tokens[c.window])[None]
        if c.window not in captures:  # one direct capture per window
            rows = {ly: torch.from_numpy(r[:, c.window * T : (c.window + 1) * T].T[None]).long()
                    for ly, r in tiny_pages.rows.items()}  # fmt: skip
            captures[c.window] = tiny_ck.model.run_with_cache(ids, names=names, rows=rows)[1]
        cache = captures[c.window]
        assert int(cache[f"blocks.{a.layer}.engram.hook_hash_ids"][0, c.position, 1]) == a.row
        alpha = float(cache[f"blocks.{a.layer}.engram.readout.hook_gate"][0, c.position].mean())
        assert c.alpha == pytest.approx(alpha, abs=0.5 / 255 + 1e-6)  # stored to 1/255
        assert c.token == tiny_ck.tokenizer.decode([int(ids[0, c.position])], skip_special_tokens=False)


def test_exact_removal_equals_the_knockout_of_a_row_read_once(tiny_ck, tiny_pages):
    """Where a window reads the row at one position only, zeroing that read is KnockOut(rows=...)."""
    layout, T = tiny_pages.layout, tiny_pages.stats.sample.length
    model = tiny_ck.model
    for flat in range(layout.total):
        a = layout.address(flat)
        w, t = tiny_pages.reads(a)
        once = [i for i in range(len(w)) if (w == w[i]).sum() == 1 and t[i] < T - 1]
        if once:
            break
    i = once[0]
    total, own = exact_removal(tiny_pages, a, w[[i]], t[[i]])
    ids = torch.from_numpy(tiny_pages.tokens[w[i]])[None]
    rows = {ly: torch.from_numpy(r[:, w[i] * T : (w[i] + 1) * T].T[None]).long() for ly, r in tiny_pages.rows.items()}
    ko = KnockOut(rows={(a.layer, a.order, a.head, a.row)})
    with torch.no_grad():
        lp = [m.float().log_softmax(-1)[0, :-1].gather(-1, ids[0, 1:, None])[:, 0].double()
              for m in (model(ids, rows=rows), model(ids, knockout=ko, rows=rows))]  # fmt: skip
    assert total[0] == pytest.approx(float((lp[1] - lp[0]).sum()), abs=1e-5)
    assert own[0] == pytest.approx(float(lp[1][t[i]] - lp[0][t[i]]), abs=1e-6)


def test_gradient_estimate_is_the_limit_of_a_scaled_read(tiny_ck, tiny_pages):
    """grad x input = lim (log L(read x (1 - eps)) - log L(read x (1 + eps))) / (2 eps), in float64."""
    model = tiny_ck.model.double()
    T = tiny_pages.stats.sample.length
    ids = torch.from_numpy(tiny_pages.tokens[0])[None]
    rows = {ly: torch.from_numpy(r[:, :T].T[None]).long() for ly, r in tiny_pages.rows.items()}
    layer, t, h, eps = model.engram_layers[1], 9, 2, 1e-2
    mods = dict(model.named_modules())

    def loglik(scale: float) -> float:
        def scaled(_m, _i, e):
            e = e.clone()
            e[0, t, h] *= scale
            return e

        handle = mods[f"blocks.{layer}.engram.hook_rows"].register_forward_hook(scaled)
        try:
            with torch.no_grad():
                return float(model(ids, rows=rows).log_softmax(-1)[0, :-1].gather(-1, ids[0, 1:, None]).sum())
        finally:
            handle.remove()

    try:
        g = float(grad_times_input(model, ids, rows)[layer][0, t, h])
        central = (loglik(1 - eps) - loglik(1 + eps)) / (2 * eps)
    finally:
        model.float()
    assert abs(g) > 1e-4  # a read that matters, so the check has teeth
    assert g == pytest.approx(central, rel=2e-3)


def test_planted_crowded_row(tiny_ck):
    """A stream cycling a, b, c where (a, b), (b, c), (c, a) all hash to one row of a head:
    the row holds three N-grams of about a third of the hits each, so it is crowded;
    the row of (pad, a), read once, is not."""
    spec = tiny_ck.model.cfg.memory.hash_spec
    comp = tiny_ck.model.compression.numpy()
    from engram_inspect.memory.ngram_keys import ngram_rows

    raw = {}
    for r, c in enumerate(comp):
        raw.setdefault(int(c), r)
    cids = sorted(c for c in raw if c != spec.pad_id)[:40]
    found = None
    for a in cids:
        for b in cids:
            for c in cids:
                if len({a, b, c}) < 3:
                    continue
                rows = ngram_rows(np.asarray([[a, b], [b, c], [c, a]]), spec, 0)  # (heads, 3)
                same = [h for h in range(spec.heads_per_ngram) if len(set(rows[h])) == 1]
                if same:
                    found = (a, b, c, same[0], int(rows[same[0], 0]))
                    break
            if found:
                break
        if found:
            break
    a, b, c, head, row = found
    stream = np.asarray([raw[a], raw[b], raw[c]] * 40, dtype=np.int64)  # 120 tokens: 40 / 40 / 39 N-grams
    pages = pages_for(tiny_ck, {"train/plays": stream}, delta_tokens=0)
    page = row_page(tiny_ck, RowAddress(0, 2, head, row), pages)
    counts = sorted(n.count for n in page.ngrams)
    pad_a_shares = 1 if int(ngram_rows(np.asarray([[spec.pad_id, a]]), spec, 0)[head, 0]) == row else 0
    assert counts[-3:] == [39, 40, 40] and len(counts) == 3 + pad_a_shares
    assert page.top_share == pytest.approx(40 / (119 + pad_a_shares))
    assert page.crowded and page.delta_estimate_reads == 0
    assert all(n.plays == n.count and n.code == 0 for n in page.ngrams)
    lone = RowAddress(0, 2, head, int(ngram_rows(np.asarray([[spec.pad_id, a]]), spec, 0)[head, 0]))
    if lone.row != row:
        lone_page = row_page(tiny_ck, lone, pages)
        assert lone_page.top_share > 0.5 and not lone_page.crowded


@pytest.mark.parametrize("text", ["1:2:0", "a:b:c:d", "1:2:0:1:5", "", "1.5:2:0:1"])
def test_parse_row_rejects_malformed_addresses(text):
    with pytest.raises(ValueError, match="L:N:K:R"):
        parse_row(text)


def test_row_page_rejects_rows_outside_the_model(tiny_ck, tiny_pages):
    assert parse_row(" 1:3:1:5 ") == RowAddress(1, 3, 1, 5)
    for bad, match in (("7:2:0:0", "not an Engram layer"), ("0:5:0:0", "order"), ("0:2:9:0", "head"),
                       ("0:2:0:100000", "row")):  # fmt: skip
        with pytest.raises(ValueError, match=match):
            row_page(tiny_ck, parse_row(bad), tiny_pages)


def test_value_pca_equals_pca_of_the_value_vectors(tiny_ck, tmp_path):
    from engram_inspect.memory.projection import pca_axes
    from engram_inspect.memory.valuemap import value_pca_axes, value_projection

    layout = RowLayout.of(tiny_ck)
    vecs = value_vectors(tiny_ck, np.arange(layout.total))
    mean, axes, ratio = value_pca_axes(tiny_ck)
    want_mean, want_axes, want_ratio = pca_axes(vecs)
    np.testing.assert_allclose(mean, want_mean, atol=1e-5)
    np.testing.assert_allclose(axes, want_axes, atol=1e-4)
    np.testing.assert_allclose(ratio, want_ratio, atol=1e-5)
    p = value_projection(tiny_ck, "pca", max_points=100, cache_path=tmp_path / "p.npz")
    np.testing.assert_allclose(p.coords, (vecs[p.rows] - want_mean) @ want_axes.T, atol=1e-4)
    again = value_projection(tiny_ck, "pca", max_points=100, cache_path=tmp_path / "p.npz")  # from the file
    np.testing.assert_array_equal(again.rows, p.rows) and np.testing.assert_array_equal(again.coords, p.coords)


@pytest.mark.parametrize(
    ("text", "kind"),
    [(",", "punctuation"), ("\n    ", "punctuation"), (" Hamlet", "name"), (" def", "keyword"), ("None", "keyword"),
     (" lord", "other"), ("42", "other")],
)  # fmt: skip
def test_token_kinds(text, kind):
    from engram_inspect.memory.valuemap import token_kind

    assert token_kind(text) == kind


def test_row_colours_agree_with_the_pages(tiny_ck, tiny_pages):
    from engram_inspect.memory.valuemap import DOMAINS, row_colours

    layout = tiny_pages.layout
    mean_alpha = np.full(layout.total, np.nan)
    col = row_colours(tiny_ck, tiny_pages.index, tiny_pages.streams, mean_alpha, top_tokens(tiny_ck))
    for flat in range(0, layout.total, 5):
        page = row_page(tiny_ck, layout.address(flat), tiny_pages)
        if page.hits:
            assert col["top_share"][flat] == pytest.approx(page.top_share, rel=1e-6)
            assert bool(col["crowded"][flat]) == page.crowded
            top = page.ngrams[0]
            assert DOMAINS[col["domain"][flat]] == ("plays" if top.plays >= top.code else "code")
        else:
            assert np.isnan(col["top_share"][flat]) and col["domain"][flat] == -1


def test_mean_alpha_per_row_is_the_mean_over_its_pages_reads(tiny_ck, tiny_pages):
    layout = tiny_pages.layout
    means = tiny_pages.mean_alpha()
    for flat in range(0, layout.total, 11):
        page = row_page(tiny_ck, layout.address(flat), tiny_pages)
        if page.reads:
            assert means[flat] == pytest.approx(page.mean_alpha, rel=1e-5)
        else:
            assert np.isnan(means[flat])


def test_page_neighbours_value_space_and_same_head_raw(tiny_ck, tiny_pages):
    layout = tiny_pages.layout
    a = layout.address(40)
    page = row_page(tiny_ck, a, tiny_pages)
    vecs = value_vectors(tiny_ck, np.arange(layout.total)).astype(np.float64)
    unit = vecs / np.linalg.norm(vecs, axis=1, keepdims=True)
    sims = unit @ unit[40]
    sims[40] = -np.inf
    np.testing.assert_allclose([n.similarity for n in page.value_neighbours], np.sort(sims)[::-1][:10], atol=1e-5)
    r = layout.flat_range(a.layer, a.order, a.head)
    raw = layer_table(tiny_ck, a.layer)[r.start - layout.flat_range(a.layer).start :][: len(r)].astype(np.float64)
    raw /= np.linalg.norm(raw, axis=1, keepdims=True)
    own = raw @ raw[a.row]
    own[a.row] = -np.inf
    np.testing.assert_allclose([n.similarity for n in page.head_neighbours], np.sort(own)[::-1][:10], atol=1e-5)
    head = [RowAddress.parse(n.address) for n in page.head_neighbours]
    assert len(head) == 10 and all((h.layer, h.order, h.head) == (a.layer, a.order, a.head) for h in head)
    assert a not in head


def test_mean_mode_removal_of_a_read_equal_to_its_heads_mean_costs_nothing(tiny_ck, tiny_pages):
    """A read replaced by a row equal to itself changes no log p: mode=mean with that row as the head's mean."""
    from engram_core.ablation import RowSource
    from engram_inspect.memory.rowpage import _substitutes

    layout, T = tiny_pages.layout, tiny_pages.stats.sample.length
    model = tiny_ck.model
    a = next(layout.address(f) for f in range(layout.total) if len(tiny_pages.reads(layout.address(f))[0]))
    w, t = tiny_pages.reads(a)
    h = layout.spec.head_index(a.order, a.head)
    engram = model.blocks[a.layer].engram
    old = engram.row_source
    seen = {}

    def grab(_m, _i, e):
        seen["row"] = e[0, int(t[0]), h].detach().clone()

    mods = dict(model.named_modules())
    from engram_core.hooks import engram_hook

    handle = mods[engram_hook(a.layer, "rows")].register_forward_hook(grab)
    ids = torch.from_numpy(tiny_pages.tokens[w[0]])[None]
    rows = {ly: torch.from_numpy(r[:, w[0] * T : (w[0] + 1) * T].T[None]).long() for ly, r in tiny_pages.rows.items()}
    with torch.no_grad():
        model(ids, rows=rows)
    handle.remove()
    mean_rows = torch.zeros(h + 1, seen["row"].shape[-1], dtype=seen["row"].dtype)
    mean_rows[h] = seen["row"]
    engram.row_source = RowSource(mean_rows=mean_rows, pool=torch.zeros(2, h + 1, dtype=torch.long))
    try:
        hash_ids = torch.from_numpy(tiny_pages.rows[a.layer][:, w[0] * T : (w[0] + 1) * T].T[None]).long()
        (sub,) = _substitutes(model, a.layer, h, hash_ids, torch.from_numpy(t[:1]), KnockOut(mode="mean"))
        assert torch.equal(sub[0], seen["row"])
        total, own = exact_removal(tiny_pages, a, w[:1], t[:1], mode="mean")
        zero_total, _ = exact_removal(tiny_pages, a, w[:1], t[:1], mode="zero")
    finally:
        engram.row_source = old
    assert abs(total[0]) < 1e-5 and abs(own[0]) < 1e-5
    assert abs(zero_total[0]) > 1e-5  # the zero mode does move it, so the check can fail
    with pytest.raises(ValueError, match="choose zero, mean or resample"):
        exact_removal(tiny_pages, a, w[:1], t[:1], mode="shuffle")
    with pytest.raises(ValueError, match="samples must be an integer >= 1"):
        row_page(tiny_ck, a, tiny_pages, exact=True, mode="resample", samples=0)


# --- exact removal cost under mode resample -----------------------------------------------------------


def _row_read_once(pages):
    """A row, and the index of one of its reads, whose window reads it at that one position only."""
    layout, T = pages.layout, pages.stats.sample.length
    for flat in range(layout.total):
        a = layout.address(flat)
        w, t = pages.reads(a)
        once = [i for i in range(len(w)) if (w == w[i]).sum() == 1 and t[i] < T - 1]
        if once:
            return a, w, t, once[0]
    raise AssertionError("no row is read once in a window")


def test_resample_removal_is_seeded_averaged_and_batch_free(tiny_parts, tiny_pages):
    """Fixed seed: the same numbers on two fresh model objects; samples=3 is the mean of seeds s, s+1, s+2;
    a read's draw does not depend on the batch it shares."""
    import copy

    from engram_inspect.memory.ablation import row_sources

    def fresh_pages():
        ck = Checkpoint(model=make_tiny_model(tiny_parts), tokenizer=tiny_parts[0], meta={})
        ck.model.install_row_source(row_sources(ck, tiny_pages.index))
        pages = copy.copy(tiny_pages)  # the same sample and index, a new model
        pages.ck = ck
        return pages

    layout = tiny_pages.layout
    a = next(layout.address(f) for f in range(layout.total) if len(tiny_pages.reads(layout.address(f))[0]) >= 5)
    w, t = (x[:5] for x in tiny_pages.reads(a))
    one, two = fresh_pages(), fresh_pages()
    first = exact_removal(one, a, w, t, mode="resample", samples=3, seed=5)
    again = exact_removal(two, a, w, t, mode="resample", samples=3, seed=5)
    for x, y in zip(first, again, strict=True):
        np.testing.assert_array_equal(x, y)
    runs = [exact_removal(one, a, w, t, mode="resample", seed=s) for s in (5, 6, 7)]
    for i in range(2):  # window total and own prediction
        np.testing.assert_allclose(first[i], np.mean([r[i] for r in runs], axis=0), atol=1e-9)
    assert not np.allclose(runs[0][0], runs[1][0], atol=1e-6)  # seeds draw different rows: the mean has teeth
    single = exact_removal(one, a, w, t, batch=1, mode="resample", samples=3, seed=5)
    np.testing.assert_allclose(single[0], first[0], atol=1e-4)
    np.testing.assert_allclose(single[1], first[1], atol=1e-5)


def test_resample_on_a_head_whose_rows_are_all_equal_changes_nothing(tiny_ck, tiny_pages):
    from engram_inspect.memory.ablation import row_sources

    layout = tiny_pages.layout
    model = tiny_ck.model
    a = next(layout.address(f) for f in range(layout.total) if len(tiny_pages.reads(layout.address(f))[0]) >= 3)
    w, t = (x[:3] for x in tiny_pages.reads(a))
    engram = model.blocks[a.layer].engram
    start = int(engram.offsets[layout.spec.head_index(a.order, a.head)])
    n = len(layout.flat_range(a.layer, a.order, a.head))
    table = engram.table.weight
    kept = table.detach().clone()
    try:
        with torch.no_grad():
            table[start : start + n] = table[start + a.row].clone()  # every row of the head equal
        model.install_row_source(row_sources(tiny_ck, tiny_pages.index))
        total, own = exact_removal(tiny_pages, a, w, t, mode="resample", samples=2, seed=1)
        zero_total, _ = exact_removal(tiny_pages, a, w, t, mode="zero")
    finally:
        with torch.no_grad():
            table.copy_(kept)
        model.install_row_source(None)
    np.testing.assert_allclose(total, 0.0, atol=1e-5)
    np.testing.assert_allclose(own, 0.0, atol=1e-6)
    assert np.abs(zero_total).max() > 1e-4  # zeroing the same reads does move them, so the check can fail


def test_resample_with_a_planted_pool_is_the_knockout_by_that_row(tiny_ck, tiny_pages):
    """k = 1, a pool whose every entry reads row r2 on the head: removing the read is KnockOut(rows=..., resample)
    on its window, and the same as putting r2's table row in its place (mode mean with r2 as the head's mean)."""
    from engram_core.ablation import RowSource

    a, w, t, i = _row_read_once(tiny_pages)
    layout, T = tiny_pages.layout, tiny_pages.stats.sample.length
    model = tiny_ck.model
    engram = model.blocks[a.layer].engram
    h = layout.spec.head_index(a.order, a.head)
    H = engram.offsets.numel()
    r2 = (a.row + 1) % len(layout.flat_range(a.layer, a.order, a.head))
    pool = torch.zeros(4, H, dtype=torch.long)
    pool[:, h] = r2
    as_mean = torch.zeros(H, engram.table.weight.shape[1], dtype=engram.table.weight.dtype)
    as_mean[h] = engram.table.weight[int(engram.offsets[h]) + r2].detach()
    ids = torch.from_numpy(tiny_pages.tokens[w[i]])[None]
    rows = {ly: torch.from_numpy(r[:, w[i] * T : (w[i] + 1) * T].T[None]).long() for ly, r in tiny_pages.rows.items()}
    ko = KnockOut(rows={(a.layer, a.order, a.head, a.row)}, mode="resample", seed=3)
    engram.row_source = RowSource(mean_rows=as_mean, pool=pool)
    try:
        total, own = exact_removal(tiny_pages, a, w[[i]], t[[i]], mode="resample", samples=1, seed=3)
        by_hand, _ = exact_removal(tiny_pages, a, w[[i]], t[[i]], mode="mean")
        with torch.no_grad():
            lp = [m.float().log_softmax(-1)[0, :-1].gather(-1, ids[0, 1:, None])[:, 0].double()
                  for m in (model(ids, rows=rows), model(ids, knockout=ko, rows=rows))]  # fmt: skip
    finally:
        engram.row_source = None
    assert abs(total[0]) > 1e-4  # the planted row differs from the read, so something moves
    assert total[0] == pytest.approx(float((lp[1] - lp[0]).sum()), abs=1e-5)
    assert own[0] == pytest.approx(float(lp[1][t[i]] - lp[0][t[i]]), abs=1e-6)
    assert total[0] == pytest.approx(by_hand[0], abs=1e-6)


def test_row_page_reports_the_mode_of_its_exact_cost(tiny_ck, tiny_pages):
    from engram_inspect.memory.ablation import row_sources

    a, w, t, _ = _row_read_once(tiny_pages)
    tiny_ck.model.install_row_source(row_sources(tiny_ck, tiny_pages.index))
    try:
        page = row_page(tiny_ck, a, tiny_pages, exact=True, max_exact=3, mode="resample", samples=2, seed=4)
        pick = np.unique(np.linspace(0, len(w) - 1, min(3, len(w))).round().astype(np.int64))
        total, own = exact_removal(tiny_pages, a, w[pick], t[pick], mode="resample", samples=2, seed=4)
    finally:
        tiny_ck.model.install_row_source(None)
    d = page.to_dict()
    assert (d["delta_exact_mode"], d["delta_exact_samples"], d["delta_exact_seed"]) == ("resample", 2, 4)
    assert d["delta_exact"] == pytest.approx(float(total.mean()), abs=1e-9)
    assert d["delta_exact_own"] == pytest.approx(float(own.mean()), abs=1e-9)
    assert d["delta_exact_reads"] == len(pick)
    zero = row_page(tiny_ck, a, tiny_pages, exact=True, max_exact=3)
    assert (zero.delta_exact_mode, zero.delta_exact_samples, zero.delta_exact_seed) == ("zero", 1, None)


def test_stats_of_another_interpreters_corpus_are_computed_again(tiny_ck, tmp_path, monkeypatch):
    """The code streams are the running standard library: the same (stream, start) pairs under another
    interpreter are other text, so stats name their corpus and are not reused for another one."""
    import dataclasses

    from engram_inspect.memory import rowstats
    from engram_inspect.memory.ngram_keys import corpus_fingerprint

    monkeypatch.setenv("ENGRAM_CACHE", str(tmp_path / "cache"))
    ck = dataclasses.replace(tiny_ck, path=tmp_path / "ck")
    a = tiny_streams(tiny_ck.tokenizer)
    b = {k: v[::-1].copy() for k, v in a.items()}  # the same sizes, other text
    first = rowstats.load_or_compute(ck, streams=a)
    assert first.corpus == corpus_fingerprint(list(a.values()))
    monkeypatch.setattr(rowstats, "compute_row_stats", lambda *a, **k: pytest.fail("computed again"))
    assert np.array_equal(rowstats.load_or_compute(ck, streams=a).alpha, first.alpha)  # the cached copy
    monkeypatch.undo()
    monkeypatch.setenv("ENGRAM_CACHE", str(tmp_path / "cache"))
    other = rowstats.load_or_compute(ck, streams=b)
    assert other.corpus == corpus_fingerprint(list(b.values())) != first.corpus
    assert not np.array_equal(other.alpha, first.alpha)
