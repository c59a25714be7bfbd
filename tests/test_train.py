"""Training recipe: loss falls, tables move 5x faster and only where read, no decay on tables."""

from pathlib import Path

import numpy as np
import pytest
import torch

from engram_core import EngramLM
from engram_core.train import EpochWindows, RowAdam, TrainConfig, lr_factor, make_optimizers, train
from tests.conftest import TINY_TEXT, tiny_config


def test_tiny_training_lowers_loss(tiny_parts):
    tok, comp, pad = tiny_parts
    torch.manual_seed(0)
    model = EngramLM(tiny_config(tok.get_vocab_size(), comp.size, pad), comp.table)
    stream = np.asarray(tok.encode(TINY_TEXT).ids, dtype=np.uint16)
    cfg = TrainConfig(
        tokens=60 * 8 * 64, batch_size=8, lr=3e-3, warmup_steps=5, eval_every=30, eval_windows=4, compile=False
    )
    hist = train(model, stream, {"tiny": stream}, cfg)
    assert len(hist) == 2
    assert hist[-1]["val_tiny"] < hist[0]["val_tiny"] - 0.5
    assert hist[0]["val_tiny"] < np.log(tok.get_vocab_size())


def test_table_optimizer_recipe(tiny_parts):
    tok, comp, pad = tiny_parts
    model = EngramLM(tiny_config(tok.get_vocab_size(), comp.size, pad), comp.table)
    cfg = TrainConfig(lr=1e-3)
    dense, tables = make_optimizers(model, cfg)
    assert isinstance(tables, RowAdam)
    assert tables.param_groups[0]["lr"] == 5e-3
    assert {id(p) for p in tables.param_groups[0]["params"]} == {id(b.engram.table.weight) for b in model.blocks[:2]}
    decayed = {id(p) for g in dense.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    assert id(model.blocks[0].engram.readout.conv) not in decayed
    assert id(model.blocks[0].attn.sublayer.qkv.weight) in decayed


def test_only_read_rows_move(tiny_parts):
    tok, comp, pad = tiny_parts
    torch.manual_seed(0)
    model = EngramLM(tiny_config(tok.get_vocab_size(), comp.size, pad), comp.table)
    opts = make_optimizers(model, TrainConfig())
    ids = torch.tensor([tok.encode("I pray you, my lord").ids])
    rows = model.hash_rows(ids)[0] + model.blocks[0].engram.offsets
    before = model.blocks[0].engram.table.weight.detach().clone()
    model.loss(ids[:, :-1], ids[:, 1:]).backward()
    for o in opts:
        o.step()
    moved = (model.blocks[0].engram.table.weight.detach() != before).any(-1).nonzero().flatten()
    read = torch.unique(rows[:, :-1].flatten())
    assert set(moved.tolist()) == set(read.tolist())


def test_lr_schedule():
    cfg = TrainConfig(warmup_steps=10, final_lr_frac=0.1)
    assert lr_factor(0, 100, cfg) == 0.1
    assert lr_factor(9, 100, cfg) == 1.0
    assert abs(lr_factor(100, 100, cfg) - 0.1) < 1e-9
    assert 0.1 < lr_factor(55, 100, cfg) < 1.0


def test_row_adam_matches_sparse_adam():
    """Oracle: torch's SparseAdam, over steps that read overlapping and disjoint rows."""
    g = torch.Generator().manual_seed(0)
    a = torch.nn.Embedding(50, 4, sparse=True)
    b = torch.nn.Embedding(50, 4, sparse=True)
    b.weight.data.copy_(a.weight.data)
    init = a.weight.detach().clone()
    oa = RowAdam(a.parameters(), lr=0.01, betas=(0.9, 0.95))
    ob = torch.optim.SparseAdam(b.parameters(), lr=0.01, betas=(0.9, 0.95))
    for step in range(6):
        idx = torch.randint(0, 20 + 5 * step, (3, 7), generator=g)  # repeats within a batch too
        target = torch.randn(3, 7, 4, generator=g)
        for emb, opt in ((a, oa), (b, ob)):
            opt.zero_grad()
            ((emb(idx) - target) ** 2).sum().backward()
            opt.step()
        torch.testing.assert_close(a.weight, b.weight, rtol=1e-5, atol=1e-6)
    assert torch.equal(a.weight[45:], init[45:])  # rows never read keep their init
    assert not torch.equal(a.weight[:20], init[:20])


def test_compiled_kernels_get_vector_instructions_under_the_train_malloc_settings():
    """inductor's ISA probe fails in a process that imported torch with MALLOC_MMAP_MAX_=0
    (as `engram train` runs); its kernels were then scalar and training 2.5x slower."""
    import os
    import subprocess
    import sys

    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    if " avx2" not in flags:
        pytest.skip("no AVX2 on this CPU: inductor has no vector ISA to pick")
    env = {**os.environ, "MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "100000000000"}
    code = "import torch\nfrom engram_core.train import vector_isa\nprint(vector_isa())"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] != "none"


@pytest.mark.parametrize("sizes", [["5"], ["0", "7"], ["3", "4", "5"]])
def test_train_refuses_bad_table_sizes_in_one_line(engram_cli, sizes):
    r = engram_cli("train", "--table-sizes", *sizes, "--out", "/nonexistent/never-written")
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "--table-sizes" in r.stderr and "order" in r.stderr


@pytest.mark.parametrize("tol", ["-0.1", "1.5"])
def test_train_refuses_a_bad_sinkhorn_tolerance_in_one_line(engram_cli, tol):
    r = engram_cli("train", "--sinkhorn-tol", tol, "--out", "/nonexistent/never-written")
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "--sinkhorn-tol" in r.stderr


@pytest.mark.parametrize("mult", ["-1", "nan", "inf"])
def test_train_refuses_a_bad_table_learning_rate_in_one_line(engram_cli, mult):
    r = engram_cli("train", "--table-lr-mult", mult, "--out", "/nonexistent/never-written")
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "--table-lr-mult" in r.stderr


def test_epoch_windows_visit_every_window_once_per_epoch():
    T, n_tok = 16, 1000
    stream = np.arange(n_tok, dtype=np.uint16)
    w = EpochWindows(stream, T, np.random.default_rng(3))
    first = w.starts(7)  # the first epoch begins on the first call
    n = len(w.order)
    rest = w.starts(n - 7)
    epoch1 = np.concatenate([first, rest])
    assert w.epoch == 1 and len(epoch1) == n
    phase = int(epoch1.min())
    assert 0 <= phase < T and n == (n_tok - 1 - phase) // T
    # each window once, stride T: the windows tile the stream from the phase on, no token read twice as a target
    assert sorted(epoch1.tolist()) == list(range(phase, phase + n * T, T))
    assert epoch1.max() + T + 1 <= n_tok
    assert not np.array_equal(epoch1, np.sort(epoch1))  # shuffled
    w.starts(1)  # the next epoch: a new phase and a new order
    assert w.epoch == 2 and len(set((w.order % T).tolist())) == 1
    assert int(w.order[0] % T) != phase  # for this seed the cuts moved
    assert len(set(w.order.tolist())) == len(w.order)
    x, y = w.batch(4)
    assert x.shape == y.shape == (4, T) and torch.equal(x[:, 1:], y[:, :-1])


def test_epoch_windows_refuse_a_stream_too_short():
    with pytest.raises(ValueError, match="at least 33"):
        EpochWindows(np.zeros(20, dtype=np.uint16), 16, np.random.default_rng(0))


def test_sampler_is_recorded_and_checked():
    assert TrainConfig().sampler == "epoch"
    with pytest.raises(ValueError, match="sampler"):
        TrainConfig(sampler="shuffled")


def test_train_defaults_are_the_shipped_recipe():
    """`engram train --out assets/default-model` rebuilds the shipped model: its defaults match the card."""
    import argparse
    import json

    from engram_core.cli import add_commands

    p = argparse.ArgumentParser()
    add_commands(p.add_subparsers(dest="command"))
    a = p.parse_args(["train"])
    shipped = Path(__file__).resolve().parent.parent / "assets" / "default-model"
    card = json.loads((shipped / "MODEL_CARD.json").read_text())
    assert card["train"]["tokens"] == a.tokens and card["train"]["sampler"] == a.sampler
    assert card["train"]["table_lr_mult"] == a.table_lr_mult and card["train"]["seed"] == a.seed
    assert tuple(card["config"]["memory"]["table_sizes"]) == tuple(a.table_sizes)
    assert card["config"]["backbone"]["sinkhorn_tol"] == a.sinkhorn_tol
    config = json.loads((shipped / "config.json").read_text())
    assert config["table_format"] == a.table_format == "fp8"


def test_a_non_finite_mhc_map_stops_training_with_one_clear_error(tiny_parts):
    tok, comp, pad = tiny_parts
    model = EngramLM(tiny_config(tok.get_vocab_size(), comp.size, pad), comp.table)
    assert model.cfg.backbone.sinkhorn_tol > 0 and model.cfg.backbone.n_branches > 1  # the projection runs
    with torch.no_grad():
        model.blocks[1].mlp.b_res[0, 0] = float("nan")
    stream = np.asarray(tok.encode(TINY_TEXT).ids, dtype=np.uint16)
    cfg = TrainConfig(tokens=2 * 8 * 64, batch_size=8, eval_every=30, eval_windows=2, compile=False)
    with pytest.raises(FloatingPointError, match="training diverged at step 1: Sinkhorn projection: 512 of"):
        train(model, stream, {"tiny": stream}, cfg)
