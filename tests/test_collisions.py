"""The collision index: a planted collision, a naive per-position oracle, files and the shipped model."""

from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch

from engram_core import Checkpoint, HashSpec, hash_ids
from engram_inspect.base.cache import checkpoint_key
from engram_inspect.memory.collisions import (
    CollisionIndex,
    CollisionIndexError,
    build_collision_index,
    build_index,
    load_or_build,
    ngram_text,
    representatives,
)
from engram_inspect.memory.ngram_keys import check_packable, corpus_fingerprint, pack_ngram, unpack_keys

SPEC = HashSpec(vocab_size=50, table_sizes=(31, 37), max_ngram=3, heads_per_ngram=2, layer_ids=(0, 1), pad_id=0)
IDENTITY = np.arange(SPEC.vocab_size)


def bigram_row_by_hand(spec: HashSpec, layer: int, head: int, a: int, b: int) -> int:
    """eq. 1 in Python integers: (b * m0 XOR a * m1) mod p, for the bigram (a, b)."""
    m = [int(x) for x in spec.multipliers[layer]]
    return ((b * m[0]) ^ (a * m[1])) % spec.primes[layer][spec.head_index(2, head)]


def planted_pair(spec: HashSpec, layer: int, head: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """Two bigrams (a1, b1), (a2, b2) that share a row on one head, while the start-of-sequence
    bigrams (pad, a1) and (pad, a2) land on two other rows of their own."""
    grams = np.array([(a, b) for a in range(1, spec.vocab_size) for b in range(1, spec.vocab_size)])
    rows = hash_ids(grams, spec, layer)[:, -1, spec.head_index(2, head)].numpy()
    by_row = defaultdict(list)
    for g, r in zip(grams, rows, strict=True):
        by_row[int(r)].append((int(g[0]), int(g[1])))
    pad = spec.pad_id
    for row, gs in sorted(by_row.items()):
        for g1 in gs:
            for g2 in gs:
                if g1[0] >= g2[0]:
                    continue
                starts = {bigram_row_by_hand(spec, layer, head, pad, g[0]) for g in (g1, g2)}
                if len(starts) == 2 and row not in starts:
                    return g1, g2
    raise AssertionError("no planted pair found")


def test_planted_collision():
    layer, head = 1, 0
    g1, g2 = planted_pair(SPEC, layer, head)
    row = bigram_row_by_hand(SPEC, layer, head, *g1)
    assert row == bigram_row_by_hand(SPEC, layer, head, *g2)  # the pair really collides
    # each stream starts after pad: order-2 N-grams (pad, a1) x3, g1 x3, (pad, a2) x5, g2 x5
    streams = [np.array(g1)] * 3 + [np.array(g2)] * 5
    index = build_index(SPEC, IDENTITY, streams, key="k")
    assert index.ngrams_at(layer, 2, head, row) == [(g2, 5), (g1, 3)]
    assert index.collision_rate(layer, 2, head) == pytest.approx((3 + 5) / 16)
    assert index.count(g1) == 3 and index.count(g2) == 5
    assert index.count((SPEC.pad_id, g2[0])) == 5
    assert list(index.row_of(g1, layer))[head] == row
    assert index.alone_heads((SPEC.pad_id, g1[0]), layer) >= 1  # its head-0 row is its own
    assert index.n_positions == 16


def naive_index(streams: list[np.ndarray], table: np.ndarray, spec: HashSpec) -> dict:
    """(layer, order, head, row) -> Counter of N-grams, one Python step per position."""
    out: dict = defaultdict(Counter)
    for s in streams:
        cids = [int(table[x]) for x in s]
        if not cids:
            continue
        padded = [spec.pad_id] * (spec.max_ngram - 1) + cids
        rows = {layer: hash_ids([cids], spec, layer)[0].tolist() for layer in spec.layer_ids}
        for t in range(len(cids)):
            for order in spec.orders:
                g = tuple(padded[t + spec.max_ngram - order : t + spec.max_ngram])
                for layer in spec.layer_ids:
                    for head in range(spec.heads_per_ngram):
                        out[(layer, order, head, rows[layer][t][spec.head_index(order, head)])][g] += 1
    return out


@pytest.fixture(scope="module")
def random_case():
    rng = np.random.default_rng(7)
    spec = HashSpec(vocab_size=9, table_sizes=(11, 13), max_ngram=3, heads_per_ngram=3, layer_ids=(2, 0), pad_id=1)
    table = rng.integers(0, spec.vocab_size, size=20)
    table[: spec.vocab_size] = np.arange(spec.vocab_size)  # onto, with many raw ids per compressed id
    streams = [rng.integers(0, 20, size=n).astype(np.uint16) for n in (300, 1, 0, 57, 120)]
    return spec, table, streams, build_index(spec, table, streams, key="rand")


def test_vectorised_matches_naive_loop(random_case):
    spec, table, streams, index = random_case
    naive = naive_index(streams, table, spec)
    for layer in spec.layer_ids:
        for order in spec.orders:
            for head in range(spec.heads_per_ngram):
                prime = spec.primes[layer][spec.head_index(order, head)]
                occ = index.occupancy(layer, order, head)
                shared = total = 0
                for row in range(prime):
                    got = index.ngrams_at(layer, order, head, row)
                    want = naive.get((layer, order, head, row), Counter())
                    assert dict(got) == dict(want), (layer, order, head, row)
                    assert [c for _, c in got] == sorted(want.values(), reverse=True)
                    assert occ[row] == len(want)
                    total += sum(want.values())
                    shared += sum(want.values()) if len(want) > 1 else 0
                assert index.collision_rate(layer, order, head) == pytest.approx(shared / total)
    assert index.n_positions == sum(len(s) for s in streams)


def test_alone_heads_and_counts_match_naive(random_case):
    spec, table, streams, index = random_case
    naive = naive_index(streams, table, spec)
    for layer in spec.layer_ids:
        for order in spec.orders:
            alone = index.alone_heads_all(layer, order)
            grams = unpack_keys(index.keys[order], order, spec.vocab_size)
            for i, g in enumerate(map(tuple, grams.tolist())):
                want = sum(len(naive[(layer, order, h, int(r))]) == 1 for h, r in enumerate(index.row_of(g, layer)))
                assert alone[i] == want == index.alone_heads(g, layer)
                assert index.count(g) == naive[(layer, order, 0, int(index.row_of(g, layer)[0]))][g]
            assert np.array_equal(index.rows(layer, order, 0), [index.row_of(g, layer)[0] for g in grams.tolist()])


def test_unseen_ngram(random_case):
    spec, _, _, index = random_case
    seen = {g for g in map(tuple, unpack_keys(index.keys[3], 3, spec.vocab_size).tolist())}
    unseen = next((a, b, c) for a in range(9) for b in range(9) for c in range(9) if (a, b, c) not in seen)
    assert index.count(unseen) == 0
    assert index.count((0, 99)) == 0  # not even a compressed id
    with pytest.raises(ValueError, match="order 4"):
        index.count((1, 2, 3, 4))


def test_save_load_round_trip_and_key_refusal(random_case, tmp_path):
    _, _, _, index = random_case
    path = index.save(tmp_path / "c.npz")
    back = CollisionIndex.load(path, "rand")
    assert (back.spec, back.checkpoint_key, back.corpus, back.n_positions) == (
        index.spec,
        index.checkpoint_key,
        index.corpus,
        index.n_positions,
    )
    for name in ("keys", "counts", "perm", "indptr"):
        a, b = getattr(index, name), getattr(back, name)
        assert a.keys() == b.keys()
        for k in a:
            assert a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]), (name, k)
    assert back.head_table() == index.head_table()
    with pytest.raises(CollisionIndexError, match="built for checkpoint rand"):
        CollisionIndex.load(path, "another-key")
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(CollisionIndexError, match="cannot be read"):
        CollisionIndex.load(tmp_path / "bad.npz", "rand")


