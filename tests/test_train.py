"""Training recipe: loss falls, tables move 5x faster and only where read, no decay on tables."""

import numpy as np
import torch

from engram_core import EngramLM
from engram_core.train import TrainConfig, lr_factor, make_optimizers, train
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
    assert isinstance(tables, torch.optim.SparseAdam)
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
