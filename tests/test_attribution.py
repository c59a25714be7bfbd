"""Attribution of a prediction to memory reads, against full forward passes and finite differences."""

from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from engram_core import Checkpoint, KnockOut
from engram_core.tokenizer import encode
from engram_inspect.memory.ablation import row_sources
from engram_inspect.memory.collisions import build_collision_index
from engram_inspect.text.attribution import approx_deltas, attribute, conv_reach, exact_deltas
from engram_inspect.text.capture import PAD_TEXT

TEXT = "To be, or not to be, that is the question. I pray you, my lord, let me know not."


@pytest.fixture()
def ck(tiny_model, tiny_tokenizer):
    return Checkpoint(model=tiny_model, tokenizer=tiny_tokenizer, meta={})


def _logp(model, ids, p, **kw):
    with torch.no_grad():
        return F.log_softmax(model(torch.tensor([ids]), **kw)[0, p].double(), -1)[ids[p + 1]].item()


def test_conv_reach_by_hand():
    assert conv_reach(10, 4, 3) == [10, 7, 4, 1]
    assert conv_reach(5, 4, 3) == [5, 2]
    assert conv_reach(0, 4, 2) == [0]


@pytest.mark.parametrize("how", [KnockOut(), KnockOut(mode="mean"), KnockOut(mode="resample", samples=2, seed=3)])
def test_exact_removal_equals_one_row_knockout(ck, how):
    """A row read only once up to p: knocking that row out everywhere removes exactly that read,
    in every mode (the same replacement rows, the same resampling draws)."""
    model, mem = ck.model, ck.model.cfg.memory
    stream = np.asarray(encode(ck.tokenizer, TEXT * 3)[0])
    model.install_row_source(row_sources(ck, build_collision_index(ck, [stream]), pool=32))
    ids, _ = encode(ck.tokenizer, TEXT)
    p = len(ids) - 4
    reads, deltas = exact_deltas(ck, ids, p, how)
    assert len(reads) == len(mem.layer_ids) * mem.heads_per_layer * len(conv_reach(p, 4, mem.max_ngram))
    rows = model.hash_rows(torch.tensor([ids]))
    base = _logp(model, ids, p)
    checked = 0
    for (L, h, q), d in zip(reads, deltas, strict=True):
        seen = rows[L][0, : p + 1, h]
        r = int(seen[q])
        if int((seen == r).sum()) != 1:
            continue  # the row is read elsewhere too: its knock-out removes more than this read
        order, head = 2 + h // mem.heads_per_ngram, h % mem.heads_per_ngram
        ko = replace(how, rows={(L, order, head, r)})
        assert d == pytest.approx(_logp(model, ids[: p + 2], p, knockout=ko) - base, abs=2e-5)
        checked += 1
    assert checked >= 5
    assert np.abs(deltas).max() > 1e-3  # the tiny model's memory does matter


def test_exact_on_a_text_past_the_context(ck):
    """Past the context, the window is the last block_size tokens ending at p, rows hashed on the whole text."""
    model = ck.model
    ids, _ = encode(ck.tokenizer, TEXT * 4)
    C = model.cfg.backbone.block_size
    p = C + 20
    assert len(ids) > p + 1
    reads, deltas = exact_deltas(ck, ids, p)
    rows = {k: v[:, p + 1 - C : p + 1] for k, v in model.hash_rows(torch.tensor([ids])).items()}
    window = ids[p + 1 - C : p + 1] + [ids[p + 1]]
    base = _logp_rows(model, window, rows)
    for i in (0, 7, len(reads) - 1):
        L, h, q = reads[i]
        assert p - 9 <= q <= p
        hook = model.blocks[L].engram.hook_rows.register_forward_hook(_zero_read(q - (p + 1 - C), h))
        try:
            removed = _logp_rows(model, window, rows)
        finally:
            hook.remove()
        assert deltas[i] == pytest.approx(removed - base, abs=2e-5)


def _logp_rows(model, window, rows):
    with torch.no_grad():
        logits = model(torch.tensor([window[:-1]]), rows=rows)
    return F.log_softmax(logits[0, -1].double(), -1)[window[-1]].item()


def _zero_read(q, h, scale=0.0):
    def hook(_m, _i, out):
        out = out.clone()
        out[:, q, h] = out[:, q, h] * scale
        return out

    return hook


def test_zeroed_memory_gives_zero_attributions(ck):
    with torch.no_grad():
        for b in ck.model.blocks:
            if b.engram is not None:
                b.engram.table.weight.zero_()
    for method in ("exact", "approx"):
        recs = attribute(ck, TEXT, 12, method=method)
        assert recs and all(r["delta_logprob"] == 0.0 for r in recs)