def test_packing():
    assert pack_ngram((3, 4, 5), 10) == 345
    assert unpack_keys(np.array([345, 7]), 3, 10).tolist() == [[3, 4, 5], [0, 0, 7]]
    check_packable(2698, 3)
    with pytest.raises(ValueError, match="do not fit an int64"):
        check_packable(10**7, 3)


def test_checkpoint_cache_and_text(tiny_model, tiny_parts, tmp_path, monkeypatch):
    tok, comp, pad = tiny_parts
    monkeypatch.setenv("ENGRAM_CACHE", str(tmp_path / "cache"))
    ck = Checkpoint(model=tiny_model, tokenizer=tok, meta={}, path=tmp_path / "ck")
    ids = np.array(tok.encode("To be, or not to be, that is the question.").ids, dtype=np.uint16)
    progress = []
    first = load_or_build(ck, [ids, ids[:5]], progress=lambda d, t, m: progress.append((d, t)))
    assert progress[0] == (0, 6) and (6, 6) in progress
    files = list(Path(tmp_path).rglob("collisions-*.npz"))
    assert len(files) == 1 and files[0].parent == tmp_path / "cache" / checkpoint_key(ck)
    again = load_or_build(ck, [ids, ids[:5]], progress=lambda *_: pytest.fail("rebuilt instead of loading"))
    assert again.head_table() == first.head_table()
    assert build_collision_index(ck, [ids, ids[:5]]).head_table() == first.head_table()
    # every compressed id is spelled by the first raw id that maps to it
    reps = representatives(comp.table, comp.size)
    for c in range(comp.size):
        assert reps[c] == np.flatnonzero(comp.table == c)[0]
    g = (int(comp.table[ids[-3]]), int(comp.table[ids[-2]]))
    assert ngram_text(ck, g) == tok.decode([int(reps[g[0]]), int(reps[g[1]])], skip_special_tokens=False)
    assert ngram_text(ck, (pad, g[0])).startswith("<|endoftext|>")
    assert first.count(g) >= 1


