"""`engram trace | stats | neighbours | project` on a tiny checkpoint: outputs load back, bad input is one line."""

import csv

import numpy as np
import pytest

from engram_core import load_checkpoint, save_checkpoint
from engram_inspect.commands import main
from engram_inspect.text.capture import capture
from engram_inspect.text.export import from_json, read
from tests.conftest import TINY_TEXT

TEXT = "I pray you, my lord, let me know."


@pytest.fixture()
def ckdir(tmp_path, tiny_model, tiny_tokenizer):
    return str(save_checkpoint(tmp_path / "ck", tiny_model, tiny_tokenizer))


@pytest.mark.parametrize("fmt", ["json", "csv", "parquet", "npz"])
def test_trace_writes_each_format(ckdir, tmp_path, fmt, capsys):
    out = tmp_path / f"t.{fmt}"
    assert main(["trace", TEXT, "-o", str(out), "--knockout", "layer=1", "--checkpoint", ckdir]) == 0
    from engram_core.knockout import KnockOut

    want = capture(load_checkpoint(ckdir), TEXT, mask=KnockOut(layers={1}))
    assert read(out) == want


def test_trace_json_to_stdout_from_file(ckdir, tmp_path, capsys):
    f = tmp_path / "in.txt"
    f.write_text(TEXT)
    assert main(["trace", "--file", str(f), "--checkpoint", ckdir]) == 0
    assert from_json(capsys.readouterr().out) == capture(load_checkpoint(ckdir), TEXT)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["trace", ""], "empty"),
        (["trace", "--file", "/no/such/file"], "cannot read"),
        (["trace", "hi", "--format", "xml"], "unknown format"),
        (["trace", "hi", "--format", "npz"], "give -o"),
        (["trace", "hi", "--knockout", "layer=x"], "bad knock-out"),
        (["trace", "hi", "--knockout", "head=0:2:2"], "head=0:2:2"),  # heads are 0..1: once aliased 0:3:0
        (["trace", "hi", "--knockout", "layer=9"], "layer=9"),
        (["trace", "hi", "--knockout", "layer=0,mode=mean", "--ablation", "zero"], "mode=mean but mode=zero"),
        (["trace", "hi", "--knockout", "all,samples=2", "--samples", "3"], "samples=2 but samples=3"),
        (["neighbours", "hi", "--layer", "7"], "not an Engram layer"),
        (["neighbours", "hi", "--order", "9"], "order"),
        (["neighbours", "--row", "0:2:0"], "L:N:K:R"),
        (["stats", "--corpus", "/no/such/file"], "cannot read"),
    ],
)
def test_bad_input_is_one_line(ckdir, capsys, argv, message):
    assert main([*argv, "--checkpoint", ckdir]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err[-1:]) == 1 and message in err[-1] and "Traceback" not in "".join(err)


