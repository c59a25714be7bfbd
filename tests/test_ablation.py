"""Knock-out modes zero, mean and resample: hand cases, oracles and determinism across processes."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from engram_core import Checkpoint, KnockOut
from engram_core.ablation import RowSource, resampled_rows
from engram_core.knockout import format_knockout, parse_knockout
from engram_core.tokenizer import encode
from engram_inspect.memory.ablation import install, load_sources, row_sources, save_sources
from engram_inspect.memory.collisions import build_collision_index

ROOT = Path(__file__).resolve().parent.parent
TEXT = "To be, or not to be, that is the question. I pray you, my lord, let me know not."
CORPUS = "def __init__(self, value):\n    self.value = value\nI pray you, my lord, let me know not. " * 5


@pytest.fixture()
def ck(tiny_model, tiny_tokenizer):
    ck = Checkpoint(model=tiny_model, tokenizer=tiny_tokenizer, meta={})
    stream = np.asarray(encode(tiny_tokenizer, CORPUS)[0])
    ck.model.install_row_source(row_sources(ck, build_collision_index(ck, [stream]), pool=64))
    return ck


def _logits(ck, ko=KnockOut(), text=TEXT):
    with torch.no_grad():
        return ck.model(torch.tensor([encode(ck.tokenizer, text)[0]]), knockout=ko)


def test_parse_and_format_round_trip_with_mode():
    ko = parse_knockout("layer=1,head=2:3:0,mode=resample,samples=4,seed=7")
    assert (ko.mode, ko.samples, ko.seed) == ("resample", 4, 7)
    assert parse_knockout(format_knockout(ko)) == ko
    assert format_knockout(KnockOut(all=True, mode="mean")) == "all,mode=mean"
    assert KnockOut.from_dict(ko.to_dict()) == ko
    for bad, msg in (("mode=half", "unknown knock-out mode"), ("samples=0", "samples"), ("seed=x", "integer")):
        with pytest.raises(ValueError, match=msg):
            parse_knockout(bad)


def test_mean_rows_are_hit_weighted_by_hand(ck):
    """Head (0, 2, 0): the mean row equals the count-weighted mean over the corpus positions' reads."""
    model = ck.model
    stream = torch.tensor([encode(ck.tokenizer, CORPUS)[0]])
    rows = model.hash_rows(stream)[0][0, :, 0]  # every corpus position's read, head 0 of order 2, layer 0
    table = model.blocks[0].engram.table.weight.detach()
    want = table[rows + int(model.blocks[0].engram.offsets[0])].double().mean(0)
    got = model.blocks[0].engram.row_source.mean_rows[0].double()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_mean_ablation_of_a_head_whose_rows_are_equal_changes_nothing(ck):
    engram = ck.model.blocks[1].engram
    spec = ck.model.cfg.memory.hash_spec
    h = spec.head_index(3, 1)
    start, size = int(engram.offsets[h]), int(engram.primes[h])
    with torch.no_grad():
        engram.table.weight[start : start + size] = torch.linspace(-1, 1, engram.cfg.d_head)
    stream = np.asarray(encode(ck.tokenizer, CORPUS)[0])
    ck.model.install_row_source(row_sources(ck, build_collision_index(ck, [stream]), pool=64))
    ko = KnockOut(heads={(1, 3, 1)}, mode="mean")
    torch.testing.assert_close(_logits(ck, ko), _logits(ck), rtol=1e-5, atol=1e-5)
    # the same knock-out under zero does change the output: the test can fail
    assert (_logits(ck, KnockOut(heads={(1, 3, 1)})) - _logits(ck)).abs().max() > 1e-3


def test_zero_mode_layer_equals_all_reads_zeroed(ck):
    """Under zero, a layer knock-out (module skipped) equals zeroing every head of that layer."""
    spec = ck.model.cfg.memory.hash_spec
    heads = {(1, n, k) for n in spec.orders for k in range(spec.heads_per_ngram)}
    torch.testing.assert_close(_logits(ck, KnockOut(layers={1})), _logits(ck, KnockOut(heads=heads)), atol=1e-5, rtol=0)


def test_mean_layer_equals_every_head_mean(ck):
    spec = ck.model.cfg.memory.hash_spec
    heads = {(0, n, k) for n in spec.orders for k in range(spec.heads_per_ngram)}
    torch.testing.assert_close(
        _logits(ck, KnockOut(layers={0}, mode="mean")), _logits(ck, KnockOut(heads=heads, mode="mean"))
    )


def test_mean_branch_reads_mean_rows(ck):
    """A branch under mean gets the read-out of the mean rows; with every branch replaced that is all=mean."""
    M = ck.model.cfg.backbone.n_branches
    every = _logits(ck, KnockOut(branches=set(range(M)), mode="mean"))
    torch.testing.assert_close(every, _logits(ck, KnockOut(all=True, mode="mean")), atol=1e-5, rtol=1e-5)
    assert (_logits(ck, KnockOut(branches={0}, mode="mean")) - _logits(ck)).abs().max() > 1e-4


def test_resample_reads_another_ngram_of_the_pool():
    pool = torch.tensor([[1, 2, 10, 20], [3, 4, 30, 40], [5, 6, 50, 60]])  # 3 positions, 2 orders x 2 heads
    ids = torch.tensor([[[1, 2, 30, 40], [9, 9, 9, 9]]])  # position 0 reads pool entries 0 (order 2), 1 (order 3)
    for seed in range(20):
        out = resampled_rows(ids, pool, 2, seed, layer=1)
        assert out.shape == ids.shape
        for t in range(2):
            for o in range(2):
                pair = out[0, t, 2 * o : 2 * o + 2].tolist()
                assert pair in pool[:, 2 * o : 2 * o + 2].tolist()  # heads of one order read one real N-gram
                assert pair != ids[0, t, 2 * o : 2 * o + 2].tolist()  # and never the one already read


