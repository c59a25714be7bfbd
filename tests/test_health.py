"""Memory health statistics against hand computations, and gate-weighted hits against a plain capture."""

import dataclasses
import math

import numpy as np
import pytest
import torch

from engram_core import Checkpoint, HashSpec
from engram_inspect.memory.collisions import build_index
from engram_inspect.memory.health import (
    TableHealth,
    gate_weighted_hits,
    gini,
    health_table,
    kl_uniform,
    memory_health,
    rows_for,
    sample_windows,
    table_health,
    table_hits,
    table_stats,
    usage,
)


@pytest.mark.parametrize("rows", [1, 10, 11])
def test_uniform_hits(rows):
    s = table_stats(np.full(rows, 7))
    assert s["kl_uniform"] == pytest.approx(0.0, abs=1e-12)
    assert s["gini"] == pytest.approx(0.0, abs=1e-12)
    assert s["usage"] == 1.0 and s["dead_rows"] == 0
    assert s["rows_for_50"] == math.ceil(rows / 2)
    assert s["rows_for_90"] == math.ceil(0.9 * rows)
    assert s["rows_for_99"] == rows


@pytest.mark.parametrize("rows", [2, 8, 31])
def test_one_row_holds_all(rows):
    hits = np.zeros(rows)
    hits[rows // 2] = 42
    s = table_stats(hits)
    assert s["kl_uniform"] == pytest.approx(math.log(rows))
    # Gini convention: G = sum_i (2i - n - 1) x_(i) / (n sum x), x ascending; one-hot: (n - 1) / n
    assert s["gini"] == pytest.approx(1 - 1 / rows)
    assert s["usage"] == pytest.approx(1 / rows)
    assert (s["rows_for_50"], s["rows_for_90"], s["rows_for_99"]) == (1, 1, 1)
    assert s["dead_rows"] == rows - 1 and s["hits"] == 42


def test_small_vectors_by_hand():
    # [0, 1, 3]: p = (0, 1/4, 3/4); Gini pairs |0-1|+|0-3|+|1-3| = 6, twice over ordered pairs 12,
    # divided by 2 n^2 mean = 2 * 9 * 4/3 = 24 -> 1/2; top rows 3 (75 %) then 4 (100 %)
    s = table_stats(np.array([0, 1, 3]))
    assert s["kl_uniform"] == pytest.approx(0.25 * math.log(0.75) + 0.75 * math.log(2.25))
    assert s["gini"] == pytest.approx(0.5)
    assert s["usage"] == pytest.approx(2 / 3) and s["dead_rows"] == 1
    assert (s["rows_for_50"], s["rows_for_90"], s["rows_for_99"]) == (1, 2, 2)
    # 8 rows, 20 hits: p = (.5, .25, .15, .1) on 4 rows; ascending coefficients -7..7 step 2:
    # 1*2 + 3*3 + 5*5 + 7*10 = 106, / (8 * 20) = 0.6625; cumulative top rows 10, 15, 18, 20
    h = np.array([5, 0, 3, 2, 0, 0, 10, 0])
    kl = 0.5 * math.log(4) + 0.25 * math.log(2) + 0.15 * math.log(1.2) + 0.1 * math.log(0.8)
    assert kl_uniform(h) == pytest.approx(kl)
    assert gini(h) == pytest.approx(0.6625)
    assert usage(h) == 0.5
    assert [rows_for(h, q) for q in (0.5, 0.75, 0.9, 0.99, 1.0)] == [1, 2, 3, 4, 4]


def test_gini_matches_mean_absolute_difference(rng):
    h = rng.integers(0, 50, size=40).astype(float)
    mad = np.abs(h[:, None] - h[None, :]).sum() / (2 * len(h) ** 2 * h.mean())
    assert gini(h) == pytest.approx(mad)


def test_zero_hit_table_is_clear():
    with np.errstate(all="raise"):  # no 0/0 warnings on the way
        s = table_stats(np.zeros(5))
        th = table_health(1, 2, 0, np.zeros(5, dtype=np.int64), weighted=np.zeros(5))
    assert s["usage"] == 0.0 and s["dead_rows"] == 5 and s["hits"] == 0
    assert (s["rows_for_50"], s["rows_for_90"], s["rows_for_99"]) == (0, 0, 0)
    assert math.isnan(s["kl_uniform"]) and math.isnan(s["gini"])  # no distribution: undefined, not 0
    assert th.hits == 0 and th.gw_usage == 0.0 and math.isnan(th.gw_gini)


def test_bad_hits():
    for bad in (np.array([]), np.array([1.0, -1.0]), np.array([1.0, np.nan]), np.ones((2, 2))):
        with pytest.raises(ValueError):
            table_stats(bad)
    with pytest.raises(ValueError, match="share"):
        rows_for(np.ones(3), 0.0)


@pytest.fixture(scope="module")
def small_index():
    spec = HashSpec(vocab_size=9, table_sizes=(11, 13), max_ngram=3, heads_per_ngram=2, layer_ids=(0, 2), pad_id=0)
    rng = np.random.default_rng(3)
    streams = [rng.integers(0, 9, size=n) for n in (200, 3, 90)]
    return spec, streams, build_index(spec, np.arange(9), streams, key="h")


def test_table_hits_is_count_weighted_bincount(small_index):
    spec, streams, index = small_index
    for layer in spec.layer_ids:
        for order in spec.orders:
            for head in range(spec.heads_per_ngram):
                hits = table_hits(index, layer, order, head)
                want = np.bincount(
                    index.rows(layer, order, head), weights=index.counts[order], minlength=len(hits)
                ).astype(np.int64)
                assert np.array_equal(hits, want)
                assert hits.sum() == index.n_positions == sum(len(s) for s in streams)


def test_memory_health_with_and_without_gates(small_index):
    spec, _, index = small_index
    plain = memory_health(index)
    assert len(plain) == len(spec.layer_ids) * len(spec.orders) * spec.heads_per_ngram
    assert all(math.isnan(h.gw_usage) and math.isnan(h.gw_kl_uniform) for h in plain)
    first = plain[0]
    assert (first.layer, first.order, first.head, first.rows) == (0, 2, 0, spec.primes[0][0])
    assert first.kl_uniform == pytest.approx(kl_uniform(table_hits(index, 0, 2, 0)))
    weights = {(0, 2, 0): np.arange(spec.primes[0][0], dtype=float)}
    gated = memory_health(index, weights)
    assert gated[0].gw_gini == pytest.approx(gini(weights[(0, 2, 0)]))
    assert gated[0].gw_dead_rows == 1 and math.isnan(gated[1].gw_gini)
    rows = health_table(index)
    assert rows[0] == dataclasses.asdict(plain[0])
    assert list(rows[0]) == [f.name for f in dataclasses.fields(TableHealth)]


def test_sample_windows_spread_and_cap():
    a, b = np.arange(100), np.arange(1000, 1040)
    w = sample_windows([a, b, np.arange(5)], window=10, max_tokens=40)
    # 15 candidates (10 of a, 4 of b, the short one); linspace(0, 14, 4) rounds to 0, 5, 9, 14
    assert [(int(x[0]), len(x)) for x in w] == [(0, 10), (50, 10), (90, 10), (0, 5)]
    assert len(sample_windows([a, np.arange(5)], 10, 10_000)) == 11
    assert sample_windows([a], 10, 9) == []


def test_gate_weighted_hits_match_run_with_cache(tiny_model, tiny_parts, rng):
    tok, _, _ = tiny_parts
    ck = Checkpoint(model=tiny_model, tokenizer=tok, meta={})
    spec = tiny_model.cfg.memory.hash_spec
    streams = {"x": rng.integers(0, tok.get_vocab_size(), size=100), "y": rng.integers(0, 50, size=7)}
    got = gate_weighted_hits(ck, streams, max_tokens=48, window=16, batch=2)
    want = {k: np.zeros_like(v) for k, v in got.items()}
    for w in sample_windows(streams.values(), 16, 48):
        names = [
            n
            for ly in spec.layer_ids
            for n in (f"blocks.{ly}.engram.hook_hash_ids", f"blocks.{ly}.engram.readout.hook_gate")
        ]
        _, cache = tiny_model.run_with_cache(torch.as_tensor(w[None].astype(np.int64)), names=names)
        for ly in spec.layer_ids:
            alpha = cache[f"blocks.{ly}.engram.readout.hook_gate"][0].mean(-1)  # (T,)
            rows = cache[f"blocks.{ly}.engram.hook_hash_ids"][0]  # (T, H)
            for (layer, order, head), acc in want.items():
                if layer == ly:
                    for t in range(len(w)):
                        acc[int(rows[t, spec.head_index(order, head)])] += float(alpha[t])
    assert got.keys() == want.keys()
    for k in got:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-6)
    # windows 0 and 3 of x, and all of the short y: 39 tokens, each adds one mean gate in (0, 1)
    totals = {k: float(v.sum()) for k, v in got.items() if k[0] == 0}
    assert 0 < min(totals.values()) and max(totals.values()) < 39
    assert max(totals.values()) - min(totals.values()) < 1e-9  # every head of a layer sees every token


