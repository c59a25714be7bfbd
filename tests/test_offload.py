"""A checkpoint reading its tables from disk through a row cache: logits equal to the in-memory
model's, hits equal to the simulator's, the in-memory rows gone, bad arguments refused."""

from pathlib import Path

import numpy as np
import pytest
import torch

from engram_core import load_checkpoint
from engram_core.layout import load_layout
from engram_inspect.serving.offload import DiskRows, offload
from engram_inspect.serving.simulate import Capacity, Grid, simulate

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "assets" / "default-model"


@pytest.fixture(scope="module")
def ids():
    ck = load_checkpoint(MODEL)
    text = (ROOT / "engram_core" / "hashing.py").read_text()[:4000]
    return torch.tensor(ck.tokenizer.encode(text).ids[:200])


@pytest.fixture(scope="module")
def reference(ids):
    ck = load_checkpoint(MODEL)
    with torch.no_grad():
        return ck.model(ids)


@pytest.mark.parametrize(
    "policy,mib,prefetch",
    [("lru", 0.01, False), ("lru", 0.01, True), ("clock", 0.05, True), ("set-assoc", 0.05, False), ("lru", 64, True)],
)
def test_logits_equal_the_in_memory_model(ids, reference, policy, mib, prefetch):
    ck = load_checkpoint(MODEL)
    off = offload(ck, mib, policy, 16, prefetch)
    try:
        with torch.no_grad():
            first, again = ck.model(ids), ck.model(ids)
    finally:
        off.close()
    assert torch.equal(first, reference) and torch.equal(again, reference)
    for layer, s in off.stats().items():
        assert s["reads"] == 2 * ids.numel() * ck.model.cfg.memory.heads_per_layer
        assert 0 <= s["hits"] <= s["reads"]
        if prefetch:
            assert s["prefetched"] > 0
    # the in-memory tables are gone: no parameter of a table's size is left
    assert all(isinstance(ck.model.blocks[la].engram.table, DiskRows) for la in ck.model.engram_layers)
    assert max(p.shape[0] for p in ck.model.parameters()) < 100_000


@pytest.mark.parametrize("policy", ["lru", "clock", "set-assoc"])
def test_measured_hits_equal_simulated_hits(ids, policy):
    ck = load_checkpoint(MODEL)
    rows = 512
    mib = rows * 4 * ck.model.cfg.memory.d_head / 2**20  # the cache holds float32 rows
    off = offload(ck, mib, policy, 16, prefetch=False)
    with torch.no_grad():
        ck.model(ids)
    off.close()
    layout = load_layout(MODEL)
    grid = Grid(policies=(policy,), capacities=(Capacity(str(rows), rows=rows),), ways=16)
    sim = simulate(layout, lambda: [ids.numpy().astype(np.int64)], grid)
    assert {r["layer"]: r["hits"] for r in sim} == {la: s["hits"] for la, s in off.stats().items()}
    assert all(0 < r["hits"] < r["reads"] for r in sim)


def test_trace_from_disk_reports_its_cache(tmp_path):
    import subprocess
    import sys

    out = tmp_path / "t.json"
    args = [sys.executable, "-m", "engram_inspect.commands", "trace", "def f(x):\n    return x", "-o", str(out)]
    r = subprocess.run([*args, "--tables-from-disk", "--cache-mib", "0.05"], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert "tables from disk (model.safetensors, lru, 409 rows a layer, prefetch from the ids)" in r.stderr
    assert "layer 1:" in r.stderr and "hits" in r.stderr


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--cache-mib", "0"], "--cache-mib must be positive"),
        (["--cache-policy", "set-assoc", "--ways", "0"], "at least one way"),
    ],
)
def test_bad_cache_arguments_exit_2(engram_cli, extra, message):
    r = engram_cli("trace", "x", "--tables-from-disk", *extra)
    assert r.returncode == 2 and message in r.stderr
