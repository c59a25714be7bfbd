"""Corpus traffic: cache curves by hand, and the sparse statistics against brute force."""

from collections import Counter, OrderedDict

import numpy as np
import pytest

from engram_core.addressing import address
from engram_core.compression import Compression
from engram_core.hashing import HashSpec
from engram_core.layout import MemoryLayout
from engram_inspect.corpus.reuse import lru_hits, previous_access, static_from_hist, static_hits, zipf_curve
from engram_inspect.corpus.traffic import corpus_traffic, pack, unpack


def tiny_layout(vocab: int = 50) -> MemoryLayout:
    spec = HashSpec(
        vocab_size=vocab, table_sizes=(31, 37, 41), max_ngram=4, heads_per_ngram=2, layer_ids=(1, 3), pad_id=0
    )
    comp = Compression(table=np.arange(vocab, dtype=np.int64), size=vocab)
    return MemoryLayout("tiny", spec, comp, None, 64, "float8_e4m3fn", block_dead=True, has_backbone=False)


def test_cache_curves_of_a_hand_made_stream():
    """A B A C B A D A. Reuse distances (distinct rows between two reads of a row): A@2 1, B@4 2,
    A@5 2, A@7 1; LRU hits where distance < size: size 1 none, size 2 two (2/8), size 3+ four.
    Reads per row A 4, B 2, C 1, D 1: the best static cache of 1, 2, 3, 4 rows serves 4, 6, 7, 8."""
    stream = np.array([1, 2, 1, 3, 2, 1, 4, 1], dtype=np.int64) * 1_000_003
    assert previous_access(stream).tolist() == [-1, -1, 0, -1, 1, 2, -1, 5]
    sizes = np.array([1, 2, 3, 4, 10])
    assert lru_hits(stream, sizes).tolist() == [0, 2, 4, 4, 4]
    assert static_hits(np.array([4, 2, 1, 1]), sizes).tolist() == [4, 6, 7, 8, 8]
    hist = np.bincount([4, 2, 1, 1])
    assert static_from_hist(hist, sizes).tolist() == [4, 6, 7, 8, 8]
    assert zipf_curve(hist, points=4) == [(1, 4), (2, 2), (3, 1), (4, 1)]


def lru_oracle(stream, size):
    cache, hits = OrderedDict(), 0
    for x in stream:
        if x in cache:
            hits += 1
            cache.move_to_end(x)
        else:
            cache[x] = None
            if len(cache) > size:
                cache.popitem(last=False)
    return hits


def test_lru_against_a_simulated_cache():
    rng = np.random.default_rng(3)
    stream = rng.zipf(1.4, size=4000).astype(np.int64)
    sizes = np.array([1, 3, 10, 40, 200])
    assert lru_hits(stream, sizes).tolist() == [lru_oracle(stream.tolist(), int(s)) for s in sizes]


def test_static_from_hist_equals_sorting():
    rng = np.random.default_rng(4)
    hits = rng.zipf(1.5, size=3000)
    sizes = np.array([1, 2, 7, 100, 2999, 3000, 5000])
    assert np.array_equal(static_from_hist(np.bincount(hits), sizes), static_hits(hits, sizes))


def test_pack_round_trip():
    rng = np.random.default_rng(5)
    grams = rng.integers(0, 1 << 17, size=(100, 4))
    assert np.array_equal(unpack(*pack(grams, 17), 4, 17), grams)
    with pytest.raises(ValueError, match="at most 6 slots"):
        pack(np.zeros((2, 7), np.int64), 17)


def test_traffic_equals_brute_force_addressing():
    layout = tiny_layout()
    rng = np.random.default_rng(6)
    docs = [rng.integers(0, 50, size=rng.integers(1, 60)) for _ in range(40)]
    t = corpus_traffic(layout, docs, sample_rate=1.0, shard_tokens=200)
    per_row = {layer: Counter() for layer in layout.layers}
    per_head_ngrams: dict = {}
    stream = {layer: [] for layer in layout.layers}
    for d in docs:
        a = address(layout, d)  # each document addressed alone: N-grams stop at its start
        grams = {
            n: [tuple([0] * (n - 1 - k) + d[max(0, k - n + 1) : k + 1].tolist()) for k in range(len(d))]
            for n in layout.spec.orders
        }
        for i, layer in enumerate(layout.layers):
            stream[layer].extend(a.rows[i].reshape(-1).tolist())
            for t_, row in enumerate(a.rows[i]):
                for j, r in enumerate(row.tolist()):
                    per_row[layer][r] += 1
                    order, head = layout.head_of(j)
                    per_head_ngrams.setdefault((layer, order, head, r), set()).add(grams[order][t_])
    assert t.tokens == sum(len(d) for d in docs) and t.documents == 40
    for h in t.heads:
        mine = {k: v for k, v in per_head_ngrams.items() if k[:3] == (h["layer"], h["order"], h["head"])}
        assert h["rows_hit"] == len(mine)
        assert h["ngrams"] == sum(len(v) for v in mine.values())
        assert h["max_ngrams_per_row"] == max(len(v) for v in mine.values())
    for layer in layout.layers:
        curve = [c for c in t.cache if c["layer"] == layer]
        reads = sum(per_row[layer].values())
        hits = np.array(list(per_row[layer].values()))
        for c in curve:
            assert c["static"] == pytest.approx(static_hits(hits, np.array([c["rows"]]))[0] / reads)
            assert c["lru"] == pytest.approx(lru_oracle(stream[layer], c["rows"]) / reads)


def cli(*args):
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    return subprocess.run(
        [sys.executable, "-m", "engram_inspect.commands", "traffic", *args], capture_output=True, text=True, cwd=root
    )


@pytest.mark.parametrize(
    "args, message",
    [
        (["--domains", "poetry"], "unknown domain 'poetry'"),
        (["--domains", ""], "nothing to scan"),
        (["--corpus", "/no/such/file", "--domains", ""], "cannot read /no/such/file"),
        (["--sample-rate", "1.5"], "--sample-rate must lie in (0, 1]"),
        (["--model", "nope"], "unknown model 'nope'"),
    ],
)
def test_traffic_bad_input_one_line(args, message, engram_cli):
    out = engram_cli("traffic", *args)
    assert out.returncode == 2
    assert message in out.stderr and out.stderr.count("\n") == 1, out.stderr


def test_traffic_command_writes_its_files(tmp_path, engram_cli):
    import pyarrow.parquet as pq

    (tmp_path / "mine.txt").write_text("To be, or not to be, that is the question. " * 20)
    out = engram_cli(
        "traffic",
        "--domains",
        "",
        "--corpus",
        str(tmp_path / "mine.txt"),
        "--sample-rate",
        "1",
        "-o",
        str(tmp_path / "t"),
        "--format",
        "parquet",
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("user: 1 documents")
    heads = pq.read_table(tmp_path / "t-heads.parquet").to_pylist()
    assert len(heads) == 48 and {h["domain"] for h in heads} == {"user"}
    tokens = heads[0]["reads"]
    assert all(h["reads"] == tokens for h in heads)
    cache = pq.read_table(tmp_path / "t-cache.parquet").to_pylist()
    big = [c for c in cache if c["rows"] >= 24 * tokens]
    assert big and all(c["static"] == 1.0 for c in big)  # a cache as large as the reads holds every row
    assert (tmp_path / "t-cache.html").stat().st_size > 1000
