"""The training path against the frozen pre-speed implementation (bench/baseline_impl.py):
same weights, same ids, same logits, loss and gradients."""

from dataclasses import replace

import pytest
import torch

from bench.baseline_impl import BaselineLM
from engram_core import EngramLM
from engram_core.train import compile_dense
from tests.conftest import tiny_config


def twins(parts):
    tok, comp, pad = parts
    cfg = tiny_config(tok.get_vocab_size(), comp.size, pad)
    cfg = replace(cfg, backbone=replace(cfg.backbone, sinkhorn_tol=0.0))  # the baseline's 20 fixed steps
    torch.manual_seed(0)
    new = EngramLM(cfg, comp.table)
    with torch.no_grad():
        for block in new.blocks:
            if block.engram is not None:
                block.engram.readout.conv.normal_(0, 0.3)  # zero at init: give the conv a say
    old = BaselineLM(cfg, comp.table)
    old.load_state_dict(new.state_dict())
    return new, old


def batch(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, model.cfg.backbone.vocab_size, (3, 65), generator=g)
    return x[:, :-1], x[:, 1:]


def test_forward_loss_and_grads_match_baseline(tiny_parts):
    new, old = twins(tiny_parts)
    x, y = batch(new)
    torch.testing.assert_close(new(x), old(x), rtol=1e-5, atol=1e-5)
    ln, lo = new.loss(x, y), old.loss(x, y)
    torch.testing.assert_close(ln, lo, rtol=1e-6, atol=1e-6)
    ln.backward()
    lo.backward()
    grads_old = dict(old.named_parameters())
    for name, p in new.named_parameters():
        q = grads_old[name]
        a, b = (g.to_dense() if g.is_sparse else g for g in (p.grad, q.grad))
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6, msg=name)


def test_precomputed_rows_give_the_same_loss(tiny_parts):
    new, _ = twins(tiny_parts)
    x, y = batch(new, seed=1)
    torch.testing.assert_close(new.loss(x, y, rows=new.hash_rows(x)), new.loss(x, y), rtol=0, atol=0)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["sublayers"])  # the default; "blocks" checked the same way once, 58 s
def test_compiled_step_matches_eager(tiny_parts, mode):
    """`compile_dense` changes where the graph boundaries are, not what is computed."""
    new, _ = twins(tiny_parts)
    x, y = batch(new, seed=2)
    eager = new.loss(x, y)
    eager.backward()
    want = {n: p.grad.to_dense().clone() for n, p in new.named_parameters()}
    new.zero_grad(set_to_none=True)
    compile_dense(new, mode)
    got = new.loss(x, y)
    got.backward()
    torch.testing.assert_close(got, eager, rtol=1e-5, atol=1e-5)
    for n, p in new.named_parameters():
        torch.testing.assert_close(p.grad.to_dense(), want[n], rtol=1e-3, atol=1e-5, msg=n)
