"""`engram scan`: local and Ray executors agree, collisions are found, documents stay apart."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from engram_core.addressing import address
from engram_core.layout import load_layout
from engram_inspect.corpus.scan import scan
from engram_inspect.corpus.scan_sample import shard_caps
from engram_inspect.corpus.shards import _load, plan_shards
from engram_inspect.corpus.traffic import unpack

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "assets" / "default-model"
FILES = ("rows.parquet", "ngrams.parquet", "cache.parquet", "contexts.parquet")  # the model has a backbone


@pytest.fixture(scope="module")
def layout():
    return load_layout(MODEL)


def corpus(folder: Path, n: int = 6) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    src = (ROOT / "engram_core" / "hashing.py").read_text().splitlines()
    for i in range(n):
        (folder / f"doc{i}.py").write_text("\n".join(src[i * 30 : i * 30 + 40]))
    (folder / "notes.md").write_text("To be, or not to be, that is the question.\n")
    return folder


def sorted_table(path: Path):
    t = pq.read_table(path)
    return t.sort_by([(c, "ascending") for c in t.column_names if c not in ("ngram", "mib", "lru", "static")])


def same_counts_close_gates(a: Path, b: Path) -> bool:
    """Integer columns equal; float columns (gate sums) equal up to float32 rounding: documents batched
    into other shards go through other kernel paths."""
    import numpy as np

    ta, tb = sorted_table(a), sorted_table(b)
    if ta.column_names != tb.column_names or ta.num_rows != tb.num_rows:
        return False
    for name in ta.column_names:
        x, y = ta.column(name), tb.column(name)
        if x.type in ("double", "float"):
            if not np.allclose(x.to_numpy(), y.to_numpy(), rtol=1e-6, atol=1e-7):
                return False
        elif not x.equals(y):
            return False
    return True


def cli(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "engram_inspect.commands", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
    )


def test_every_read_is_counted(tmp_path, layout):
    s = scan(layout, [str(corpus(tmp_path / "c"))], tmp_path / "out", shard_bytes=2000)
    assert s["shards"] > 1
    rows = pq.read_table(tmp_path / "out" / "rows.parquet").to_pydict()
    heads = {}
    for layer, order, head, hits in zip(rows["layer"], rows["order"], rows["head"], rows["hits"], strict=True):
        heads[(layer, order, head)] = heads.get((layer, order, head), 0) + hits
    assert set(heads.values()) == {s["tokens"]}  # every token reads one row of every head
    assert len(heads) == len(layout.layers) * layout.spec.heads_per_layer


def test_planted_collision_is_found(tmp_path, layout):
    # two-word texts whose final bigrams differ but read the same row of some head
    words = [w for w in (ROOT / "engram_core" / "hashing.py").read_text().split() if w.isalpha()][:400]
    texts = sorted({f"{a} {b}" for a, b in zip(words, words[1:], strict=False)})
    seen, pair = {}, None
    for text in texts:
        a = address(layout, layout.encode(text))
        gram = tuple(a.compressed[-2:].tolist())
        for i, layer in enumerate(layout.layers):
            for h in range(layout.spec.heads_per_ngram):  # order 2
                key = (layer, h, int(a.rows[i, -1, h]))
                if key in seen and seen[key][1] != gram:
                    pair = (key, seen[key], (text, gram))
                seen.setdefault(key, (text, gram))
        if pair:
            break
    assert pair is not None
    (layer, head, row), (text1, gram1), (text2, gram2) = pair
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "a.txt").write_text(text1)
    (tmp_path / "c" / "b.txt").write_text(text2)
    scan(layout, [str(tmp_path / "c")], tmp_path / "out")
    ng = pq.read_table(tmp_path / "out" / "ngrams.parquet").to_pylist()
    found = {tuple(r["ngram"]) for r in ng if (r["layer"], r["order"], r["head"], r["row"]) == (layer, 2, head, row)}
    assert found == {gram1, gram2}


def test_ngrams_never_cross_documents(tmp_path, layout):
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "a.txt").write_text("alpha")
    (tmp_path / "c" / "b.txt").write_text("omega")
    s = scan(layout, [str(tmp_path / "c")], tmp_path / "out")
    a, b = layout.compress(layout.encode("alpha"))[-1], layout.compress(layout.encode("omega"))[0]
    pad = layout.spec.pad_id
    counts, _ = _load(next((tmp_path / "out" / "parts").glob("*.npz")))
    hi, lo, _ = counts.ngrams[2]
    grams = {tuple(g[::-1]) for g in unpack(hi, lo, 2, int(layout.spec.vocab_size - 1).bit_length()).tolist()}
    assert (a, b) not in grams  # the bigram across the file boundary
    assert (pad, b) in grams  # the second file starts afresh
    assert s["documents"] == 2


def test_corrupt_files_are_skipped_and_counted(tmp_path, layout):
    folder = corpus(tmp_path / "c", 2)
    (folder / "bad.txt").write_bytes(b"\xff\xfe not utf-8")
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 this is not parquet")
    (tmp_path / "docs.jsonl").write_text('{"text": "one"}\n{"no text": 1}\n')
    s = scan(layout, [str(folder), str(tmp_path / "broken.parquet"), str(tmp_path / "docs.jsonl")], tmp_path / "out")
    assert s["skipped_files"] == 3 and len(s["problems"]) == 3
    assert s["documents"] == 3  # two .py files and the notes; the JSONL file fails whole on its second line
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["skipped_files"] == 3


def test_resume_after_a_crash_gives_the_same_files(tmp_path, engram_cli):
    folder = corpus(tmp_path / "c", 8)
    shards = plan_shards([str(folder)], 1500)
    assert len(shards) >= 3
    args = ["scan", str(folder), "--model", str(MODEL), "--shard-bytes", "1500", "-o", str(tmp_path / "out")]
    crashed = cli(*args, env={"ENGRAM_SCAN_CRASH_AFTER": shards[1].key})
    assert crashed.returncode == 137
    assert len(list((tmp_path / "out" / "parts").glob("*.npz"))) == 2
    resumed = engram_cli(*args)  # the crash needs its own process; the rest runs here
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stderr.count("skipped") == 2
    clean = engram_cli(
        "scan", str(folder), "--model", str(MODEL), "--shard-bytes", "1500", "-o", str(tmp_path / "clean")
    )
    assert clean.returncode == 0
    for f in FILES:
        assert sorted_table(tmp_path / "out" / f).equals(sorted_table(tmp_path / "clean" / f))


@pytest.mark.parametrize(
    "args, message",
    [
        (["/no/such/dir", "-o", "x"], "no such path: /no/such/dir"),
        (["tests", "--model", "nope", "-o", "x"], "unknown model 'nope'"),
        (["tests", "--ray-address", "127.0.0.1:1", "-o", "x"], "cannot reach a Ray cluster at 127.0.0.1:1"),
        (["tests", "--sample-rate", "0", "-o", "x"], "--sample-rate must lie in (0, 1]"),
    ],
)
def test_bad_arguments_exit_2(args, message, engram_cli):
    out = engram_cli("scan", *args)
    assert out.returncode == 2
    assert message in out.stderr and out.stderr.count("\n") == 1, out.stderr


def test_stats_reads_a_scan(tmp_path, layout, engram_cli):
    scan(layout, [str(corpus(tmp_path / "c", 2))], tmp_path / "out")
    out = engram_cli("stats", str(tmp_path / "out"))
    assert out.returncode == 0, out.stderr
    assert "rows hit" in out.stdout and "1 GiB cache" in out.stdout
    assert engram_cli("stats", str(tmp_path)).returncode == 2


@pytest.mark.slow
def test_local_and_ray_give_the_same_files(tmp_path, layout, ray_cluster):
    folder = corpus(tmp_path / "c", 5)
    lines = [json.dumps({"text": f"record {i}: all the world's a stage " * (i % 5 + 1)}) for i in range(40)]
    (folder / "records.jsonl").write_text("\n".join(lines) + "\n")  # cut into byte ranges: spans travel to Ray
    local = scan(layout, [str(folder)], tmp_path / "local", shard_bytes=1500)
    ray_run = scan(layout, [str(folder)], tmp_path / "ray", executor="ray", workers=2, shard_bytes=1500)
    assert local["tokens"] == ray_run["tokens"] and local["shards"] == ray_run["shards"] > 1
    for f in FILES:  # gate columns and contexts included
        assert sorted_table(tmp_path / "local" / f).equals(sorted_table(tmp_path / "ray" / f))
    assert "gate_sum" in pq.read_table(tmp_path / "ray" / "rows.parquet").column_names
    assert local["heads"] == ray_run["heads"]


def test_jsonl_is_cut_at_line_ends(tmp_path, layout):
    lines = [json.dumps({"text": f"line {i}: " + "to be or not to be " * (i % 7)}) for i in range(60)]
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "docs.jsonl").write_text("\n".join(lines) + "\n")
    shards = plan_shards([str(tmp_path / "in")], 500)
    assert (
        len(shards) > 3
        and shards[0].span[0] == 0
        and shards[-1].span[1] == (tmp_path / "in" / "docs.jsonl").stat().st_size
    )
    small = scan(layout, [str(tmp_path / "in")], tmp_path / "small", shard_bytes=500)
    whole = scan(layout, [str(tmp_path / "in")], tmp_path / "whole")
    assert small["documents"] == whole["documents"] == 60 and small["skipped_files"] == 0
    for f in ("rows.parquet", "ngrams.parquet"):  # the LRU curve differs: each shard starts cold
        assert same_counts_close_gates(tmp_path / "small" / f, tmp_path / "whole" / f)


def direct_gates(ckdir, texts):
    """Oracle: per (layer, global row), every read's (alpha, document, offset), from a direct
    capture of each document in block_size windows, rows addressed on the whole document."""
    import torch

    from engram_core import load_checkpoint
    from engram_inspect.base.activations import GATE, activations, memory_names

    model, lay = load_checkpoint(ckdir).model.eval(), load_layout(ckdir)
    T = model.cfg.backbone.block_size
    reads = {}
    for name, text in texts.items():
        ids = lay.encode(text)
        rows = address(lay, ids).rows  # (L, T, H) global rows
        for s in range(0, len(ids), T):
            names = memory_names(lay.layers, (GATE,))
            _, cache = activations(model, torch.from_numpy(ids[None, s : s + T]), names, logits=False)
            for i, (layer, hook) in enumerate(zip(lay.layers, names, strict=True)):
                alpha = cache[hook][0].float().mean(-1).numpy()
                for t in range(len(alpha)):
                    for r in rows[i, s + t]:
                        reads.setdefault((layer, int(r)), []).append((float(alpha[t]), name, s + t))
    return reads


def test_gate_sums_match_a_direct_capture(tmp_path, tiny_ckdir):
    (tmp_path / "c").mkdir()
    texts = {
        "a.txt": "To be, or not to be, that is the question.",
        "b.txt": "def __init__(self, value):\n    self.value = value\n",
        "long.txt": "I pray you, my lord, let me know not. Apple apple APPLE. " * 6,  # past block_size: windows
    }
    for name, text in texts.items():
        (tmp_path / "c" / name).write_text(text)
    lay = load_layout(tiny_ckdir)
    assert len(lay.encode(texts["long.txt"])) > 64
    scan(lay, [str(tmp_path / "c")], tmp_path / "out", shard_bytes=60)
    reads = direct_gates(tiny_ckdir, {str(tmp_path / "c" / k): v for k, v in texts.items()})
    rows = pq.read_table(tmp_path / "out" / "rows.parquet").to_pydict()
    assert len(rows["row"]) == len(reads)
    for layer, row, hits, gate_sum, gate_hits in zip(
        rows["layer"], rows["row"], rows["hits"], rows["gate_sum"], rows["gate_hits"], strict=True
    ):
        want = reads[(layer, row)]
        assert gate_hits == hits == len(want)
        assert gate_sum == pytest.approx(sum(a for a, _, _ in want), abs=1e-6 * len(want))
    top = {}
    for c in pq.read_table(tmp_path / "out" / "contexts.parquet").to_pylist():
        top.setdefault((c["layer"], c["row"]), []).append(c)
    assert set(top) == set(reads) and max(len(v) for v in top.values()) == 8
    for key, lines in top.items():
        alphas = sorted((a for a, _, _ in reads[key]), reverse=True)
        assert len(lines) == min(8, len(alphas))
        assert sorted((c["alpha"] for c in lines), reverse=True) == pytest.approx(alphas[: len(lines)], abs=1e-7)
        at = {(d, o): a for a, d, o in reads[key]}
        for c in lines:  # each context is a read of this row, with its alpha
            assert at[(c["doc"], c["offset"])] == pytest.approx(c["alpha"], abs=1e-7)


def row_keys(path: Path) -> set:
    t = pq.read_table(path, columns=["layer", "order", "head", "row"]).to_pydict()
    return set(zip(t["layer"], t["order"], t["head"], t["row"], strict=True))


def test_sample_tokens_is_spread_over_every_shard(tmp_path, layout):
    folder = corpus(tmp_path / "c", 8)
    full = scan(layout, [str(folder)], tmp_path / "full", shard_bytes=1500)
    assert full["shards"] >= 3 and full["sample_tokens"] is None
    n = full["tokens"] // 3
    s = scan(layout, [str(folder)], tmp_path / "sample", shard_bytes=1500, sample_tokens=n)
    assert s["sample_tokens"] == n and s["shards"] == full["shards"]
    per_shard = [
        _load(tmp_path / "full" / "parts" / f"{sh.key}.npz")[1]["tokens"] for sh in plan_shards([str(folder)], 1500)
    ]
    caps = shard_caps(n, len(per_shard))
    assert sum(caps) == n and max(caps) - min(caps) == 1
    assert s["tokens"] == sum(min(c, t) for c, t in zip(caps, per_shard, strict=True))  # a short shard gives all it has
    assert 0.8 * n < s["tokens"] <= n
    assert json.loads((tmp_path / "sample" / "summary.json").read_text())["tokens"] == s["tokens"]
    assert row_keys(tmp_path / "sample" / "rows.parquet") < row_keys(tmp_path / "full" / "rows.parquet")
    rows = pq.read_table(tmp_path / "sample" / "rows.parquet").to_pydict()
    assert sum(h for h, o in zip(rows["hits"], rows["order"], strict=True) if o == 2) == s["tokens"] * (
        len(layout.layers) * layout.spec.heads_per_ngram
    )  # each sampled token reads one row of every order-2 head
    docs = {d for p in (tmp_path / "sample" / "parts").glob("*.npz") for d in _load(p)[1]["doc_names"]}
    assert all(set(sh.paths) & docs for sh in plan_shards([str(folder)], 1500))  # every shard, not the first ones


def test_sample_cuts_the_last_document_at_a_token(tmp_path, layout):
    (tmp_path / "c").mkdir()
    text = "To be, or not to be, that is the question."
    (tmp_path / "c" / "a.txt").write_text(text)
    (tmp_path / "c" / "b.txt").write_text("Whether 'tis nobler in the mind to suffer")
    ids = layout.encode(text)
    s = scan(layout, [str(tmp_path / "c")], tmp_path / "out", sample_tokens=len(ids) + 3)
    assert s["tokens"] == len(ids) + 3 and s["documents"] == 2
    t = scan(layout, [str(tmp_path / "c")], tmp_path / "cut", sample_tokens=5)
    assert t["tokens"] == 5 and t["documents"] == 1
    counts, _ = _load(next((tmp_path / "cut" / "parts").glob("*.npz")))
    assert int(counts.ngrams[2][2].sum()) == 5  # bigram reads of the first five tokens only


def test_resume_with_another_sample_never_mixes_parts(tmp_path, layout):
    folder = corpus(tmp_path / "c", 8)
    big = scan(layout, [str(folder)], tmp_path / "out", shard_bytes=1500, sample_tokens=900)
    again = scan(layout, [str(folder)], tmp_path / "out", shard_bytes=1500, sample_tokens=300)
    clean = scan(layout, [str(folder)], tmp_path / "clean", shard_bytes=1500, sample_tokens=300)
    assert len(list((tmp_path / "out" / "parts").glob("*.npz"))) == 2 * big["shards"]
    assert again["tokens"] == clean["tokens"] < big["tokens"]
    for f in FILES:
        assert sorted_table(tmp_path / "out" / f).equals(sorted_table(tmp_path / "clean" / f))


@pytest.mark.parametrize("n", ["0", "-5", "1.5", "lots", "1e400"])
def test_bad_sample_tokens_exit_2(n, engram_cli):
    out = engram_cli("scan", "tests", "--sample-tokens", n, "-o", "x")
    assert out.returncode == 2
    assert f"--sample-tokens takes a positive whole number of tokens, got '{n}'" in out.stderr
    assert out.stderr.count("\n") == 1, out.stderr


@pytest.mark.slow
def test_local_and_ray_take_the_same_sample(tmp_path, layout, ray_cluster):
    folder = corpus(tmp_path / "c", 6)
    local = scan(layout, [str(folder)], tmp_path / "local", shard_bytes=1500, sample_tokens=700)
    ray_run = scan(
        layout, [str(folder)], tmp_path / "ray", executor="ray", workers=2, shard_bytes=1500, sample_tokens=700
    )
    assert local["tokens"] == ray_run["tokens"] <= 700 and local["shards"] > 1
    for f in FILES:
        assert sorted_table(tmp_path / "local" / f).equals(sorted_table(tmp_path / "ray" / f))


@pytest.mark.slow
def test_ray_writes_the_same_files_when_no_row_is_shared(tmp_path, ray_cluster):
    # V4.1's heads hold millions of rows: a sentence's N-grams never share one, and ngrams.parquet is empty
    v41 = load_layout("deepseek-v4.1-flash")
    folder = tmp_path / "c"
    folder.mkdir()
    (folder / "a.txt").write_text("To be, or not to be, that is the question.\n")
    local = scan(v41, [str(folder)], tmp_path / "local")
    ray_run = scan(v41, [str(folder)], tmp_path / "ray", executor="ray", workers=1)
    assert local["tokens"] == ray_run["tokens"] > 0
    for f in ("rows.parquet", "ngrams.parquet"):
        assert sorted_table(tmp_path / "local" / f).equals(sorted_table(tmp_path / "ray" / f))
    assert pq.read_table(tmp_path / "ray" / "ngrams.parquet").num_rows == 0
    assert (
        not (tmp_path / "ray" / "contexts.parquet").exists() and not (tmp_path / "local" / "contexts.parquet").exists()
    )
    assert sorted(p.name for p in (tmp_path / "local").iterdir()) == sorted(
        p.name for p in (tmp_path / "ray").iterdir()
    )