@pytest.mark.slow
def test_shipped_model_rows_match_hooks():
    from engram_core import load_checkpoint
    from engram_core.pipeline import prepare_corpus

    ck = load_checkpoint("assets/default-model")
    _, streams, _ = prepare_corpus(log=lambda *_: None, tokenizer=ck.tokenizer)
    sample = [streams["val/plays"][:4000], streams["val/code"][:4000]]
    index = build_collision_index(ck, sample)
    spec = ck.model.cfg.memory.hash_spec
    for s in sample:
        ids = torch.as_tensor(s[:200].astype(np.int64))[None]
        names = [f"blocks.{ly}.engram.hook_hash_ids" for ly in spec.layer_ids]
        _, cache = ck.model.run_with_cache(ids, names=names)
        padded = [spec.pad_id] * (spec.max_ngram - 1) + ck.model.compression[ids[0]].tolist()
        for t in (0, 1, 2, 57, 199):
            for ly in spec.layer_ids:
                for order in spec.orders:
                    g = tuple(padded[t + spec.max_ngram - order : t + spec.max_ngram])
                    for head in range(spec.heads_per_ngram):
                        row = int(cache[f"blocks.{ly}.engram.hook_hash_ids"][0, t, spec.head_index(order, head)])
                        at = dict(index.ngrams_at(ly, order, head, row))
                        assert at.get(g, 0) == index.count(g) >= 1, (t, ly, order, head)


def test_an_index_of_another_training_corpus_is_rebuilt(tiny_model, tiny_parts, tmp_path, monkeypatch):
    """A shared cache may hold the index another interpreter built from its standard library."""
    from engram_inspect.memory import collisions

    tok = tiny_parts[0]
    monkeypatch.setenv("ENGRAM_CACHE", str(tmp_path / "cache"))
    ck = Checkpoint(model=tiny_model, tokenizer=tok, meta={}, path=tmp_path / "ck")
    a = [np.array(tok.encode("To be, or not to be, that is the question.").ids, dtype=np.uint16)]
    b = [np.array(tok.encode("I pray you, my lord, let me know your pleasure.").ids, dtype=np.uint16)]
    monkeypatch.setattr(collisions, "training_streams", lambda _ck: a)
    first = load_or_build(ck)
    assert load_or_build(ck, progress=lambda *_: pytest.fail("rebuilt instead of loading")).corpus == first.corpus
    monkeypatch.setattr(collisions, "training_streams", lambda _ck: b)
    assert load_or_build(ck).corpus == corpus_fingerprint(b) != first.corpus
