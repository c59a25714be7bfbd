"""Captures and knock-out diffs, checked against the model's own hooks and forward passes."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from engram_core import Checkpoint, KnockOut
from engram_core.tokenizer import encode
from engram_inspect.text.capture import capture
from engram_inspect.text.diff import diff_traces, knockout_diff

TEXT = "To be, or not to be, that is the question. I pray you, my lord."
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture()
def ck(tiny_model, tiny_tokenizer):
    return Checkpoint(model=tiny_model, tokenizer=tiny_tokenizer, meta={})


def test_trace_matches_model_hooks(ck):
    tr = capture(ck, TEXT, top_k=3)
    ids = torch.tensor([encode(ck.tokenizer, TEXT)[0]])
    logits, cache = ck.model.run_with_cache(ids)
    for i, layer in enumerate(tr.layers):
        np.testing.assert_array_equal(tr.hash_rows[i], cache[f"blocks.{layer}.engram.hook_hash_ids"][0].numpy())
        np.testing.assert_array_equal(tr.gate[i], cache[f"blocks.{layer}.engram.readout.hook_gate"][0].numpy())
    logp = F.log_softmax(logits[0], -1)
    np.testing.assert_allclose(tr.logprob_next[:-1], logp[:-1].gather(1, ids[0, 1:, None])[:, 0].numpy(), rtol=1e-6)
    assert np.isnan(tr.logprob_next[-1])
    np.testing.assert_array_equal(tr.topk_ids, logp.topk(3).indices.numpy())
    assert tr.tokens[:2] == [ck.tokenizer.decode([int(ids[0, 0])]), ck.tokenizer.decode([int(ids[0, 1])])]
    assert TEXT[tr.offsets[3, 0] : tr.offsets[3, 1]] == tr.tokens[3]
    # the order-3 N-gram at position 2 is tokens 0..2, and its text is theirs
    np.testing.assert_array_equal(tr.ngram_ids[1, 2], tr.compressed_ids[:3])
    assert tr.ngram_text[1][2] == "".join(tr.tokens[:3])
    assert tr.ngram_text[1][0].startswith("\u2400\u2400")  # two pad positions before the start


def test_masked_predictions_equal_knocked_out_forward(ck):
    tr = capture(ck, TEXT, mask=KnockOut(layers={1}))
    ids = torch.tensor([encode(ck.tokenizer, TEXT)[0]])
    with torch.no_grad():
        logp_on = F.log_softmax(ck.model(ids)[0], -1)
        logp_m = F.log_softmax(ck.model(ids, knockout=KnockOut(layers={1}))[0], -1)
    np.testing.assert_allclose(
        tr.masked_logprob_next[:-1], logp_m[:-1].gather(1, ids[0, 1:, None])[:, 0].numpy(), rtol=1e-6
    )
    kl = (logp_on.exp() * (logp_on - logp_m)).sum(-1)
    np.testing.assert_allclose(tr.kl, kl.numpy(), rtol=1e-5, atol=1e-7)
    assert tr.mask == KnockOut(layers={1})


def test_logit_lens_last_block_is_final(ck):
    tr = capture(ck, TEXT)
    assert tr.lens_kl_on.shape == (ck.model.cfg.backbone.n_layer, tr.n_tokens)
    np.testing.assert_allclose(tr.lens_kl_on[-1], 0.0, atol=1e-5)
    np.testing.assert_allclose(tr.lens_kl_off[-1], 0.0, atol=1e-5)
    assert (tr.lens_kl_on[:-1] > 0).all()
    assert not np.allclose(tr.lens_kl_on[0], tr.lens_kl_off[0])  # memory changes early layers


def test_long_text_by_sliding_windows(ck):
    text = TEXT * 12
    ids = torch.tensor([encode(ck.tokenizer, text)[0]])
    assert ids.shape[1] > ck.model.cfg.backbone.block_size
    tr = capture(ck, text)
    logp = F.log_softmax(ck.model.forward_long(ids)[0], -1)
    np.testing.assert_allclose(tr.logprob_next[:-1], logp[:-1].gather(1, ids[0, 1:, None])[:, 0].numpy(), rtol=1e-5)
    assert tr.hash_rows.shape[1] == ids.shape[1]


def test_empty_and_memoryless(ck, tiny_parts):
    for text in ("",):
        with pytest.raises(ValueError, match="empty"):
            capture(ck, text)
    one = capture(ck, "a")
    assert one.n_tokens == 1 and np.isnan(one.logprob_next).all()
    weird = capture(ck, "  \x00 😀 日本 שלום \ud800")
    assert weird.n_tokens > 5


def test_diff_with_empty_mask_is_zero(ck):
    d = knockout_diff(capture(ck, TEXT, mask=KnockOut()))
    np.testing.assert_array_equal(d.delta_logprob[:-1], 0.0)
    np.testing.assert_array_equal(d.kl, 0.0)
    assert d.mean_loss_change == 0.0 and d.biggest_losses == [] and not d.top1_changed.any()
    assert (d.topk_overlap == 5).all()


def test_diff_with_everything_off(ck):
    tr = capture(ck, TEXT, mask=KnockOut(all=True))
    d = knockout_diff(tr, top_n=4)
    delta = tr.masked_logprob_next[:-1] - tr.logprob_next[:-1]
    assert d.mean_loss_change == pytest.approx(float(-delta.mean()), rel=1e-6)
    worst = np.argsort(delta)[:4]
    assert [x.position for x in d.biggest_losses] == [int(t) for t in worst if delta[t] < 0]
    assert all(a.delta_logprob <= b.delta_logprob for a, b in zip(d.biggest_losses, d.biggest_losses[1:]))
    assert d.biggest_losses[0].target == tr.tokens[d.biggest_losses[0].position + 1]
    assert d.mean_kl > 0


def test_diff_of_two_traces(ck):
    on = capture(ck, TEXT, mask=KnockOut())
    off = capture(ck, TEXT, mask=KnockOut(orders={3}))
    d = diff_traces(on, off)
    np.testing.assert_allclose(d.delta_logprob, off.masked_logprob_next - on.logprob_next)
    np.testing.assert_array_equal(d.kl, off.kl)
    with pytest.raises(ValueError, match="same text"):
        diff_traces(on, capture(ck, TEXT + "!"))


@pytest.mark.slow
def test_same_trace_across_processes():
    """A fresh process (its own hash seed, allocator and thread pool) gives this process's trace, bit for bit."""
    code = (
        "import json, sys, hashlib, numpy as np\n"
        "from engram_core import load_checkpoint\n"
        "from engram_inspect.text.capture import capture\n"
        "tr = capture(load_checkpoint('assets/default-model'), 'Good night, sweet prince: def __init__(self):')\n"
        "out = {k: hashlib.sha256(np.ascontiguousarray(v).tobytes()).hexdigest() for k, v in vars(tr).items()"
        " if isinstance(v, np.ndarray)}\n"
        "print(json.dumps(out, sort_keys=True))\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    a = json.loads(run.stdout)
    import hashlib

    from engram_core import load_checkpoint

    tr = capture(load_checkpoint(ROOT / "assets" / "default-model"), "Good night, sweet prince: def __init__(self):")
    b = {
        k: hashlib.sha256(np.ascontiguousarray(v).tobytes()).hexdigest()
        for k, v in vars(tr).items()
        if isinstance(v, np.ndarray)
    }
    assert len(a) > 15 and a == b


def test_http_summaries_are_plain_json(ck):
    """engram_inspect.text.summary builds what /trace and /knockout return: JSON types only, NaN as None."""
    from engram_inspect.text.summary import knockout_summary, trace_summary

    tr = capture(ck, TEXT, mask=KnockOut(layers={1}))
    s, k = trace_summary(tr), knockout_summary(tr)
    assert json.loads(json.dumps(s, allow_nan=False)) == s and json.loads(json.dumps(k, allow_nan=False)) == k
    assert s["mask"] == k["mask"] == "layer=1"
    assert s["logprob_next"][-1] is None and s["logprob_next"][0] == round(float(tr.logprob_next[0]), 6)
    assert s["gate_mean"][2] == round(float(tr.gate[:, 2].mean()), 6)
    assert k["delta_logprob"][:-1] == [round(float(x), 6) for x in tr.masked_logprob_next[:-1] - tr.logprob_next[:-1]]
    assert len(s["hash_rows"]) == len(tr.layers) and len(s["lens_kl_on"]) == ck.model.cfg.backbone.n_layer
