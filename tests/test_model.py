"""The model: gate and conv against hand computations, causality, knock-outs, hooks, bad input."""

import math

import pytest
import torch

from engram_core import KnockOut, MemoryConfig
from engram_core.engram import EngramReadout, causal_dilated_conv

HOOKS = [
    "blocks.0.engram.readout.hook_gate_score",
    "blocks.0.engram.readout.hook_gate",
    "blocks.0.engram.readout.hook_value",
    "blocks.0.engram.readout.hook_out",
    "blocks.0.engram.hook_hash_ids",
    "blocks.0.engram.hook_rows",
    "blocks.0.hook_resid_pre",
    "blocks.0.hook_resid_post",
    "blocks.1.engram.readout.hook_gate_score",
    "blocks.1.engram.readout.hook_gate",
    "blocks.1.engram.readout.hook_value",
    "blocks.1.engram.readout.hook_out",
    "blocks.1.engram.hook_hash_ids",
    "blocks.1.engram.hook_rows",
    "blocks.1.hook_resid_pre",
    "blocks.1.hook_resid_post",
    "blocks.2.hook_resid_pre",
    "blocks.2.hook_resid_post",
    "hook_compressed_ids",
    "hook_logits",
]


def ids_for(model, n=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, model.cfg.backbone.vocab_size, (2, n), generator=g)


def test_hook_names_are_a_visible_decision(tiny_model):
    assert tiny_model.hook_names() == HOOKS


def hand_readout(signed_sqrt: bool) -> EngramReadout:
    cfg = MemoryConfig(heads_per_ngram=1, max_ngram=2, d_head=2, table_sizes=(5,), signed_sqrt=signed_sqrt)
    r = EngramReadout(cfg, d=2, n_branches=1)
    with torch.no_grad():
        r.w_k.weight.copy_(torch.eye(2))
        r.w_v.weight.copy_(torch.tensor([[2.0, 0.0], [0.0, 2.0]]))
    return r


@pytest.mark.parametrize("signed_sqrt", [True, False])
def test_gate_against_hand_computation(signed_sqrt):
    """h = (3, 4): RMSNorm -> (0.8485, 1.1314); k = e = (1, 0): RMSNorm -> (1.4142, 0).
    dot = 1.2, / sqrt(D=2) = 0.8485; signed sqrt -> 0.9212; sigmoid -> 0.7153 (0.7003 without)."""
    r = hand_readout(signed_sqrt)
    H = torch.tensor([3.0, 4.0]).view(1, 1, 1, 2)
    e = torch.tensor([1.0, 0.0]).view(1, 1, 2)
    s = 1.2 / math.sqrt(2)
    s = math.copysign(math.sqrt(abs(s)), s) if signed_sqrt else s
    alpha = 1 / (1 + math.exp(-s))
    seen = {}
    r.hook_gate.register_forward_hook(lambda m, i, o: seen.setdefault("alpha", o))
    y = r(H, e, None)
    assert seen["alpha"].item() == pytest.approx(alpha, abs=1e-5)
    # conv is zero at init, so Y = alpha * v with v = W_V e = (2, 0)  (eq. 5)
    torch.testing.assert_close(y.view(2), torch.tensor([2 * alpha, 0.0]), atol=1e-5, rtol=0)


def test_conv_zero_init_output_equals_gated_value(tiny_parts):
    from engram_core import EngramLM
    from tests.conftest import tiny_config

    tok, comp, pad = tiny_parts
    model = EngramLM(tiny_config(tok.get_vocab_size(), comp.size, pad), comp.table).eval()
    _, cache = model.run_with_cache(ids_for(model))
    for layer in (0, 1):
        p = f"blocks.{layer}.engram.readout."
        gated = cache[p + "hook_gate"].unsqueeze(-1) * cache[p + "hook_value"].unsqueeze(2)
        torch.testing.assert_close(cache[p + "hook_out"], gated)


def test_shifted_conv_matches_conv1d():
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(2, 30, 6, generator=g), torch.randn(6, 4, generator=g)
    ref = torch.nn.functional.conv1d(
        torch.nn.functional.pad(x.transpose(1, 2), (9, 0)), w.flip(-1).unsqueeze(1), dilation=3, groups=6
    ).transpose(1, 2)
    torch.testing.assert_close(causal_dilated_conv(x, w, 3), ref, atol=1e-5, rtol=1e-5)


