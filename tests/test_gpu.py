"""The model on CUDA: hashing on the CPU, rows on the model's device, same numbers as on the CPU.

These tests need a GPU and skip without one (`torch.cuda.is_available()` is False).
"""

import pytest
import torch

from engram_core import KnockOut
from engram_core.hashing import hash_all

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def ids_for(model, n=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, model.cfg.backbone.vocab_size, (2, n), generator=g)


@cuda
def test_hash_of_cuda_ids_is_on_cuda_and_equal(tiny_model):
    spec = tiny_model.cfg.memory.hash_spec
    cids = tiny_model.compression[ids_for(tiny_model)]
    cpu = hash_all(cids, spec)
    gpu = hash_all(cids.cuda(), spec)
    for layer in spec.layer_ids:
        assert gpu[layer].device.type == "cuda"
        assert torch.equal(gpu[layer].cpu(), cpu[layer])


@cuda
def test_model_on_cuda_matches_cpu(tiny_model):
    ids = ids_for(tiny_model, n=150)  # longer than the context of 64: sliding windows
    ko = KnockOut(heads={(1, 3, 1)}, branches={0})
    with torch.no_grad():
        want = tiny_model(ids[:, :64], knockout=ko)
        want_long, want_cache = tiny_model.run_with_cache_long(ids, ko)
    tiny_model.cuda()
    try:
        with torch.no_grad():
            got = tiny_model(ids[:, :64].cuda(), knockout=ko)
            got_cpu_ids = tiny_model(ids[:, :64], knockout=ko)  # CPU ids are moved to the model
            got_long, got_cache = tiny_model.run_with_cache_long(ids.cuda(), ko)
        assert got.device.type == "cuda"
        torch.testing.assert_close(got.cpu(), want, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(got_cpu_ids.cpu(), want, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(got_long.cpu(), want_long, atol=1e-4, rtol=1e-4)
        name = "blocks.1.engram.hook_hash_ids"
        assert got_cache[name].device.type == "cuda" and torch.equal(got_cache[name].cpu(), want_cache[name])
    finally:
        tiny_model.cpu()


@cuda
def test_generation_on_cuda_matches_cpu(tiny_model):
    prompt = ids_for(tiny_model, n=10)[0].tolist()
    want = tiny_model.generate(prompt, 12)
    tiny_model.cuda()
    try:
        got = tiny_model.generate(prompt, 12, knockout=KnockOut(layers={1}))
        assert got.device.type == "cuda"
        assert tiny_model.generate(prompt, 12).cpu().tolist() == want.tolist()
    finally:
        tiny_model.cpu()


@cuda
def test_loss_on_cuda_with_cpu_batches(tiny_model):
    ids = ids_for(tiny_model, n=33)
    want = float(tiny_model.loss(ids[:, :-1], ids[:, 1:]))
    tiny_model.cuda()
    try:
        got = tiny_model.loss(ids[:, :-1], ids[:, 1:])  # batches sampled on the CPU, as in training
        assert got.device.type == "cuda" and abs(float(got) - want) < 1e-4
    finally:
        tiny_model.cpu()


@cuda
def test_capture_on_cuda_matches_cpu(tiny_model, tiny_tokenizer):
    """A capture reads CUDA activations through `on_cpu`: same rows, and gates and logits to float noise."""
    import numpy as np

    from engram_core import Checkpoint
    from engram_inspect.text.capture import capture

    ck = Checkpoint(model=tiny_model, tokenizer=tiny_tokenizer, meta={})
    text = "To be, or not to be, that is the question."
    want = capture(ck, text, mask=KnockOut(layers={1}), top_k=3)
    tiny_model.cuda()
    try:
        got = capture(ck, text, mask=KnockOut(layers={1}), top_k=3)
    finally:
        tiny_model.cpu()
    assert np.array_equal(got.hash_rows, want.hash_rows) and np.array_equal(got.compressed_ids, want.compressed_ids)
    for name in ("gate", "gate_score", "out_norm", "kl", "lens_kl_on", "lens_kl_off", "masked_logprob_next"):
        np.testing.assert_allclose(getattr(got, name), getattr(want, name), atol=1e-4, rtol=1e-4, equal_nan=True)