def test_resample_averages_k_runs_as_a_mixture(ck):
    ko = KnockOut(orders={2}, mode="resample", samples=3, seed=5)
    runs = [F.log_softmax(_logits(ck, KnockOut(orders={2}, mode="resample", seed=s)), -1) for s in (5, 6, 7)]
    want = torch.logsumexp(torch.stack(runs), 0) - np.log(3)
    torch.testing.assert_close(_logits(ck, ko), want)
    assert (runs[0] - runs[1]).abs().max() > 1e-4  # different seeds draw different rows


SCRIPT = """
import json, sys, torch
sys.path.insert(0, {root!r}); sys.path.insert(0, {tests!r})
from conftest import tiny_config
from engram_core import EngramLM, KnockOut
from engram_core.ablation import RowSource
torch.manual_seed(0)
m = EngramLM(tiny_config(300, 300, 0)).eval()
g = torch.Generator().manual_seed(1)
m.install_row_source({{L: RowSource(torch.zeros(4, 8), torch.randint(31, (50, 4), generator=g)) for L in (0, 1)}})
ids = torch.randint(300, (2, 40), generator=g)
with torch.no_grad():
    out = m(ids, knockout=KnockOut(all=True, mode="resample", samples=3, seed=11))
print(json.dumps(out.flatten().tolist()))
"""


def test_resample_is_deterministic_across_processes():
    code = SCRIPT.format(root=str(ROOT), tests=str(ROOT / "tests"))
    outs = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True) for _ in range(2)]
    a, b = (json.loads(o.stdout) for o in outs)
    assert a == b and len(a) == 2 * 40 * 300


def test_missing_sources_is_one_clear_error(tiny_model):
    with pytest.raises(ValueError, match="needs this checkpoint's corpus row statistics"):
        with torch.no_grad():
            tiny_model(torch.tensor([[1, 2, 3]]), knockout=KnockOut(all=True, mode="mean"))


def test_sources_round_trip_and_key_check(ck, tmp_path):
    sources = {L: ck.model.blocks[L].engram.row_source for L in ck.model.engram_layers}
    from engram_core.checkpoint import checkpoint_key

    path = save_sources(sources, tmp_path / "a.npz", checkpoint_key(ck))
    back = load_sources(path, ck)
    for L, s in sources.items():
        torch.testing.assert_close(back[L].mean_rows, s.mean_rows)
        assert torch.equal(back[L].pool, s.pool)
    save_sources(sources, path, "another-key")
    assert load_sources(path, ck) is None


def test_install_uses_the_cache(ck, tmp_path, monkeypatch):
    monkeypatch.setenv("ENGRAM_CACHE", str(tmp_path))
    ck.model.install_row_source(None)
    with pytest.raises(ValueError, match="at least 2"):
        RowSource(torch.zeros(4, 8), torch.zeros(1, 4, dtype=torch.long))
    monkeypatch.setattr(
        "engram_inspect.memory.ablation.load_or_build",
        lambda c, progress=None: build_collision_index(c, [np.asarray(encode(c.tokenizer, CORPUS)[0])]),
    )
    install(ck)
    assert list(tmp_path.rglob("ablation.npz"))
    first = _logits(ck, KnockOut(all=True, mode="resample"))
    ck.model.install_row_source(None)

    def no_build(*_a, **_k):
        raise AssertionError("the cached file should have been used")

    monkeypatch.setattr("engram_inspect.memory.ablation.load_or_build", no_build)
    install(ck)
    assert torch.equal(_logits(ck, KnockOut(all=True, mode="resample")), first)


def test_cli_trace_and_attribute_take_an_ablation(ck, tmp_path, capsys):
    from engram_core import load_checkpoint, save_checkpoint
    from engram_core.checkpoint import checkpoint_key
    from engram_inspect.commands import main
    from engram_inspect.text.attribution import attribute
    from engram_inspect.text.export import from_json

    folder = save_checkpoint(tmp_path / "ck", ck.model, ck.tokenizer)
    saved = load_checkpoint(folder)
    sources = {L: ck.model.blocks[L].engram.row_source for L in ck.model.engram_layers}
    save_sources(sources, folder / f"ablation-{checkpoint_key(saved)}.npz", checkpoint_key(saved))
    argv = ["trace", TEXT, "--knockout", "layer=1", "--ablation", "mean", "--checkpoint", str(folder)]
    assert main(argv) == 0
    tr = from_json(capsys.readouterr().out)
    assert tr.mask == KnockOut(layers={1}, mode="mean")
    want = F.log_softmax(_logits(ck, KnockOut(layers={1}, mode="mean"))[0], -1)
    ids = encode(ck.tokenizer, TEXT)[0]
    np.testing.assert_allclose(
        tr.masked_logprob_next[:-1], want[:-1].gather(1, torch.tensor(ids[1:])[:, None])[:, 0], atol=1e-5
    )
    argv = ["attribute", TEXT, "--position", "9", "--ablation", "resample", "--samples", "2", "--json"]
    assert main([*argv, "--checkpoint", str(folder)]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got == attribute(saved, TEXT, 9, "exact", "resample", samples=2)
    assert main(["trace", TEXT, "--samples", "0", "--ablation", "resample", "--checkpoint", str(folder)]) == 2
    assert "samples" in capsys.readouterr().err