def test_causal_through_hashing_and_conv(tiny_model):
    ids = ids_for(tiny_model)
    t = 20
    other = ids.clone()
    other[:, t + 1] = (other[:, t + 1] + 7) % tiny_model.cfg.backbone.vocab_size
    la, ca = tiny_model.run_with_cache(ids)
    lb, cb = tiny_model.run_with_cache(other)
    torch.testing.assert_close(la[:, : t + 1], lb[:, : t + 1])
    for name in (
        "blocks.1.engram.hook_hash_ids",
        "blocks.1.engram.readout.hook_gate",
        "blocks.1.engram.readout.hook_out",
    ):
        torch.testing.assert_close(ca[name][:, : t + 1], cb[name][:, : t + 1])
    assert not torch.equal(ca["blocks.1.engram.hook_hash_ids"][:, t + 1], cb["blocks.1.engram.hook_hash_ids"][:, t + 1])
    assert not torch.allclose(la[:, t + 1], lb[:, t + 1])


def test_full_knockout_equals_zeroed_outputs(tiny_model):
    ids = ids_for(tiny_model)
    handles = [
        tiny_model.get_submodule(f"blocks.{i}.engram.readout.hook_out").register_forward_hook(
            lambda m, i, o: torch.zeros_like(o)
        )
        for i in (0, 1)
    ]
    with torch.no_grad():
        zeroed = tiny_model(ids)
    for h in handles:
        h.remove()
    with torch.no_grad():
        off = tiny_model(ids, knockout=KnockOut(all=True))
        on = tiny_model(ids)
        layers = tiny_model(ids, knockout=KnockOut(layers={0, 1}))
    torch.testing.assert_close(off, zeroed, rtol=0, atol=0)
    torch.testing.assert_close(layers, zeroed, rtol=0, atol=0)
    assert (on - off).abs().max() > 1e-3


def test_all_orders_off_equals_all_off(tiny_model):
    """Zero rows give v = 0, so the module's output vanishes exactly (no biases anywhere)."""
    ids = ids_for(tiny_model)
    with torch.no_grad():
        off = tiny_model(ids, knockout=KnockOut(all=True))
        orders = tiny_model(ids, knockout=KnockOut(orders={2, 3}))
        heads = tiny_model(
            ids, knockout=KnockOut(heads={(layer, n, k) for layer in (0, 1) for n in (2, 3) for k in (0, 1)})
        )
        branches = tiny_model(ids, knockout=KnockOut(branches={0, 1}))
    torch.testing.assert_close(orders, off, rtol=0, atol=1e-6)
    torch.testing.assert_close(heads, off, rtol=0, atol=1e-6)
    torch.testing.assert_close(branches, off, rtol=0, atol=1e-6)


def test_branch_knockout_zeroes_that_gate(tiny_model):
    _, cache = tiny_model.run_with_cache(ids_for(tiny_model), knockout=KnockOut(branches={1}))
    gate = cache["blocks.0.engram.readout.hook_gate"]
    assert torch.all(gate[..., 1] == 0) and torch.all(gate[..., 0] > 0)


def test_row_knockout_changes_only_positions_reading_that_row(tiny_model):
    ids = ids_for(tiny_model, n=48)
    _, base = tiny_model.run_with_cache(ids)
    rows = base["blocks.1.engram.hook_hash_ids"]  # (B, T, H)
    b, t, head = 0, 30, 3  # head 3 is order 3, head 1 (2 heads per order)
    row = int(rows[b, t, head])
    readers = rows[..., head] == row  # every position that reads that row on that head
    logits, cache = tiny_model.run_with_cache(ids, knockout=KnockOut(rows={(1, 3, 1, row)}))
    got = cache["blocks.1.engram.hook_rows"]
    assert torch.all(got[readers][:, head] == 0)
    torch.testing.assert_close(got[~readers], base["blocks.1.engram.hook_rows"][~readers], rtol=0, atol=0)
    other_heads = [h for h in range(rows.shape[-1]) if h != head]
    torch.testing.assert_close(got[..., other_heads, :], base["blocks.1.engram.hook_rows"][..., other_heads, :])
    first = int(readers[b].nonzero()[0])
    base_logits = base["hook_logits"]
    torch.testing.assert_close(logits[b, :first], base_logits[b, :first], rtol=0, atol=0)
    assert not torch.allclose(logits[b, first], base_logits[b, first])
    torch.testing.assert_close(cache["blocks.0.engram.hook_rows"], base["blocks.0.engram.hook_rows"])