def test_mean_gate_per_row_against_a_direct_loop(tiny_parts, tiny_model):
    import torch

    from engram_core import Checkpoint
    from engram_inspect.memory.health import mean_gate_per_row

    tok = tiny_parts[0]
    ck = Checkpoint(model=tiny_model, tokenizer=tok, meta={})
    ids = np.asarray(tok.encode("I pray you, my lord, let me know. " * 9).ids, dtype=np.int64)[:64]  # one context
    got = mean_gate_per_row(ck, [ids], max_tokens=10_000)
    _, cache = tiny_model.run_with_cache(torch.as_tensor(ids)[None])
    spec = tiny_model.cfg.memory.hash_spec
    for (ly, n, h), means in got.items():
        rows = cache[f"blocks.{ly}.engram.hook_hash_ids"][0, :, spec.head_index(n, h)].numpy()
        alpha = cache[f"blocks.{ly}.engram.readout.hook_gate"][0].mean(-1).numpy()
        for r in np.unique(rows):
            assert means[r] == pytest.approx(alpha[rows == r].mean(), abs=1e-6)
        unread = np.setdiff1d(np.arange(len(means)), rows)
        assert np.isnan(means[unread]).all()


def test_mhc_check_reports_the_checkpoints_own_sinkhorn(tiny_parts, tiny_model):
    from engram_inspect.memory.health import mhc_check

    tok = tiny_parts[0]
    ids = np.array(tok.encode("To be, or not to be, that is the question.").ids)
    # a sharp residual mix that 2 fixed Sinkhorn steps leave far from doubly stochastic
    with torch.no_grad():
        for block in tiny_model.blocks:
            for sub in (block.attn, block.mlp):
                sub.b_res.copy_(torch.tensor([[6.0, -3.0], [2.0, 0.0]]))
    converged = mhc_check(Checkpoint(tiny_model, tok, {}), ids)
    assert converged.tolerance == 1e-3 and converged.error <= 1e-3 and "within 1e-3" in converged.describe()
    old = dataclasses.replace(tiny_model.cfg.backbone, sinkhorn_tol=0.0, sinkhorn_iters=2)
    for block in tiny_model.blocks:
        for sub in (block.attn, block.mlp):
            sub.iters, sub.tol = 2, 0.0
    tiny_model.cfg = dataclasses.replace(tiny_model.cfg, backbone=old)
    fixed = mhc_check(Checkpoint(tiny_model, tok, {}), ids)
    assert fixed.error > 1e-2 and fixed.steps == 2 and "not doubly stochastic" in fixed.describe()
    assert mhc_check(Checkpoint(tiny_model, tok, {}), np.array([], dtype=np.int64)).error == 0.0