def test_approx_agrees_with_finite_differences(ck):
    """Scaling one read by 1 - eps changes log p by eps times the gradient x input estimate, as eps -> 0."""
    model = ck.model.double()
    ids, _ = encode(ck.tokenizer, TEXT)
    p = 15
    reads, approx = approx_deltas(ck, ids, p)
    base = _logp(model, ids, p)
    for i in (0, 3, 20, len(reads) - 1):
        L, h, q = reads[i]
        errors = []
        for eps in (1e-2, 1e-3, 1e-4):
            hook = model.blocks[L].engram.hook_rows.register_forward_hook(_zero_read(q, h, 1 - eps))
            try:
                fd = (_logp(model, ids, p) - base) / eps
            finally:
                hook.remove()
            errors.append(abs(fd - approx[i]))
        assert errors[-1] <= 1e-3 * max(1.0, abs(approx[i])) + 1e-7
        assert errors[-1] <= errors[0] + 1e-9


def test_approx_covers_every_read_up_to_p(ck):
    mem = ck.model.cfg.memory
    ids, _ = encode(ck.tokenizer, TEXT)
    reads, deltas = approx_deltas(ck, ids, 9)
    assert len(reads) == len(set(reads)) == len(mem.layer_ids) * mem.heads_per_layer * 10
    assert {q for _, _, q in reads} == set(range(10))
    # a read after its own position's neighbours still acts through attention, so it is not all zero
    assert np.abs(deltas).sum() > 0


def test_records_name_the_row_and_ngram(ck):
    ids, _ = encode(ck.tokenizer, TEXT)
    recs = attribute(ck, TEXT, 10)
    rows = ck.model.hash_rows(torch.tensor([ids]))
    hpo = ck.model.cfg.memory.heads_per_ngram
    for r in recs:
        h = (r["order"] - 2) * hpo + r["head"]
        assert r["row"] == int(rows[r["layer"]][0, r["position_read"], h])
        q = r["position_read"]
        lo = q - r["order"] + 1
        assert r["ngram"] == PAD_TEXT * max(0, -lo) + ck.tokenizer.decode(ids[max(0, lo) : q + 1])
    mags = [abs(r["delta_logprob"]) for r in recs]
    assert mags == sorted(mags, reverse=True)


@pytest.mark.parametrize(
    ("text", "position", "method", "message"),
    [
        ("", 0, "exact", "empty"),
        ("To", 0, "exact", "one token"),
        (TEXT, 500, "exact", "no next token"),
        (TEXT, -1, "approx", "no next token"),
        (TEXT, 2, "saliency", "unknown attribution method"),
        (TEXT, 2.5, "exact", "integer"),
    ],
)
def test_bad_input_is_one_clear_error(ck, text, position, method, message):
    with pytest.raises(ValueError, match=message):
        attribute(ck, text, position, method=method)


def test_cli_json_equals_python(tmp_path, tiny_model, tiny_tokenizer, capsys):
    import json

    from engram_core import load_checkpoint, save_checkpoint
    from engram_inspect.commands import main

    ckdir = str(save_checkpoint(tmp_path / "ck", tiny_model, tiny_tokenizer))
    for mode in ("exact", "approx"):
        assert main(["attribute", TEXT, "--position", "11", "--mode", mode, "--json", "--checkpoint", ckdir]) == 0
        got = json.loads(capsys.readouterr().out)
        assert got == attribute(load_checkpoint(ckdir), TEXT, 11, method=mode)
    assert main(["attribute", TEXT, "--position", "11", "--top", "3", "--checkpoint", ckdir]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 4
    assert main(["attribute", "To", "--position", "0", "--checkpoint", ckdir]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "no next token" in err[-1] and "Traceback" not in "".join(err)


def test_approx_under_resample_is_the_mean_of_its_runs(ck):
    """Once a crash: resampled rows come from the table, a parameter, and carried its graph."""
    stream = np.asarray(encode(ck.tokenizer, TEXT * 3)[0])
    ck.model.install_row_source(row_sources(ck, build_collision_index(ck, [stream]), pool=32))
    ids, _ = encode(ck.tokenizer, TEXT)
    p = 15
    reads, two = approx_deltas(ck, ids, p, KnockOut(mode="resample", samples=2, seed=3))
    _, a = approx_deltas(ck, ids, p, KnockOut(mode="resample", seed=3))
    _, b = approx_deltas(ck, ids, p, KnockOut(mode="resample", seed=4))
    np.testing.assert_allclose(two, (a + b) / 2, atol=1e-6)  # first order: linear in the replacement
    _, zero = approx_deltas(ck, ids, p)
    assert len(two) == len(reads) and not np.allclose(a, zero, atol=1e-4)
