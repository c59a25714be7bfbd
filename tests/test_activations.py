"""The one capture path: hooks over token ids, early stop, batching, and the logit lens against a direct loop."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from engram_core import KnockOut
from engram_inspect.base.activations import GATE, HASH_IDS, activations, lens_kl, memory_names, resid_names


@pytest.fixture(scope="module")
def model(tiny_parts):
    from tests.conftest import make_tiny_model

    return make_tiny_model(tiny_parts)


@pytest.fixture(scope="module")
def ids(model):
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, model.cfg.backbone.vocab_size, (5, 40), generator=g)


def test_names(model):
    assert memory_names([0, 1], (HASH_IDS, GATE)) == [
        "blocks.0.engram.hook_hash_ids",
        "blocks.0.engram.readout.hook_gate",
        "blocks.1.engram.hook_hash_ids",
        "blocks.1.engram.readout.hook_gate",
    ]
    assert resid_names(model) == [f"blocks.{i}.hook_resid_post" for i in range(3)]
    assert set(memory_names(model.engram_layers, (HASH_IDS, GATE)) + resid_names(model)) <= set(model.hook_names())


def test_early_stop_and_batches_match_one_full_pass(model, ids):
    names = memory_names(model.engram_layers, (HASH_IDS, GATE))
    full_logits, full = model.run_with_cache(ids, KnockOut(branches={1}), names=names)
    none, early = activations(model, ids, names, KnockOut(branches={1}), logits=False)
    assert none is None and sorted(early) == sorted(names)
    for n in names:
        assert torch.equal(early[n], full[n]), n
    logits, batched = activations(model, ids, names, KnockOut(branches={1}), batch=2)
    torch.testing.assert_close(logits, full_logits, rtol=1e-6, atol=1e-6)
    for n in names:
        torch.testing.assert_close(batched[n], full[n], rtol=1e-6, atol=1e-6)
    # a residual hook needs the whole pass: no early stop then
    _, res = activations(model, ids, resid_names(model)[:1], logits=False)
    assert res[resid_names(model)[0]].shape[:2] == ids.shape


def test_lens_against_a_direct_loop(model, ids):
    logits, cache = activations(model, ids, resid_names(model))
    final = F.log_softmax(logits, -1)
    got = lens_kl(model, cache, final)
    assert got.shape == (3, *ids.shape)
    assert torch.equal(got[-1], torch.zeros_like(got[-1]))  # the last block's prediction is the final one
    W = model.wte.weight.detach()
    for b in range(2):
        h = cache[f"blocks.{b}.hook_resid_post"]
        for i, t in [(0, 0), (3, 17), (4, 39)]:
            x = h[i, t].mean(0)  # mean over branches: (D,)
            p = F.log_softmax(model.norm(x[None])[0] @ W.T, -1)
            q = final[i, t]
            want = float(sum(np.exp(p[v].item()) * (p[v].item() - q[v].item()) for v in range(len(p))))
            assert abs(got[b, i, t].item() - want) < 1e-5 and want > 0


def test_precomputed_rows_are_what_the_model_reads(model, ids):
    """Rows hashed ahead (e.g. from a longer stream) replace the window's own hashes, early stop or not."""
    names = memory_names(model.engram_layers)
    own = activations(model, ids, names, logits=False)[1]
    same = activations(model, ids, names, logits=False, rows=model.hash_rows(ids))[1]
    for n in names:
        torch.testing.assert_close(same[n], own[n], rtol=0, atol=0)
    shifted = {L: (r + 1) % 31 for L, r in model.hash_rows(ids).items()}  # other rows: other gates
    for logits in (False, True):
        moved = activations(model, ids, names, logits=logits, rows=shifted)[1]
        gate = [n for n in names if n.endswith("hook_gate")][0]
        assert not torch.equal(moved[gate], own[gate])
    with pytest.raises(ValueError, match="precomputed rows"):
        activations(model, ids, names, rows=shifted, batch=1)