def test_run_with_cache_subset_and_unknown(tiny_model):
    ids = ids_for(tiny_model)
    logits, cache = tiny_model.run_with_cache(ids, names=["blocks.0.engram.readout.hook_gate"])
    assert list(cache) == ["blocks.0.engram.readout.hook_gate"]
    assert torch.all(
        (cache["blocks.0.engram.readout.hook_gate"] > 0) & (cache["blocks.0.engram.readout.hook_gate"] < 1)
    )
    with pytest.raises(KeyError, match="no such hooks"):
        tiny_model.run_with_cache(ids, names=["blocks.9.hook_nope"])
    assert tiny_model.hook_names() == HOOKS  # no hook left registered


def test_baseline_has_no_memory(tiny_parts):
    from dataclasses import replace

    from engram_core import EngramLM
    from tests.conftest import tiny_config

    tok, comp, pad = tiny_parts
    cfg = replace(tiny_config(tok.get_vocab_size(), comp.size, pad), memory=None)
    model = EngramLM(cfg, comp.table).eval()
    assert model.param_counts()["tables"] == 0
    assert not any(".engram." in n for n in model.hook_names())
    with pytest.raises(ValueError, match="no Engram memory"):  # a mask of nothing is a mistake, not a no-op
        model(ids_for(model), knockout=KnockOut(all=True))


def test_plain_residual_with_one_branch(tiny_parts):
    from dataclasses import replace

    from engram_core import EngramLM
    from tests.conftest import tiny_config

    tok, comp, pad = tiny_parts
    cfg = tiny_config(tok.get_vocab_size(), comp.size, pad)
    cfg = replace(cfg, backbone=replace(cfg.backbone, n_branches=1))
    model = EngramLM(cfg, comp.table).eval()
    assert not any("phi" in n for n, _ in model.named_parameters())
    _, cache = model.run_with_cache(ids_for(model))
    assert cache["blocks.0.engram.readout.hook_gate"].shape[-1] == 1


def test_sinkhorn_doubly_stochastic():
    from engram_core.layers import sinkhorn

    p = sinkhorn(torch.randn(5, 4, 4, generator=torch.Generator().manual_seed(0)), 20)
    torch.testing.assert_close(p.sum(-1), torch.ones(5, 4), atol=1e-3, rtol=0)
    torch.testing.assert_close(p.sum(-2), torch.ones(5, 4), atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    "bad, match",
    [
        (torch.tensor([[0, 10_000]]), "must lie in"),
        (torch.tensor([[-1, 2]]), "must lie in"),
        (torch.zeros(1, 65, dtype=torch.long), "exceed the context"),
        (torch.zeros(1, 3), "integer tensor"),
        (torch.zeros(1, 2, 3, dtype=torch.long), "integer tensor"),
    ],
)
def test_bad_ids_clear_errors(tiny_model, bad, match):
    with pytest.raises(ValueError, match=match):
        tiny_model(bad)


def test_empty_and_one_token(tiny_model):
    with torch.no_grad():
        assert tuple(tiny_model(torch.zeros(1, 0, dtype=torch.long)).shape) == (
            1,
            0,
            tiny_model.cfg.backbone.vocab_size,
        )
        one = tiny_model(torch.tensor([[5]]))
        assert torch.isfinite(one).all()
        two = tiny_model(torch.tensor([[5, 6]]))
    torch.testing.assert_close(one[0, 0], two[0, 0], atol=1e-5, rtol=1e-5)


def test_forward_long_sliding_windows(tiny_model):
    C = tiny_model.cfg.backbone.block_size  # 64
    ids = torch.randint(0, tiny_model.cfg.backbone.vocab_size, (1, 150), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        long = tiny_model.forward_long(ids)
        first = tiny_model(ids[:, :C])
        short = tiny_model(ids[:, :40])
        rows = tiny_model.hash_rows(ids)
        # position 100 is served by the window starting at 64 (stride 32: windows 0, 32, 64, 86)
        win = tiny_model(ids[:, 64:128], rows={k: v[:, 64:128] for k, v in rows.items()})
    assert long.shape == (1, 150, tiny_model.cfg.backbone.vocab_size)
    torch.testing.assert_close(long[:, :C], first)
    torch.testing.assert_close(long[:, 100], win[:, 100 - 64])
    torch.testing.assert_close(tiny_model.forward_long(ids[:, :40]), short)