def test_missing_checkpoint(tmp_path, capsys):
    assert main(["trace", "hi", "--checkpoint", str(tmp_path / "none")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_stats_and_neighbours_on_a_corpus_file(ckdir, tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT * 30)
    assert main(["stats", "--corpus", str(corpus), "-o", str(tmp_path / "s"), "--checkpoint", ckdir]) == 0
    rows = list(csv.DictReader(open(tmp_path / "s-health.csv")))
    assert len(rows) == 2 * 2 * 2  # layers x orders x heads of the tiny model
    assert all(0 < float(r["usage"]) <= 1 for r in rows)
    heads = list(csv.DictReader(open(tmp_path / "s-collisions.csv")))
    assert {int(h["prime"]) for h in heads} == {
        p for ps in load_checkpoint(ckdir).model.cfg.memory.hash_spec.primes.values() for p in ps
    }


def test_neighbours_prints_k_rows(ckdir, capsys, monkeypatch, tmp_path):
    # the tiny model's "training corpus" is the tiny text: tokenizing the real corpus with the
    # tiny tokenizer would take minutes and proves nothing about the command's output
    from engram_inspect.memory import collisions

    monkeypatch.setattr(collisions, "training_streams", lambda ck: [np.asarray(ck.tokenizer.encode(TINY_TEXT).ids)])
    monkeypatch.setenv("ENGRAM_CACHE", str(tmp_path / "cache"))  # that index must not land in the user's cache
    assert main(["neighbours", "my lord", "--order", "2", "--head", "1", "-k", "4", "--checkpoint", ckdir]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert "reads layer 0 order 2 head 1 row" in out[0]
    assert len(out) == 5
    sims = [float(line.split()[0]) for line in out[1:]]
    assert sims == sorted(sims, reverse=True) and all(-1 <= x <= 1 for x in sims)


def _snapshot(folder) -> dict:
    from pathlib import Path

    return {str(p): p.stat().st_mtime_ns for p in Path(folder).rglob("*")}


def test_caches_never_go_beside_a_read_only_checkpoint(ckdir, tmp_path, monkeypatch, capsys):
    """Bug 9: `engram stats`, collision index and projections write only under ENGRAM_CACHE."""
    import os
    import stat
    from pathlib import Path

    from engram_inspect.base.cache import checkpoint_key
    from engram_inspect.memory.collisions import load_or_build
    from engram_inspect.memory.projection import compute_projection

    cache = tmp_path / "cache"
    monkeypatch.setenv("ENGRAM_CACHE", str(cache))
    for p in Path(ckdir).iterdir():
        p.chmod(stat.S_IRUSR)
    Path(ckdir).chmod(stat.S_IRUSR | stat.S_IXUSR)
    before = _snapshot(ckdir)
    try:
        corpus = tmp_path / "corpus.txt"
        corpus.write_text(TEXT * 30)
        assert main(["stats", "--corpus", str(corpus), "-o", str(tmp_path / "s"), "--checkpoint", ckdir]) == 0
        ck = load_checkpoint(ckdir)
        ids = capture(ck, TEXT * 3).token_ids
        load_or_build(ck, [ids])
        compute_projection(ck, "pca", "pooled")
        assert _snapshot(ckdir) == before  # nothing written, nothing touched
        written = {p.relative_to(cache).parts[0] for p in cache.rglob("*.npz")}
        assert written == {checkpoint_key(ck)}
        assert len(list(cache.rglob("collisions*.npz"))) == 2  # the corpus file's index and `ids`'s
        assert len(list(cache.rglob("projection-pca-pooled*.npz"))) == 1
    finally:
        Path(ckdir).chmod(stat.S_IRWXU)
        for p in Path(ckdir).iterdir():
            p.chmod(stat.S_IRUSR | stat.S_IWUSR)
    assert os.access(ckdir, os.W_OK)


def test_neighbours_spaces(ckdir, capsys, monkeypatch, tmp_path):
    """--space raw lists rows of the query's own head only; the default, value space, equals row_neighbours."""
    from engram_inspect.memory import collisions
    from engram_inspect.memory.neighbours import row_neighbours
    from engram_inspect.memory.rows import RowAddress

    monkeypatch.setattr(collisions, "training_streams", lambda ck: [np.asarray(ck.tokenizer.encode(TINY_TEXT).ids)])
    monkeypatch.setenv("ENGRAM_CACHE", str(tmp_path / "cache"))
    assert main(["neighbours", "--row", "1:3:1:5", "-k", "6", "--space", "raw", "--checkpoint", ckdir]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert "raw rows of the same head" in out[0] and len(out) == 7
    assert all(line.split()[1:4] == ["L1", "n3", "h1"] for line in out[1:])
    assert main(["neighbours", "--row", "1:3:1:5", "-k", "6", "--checkpoint", ckdir]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    want = row_neighbours(load_checkpoint(ckdir), RowAddress(1, 3, 1, 5), 6)
    got = [(line.split()[1:4], int(line.split()[5]), float(line.split()[0])) for line in out[1:]]
    assert got == [
        ([f"L{n.address.layer}", f"n{n.address.order}", f"h{n.address.head}"], n.address.row, round(n.similarity, 3))
        for n in want
    ]


def test_a_flag_that_agrees_with_the_mask_is_taken(ckdir, capsys):
    import json

    argv = ["trace", "hi there", "--knockout", "layer=0,mode=mean", "--ablation", "mean", "--checkpoint", ckdir]
    assert not main(argv)
    mask = json.loads(capsys.readouterr().out)["meta"]["mask"]
    assert mask["mode"] == "mean" and mask["layers"] == [0]
