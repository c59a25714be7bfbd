"""`engram cache-sim`: every policy against a slow, obvious reference (exact hits), Belady
never beaten, the static set, pages, streams, prefetch, chunking, scans, bad arguments."""

from collections import OrderedDict
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from engram_core.layout import load_layout
from engram_inspect.corpus.reuse import static_hits
from engram_inspect.serving.caches import Cache, StaticSet, belady_hits, flat_ptr, simple_hits
from engram_inspect.serving.simulate import Grid, parse_capacities, parse_capacity, simulate
from engram_inspect.serving.traces import document_rows, interleave

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "assets" / "default-model"


def streams():
    rng = np.random.default_rng(7)
    return {
        "random": rng.integers(0, 300, 6000),
        "zipf": rng.zipf(1.2, 6000) % 4000,
        "loop": np.tile(np.arange(70), 60),  # a loop just over some capacities: LRU's worst case
    }


# -- slow, obvious references ------------------------------------------------------------------


def lru_touch(cache: OrderedDict, x, cap: int) -> bool:
    """One read of x through an LRU cache of `cap` entries (the OrderedDict's first is least recent)."""
    hit = x in cache
    if hit:
        cache.move_to_end(x)
    else:
        cache[x] = True
        if len(cache) > cap:
            cache.popitem(last=False)
    return hit


def ref_lru(s, cap):
    cache = OrderedDict()
    return np.array([lru_touch(cache, x, cap) for x in s.tolist()])


def ref_clock(s, cap):
    slots, ref, where, hand, out = [None] * cap, [0] * cap, {}, 0, []
    for x in s.tolist():
        if x in where:
            ref[where[x]] = 1
            out.append(True)
            continue
        out.append(False)
        if len(where) < cap:
            i = len(where)
        else:
            while ref[hand]:
                ref[hand] = 0
                hand = (hand + 1) % cap
            i, hand = hand, (hand + 1) % cap
            del where[slots[i]]
        slots[i], ref[i], where[x] = x, 1, i
    return np.array(out)


def ref_set_assoc(s, cap, ways):
    from engram_inspect.serving.kernels import _hash

    sets = [OrderedDict() for _ in range(cap // ways)]
    pick = lambda x: sets[(_hash(np.int64(x)) & 0x7FFFFFFFFFFFFFFF) % len(sets)]  # noqa: E731
    return np.array([lru_touch(pick(x), x, ways) for x in s.tolist()])


def ref_belady(s, cap):
    """MIN by brute force: on a miss with a full cache, evict (or skip) whatever is read again last."""
    s = s.tolist()
    cache, hits = set(), 0

    def next_read(x, i):
        for j in range(i + 1, len(s)):
            if s[j] == x:
                return j
        return len(s) + 1

    for i, x in enumerate(s):
        if x in cache:
            hits += 1
            continue
        if len(cache) < cap:
            cache.add(x)
            continue
        far = max(cache, key=lambda y: next_read(y, i))
        if next_read(far, i) > next_read(x, i):
            cache.remove(far)
            cache.add(x)
    return hits


@pytest.mark.parametrize("name", ["random", "zipf", "loop"])
@pytest.mark.parametrize("cap", [1, 16, 64, 256])
def test_dynamic_policies_equal_their_references_read_for_read(name, cap):
    s = streams()[name]
    assert (simple_hits("lru", s, cap) == ref_lru(s, cap)).all()
    assert (simple_hits("clock", s, cap) == ref_clock(s, cap)).all()
    for ways in (1, 4, 16):
        if cap % ways == 0:
            assert (simple_hits("set-assoc", s, cap, ways) == ref_set_assoc(s, cap, ways)).all()
    # a single set of `cap` ways is a fully associative LRU
    assert (simple_hits("set-assoc", s, cap, cap) == ref_lru(s, cap)).all()


@pytest.mark.parametrize("name", ["random", "zipf", "loop"])
@pytest.mark.parametrize("cap", [1, 8, 40])
def test_belady_equals_brute_force_min_and_is_never_beaten(name, cap):
    s = streams()[name][:1500]
    best = belady_hits(s, cap)
    assert int(best.sum()) == ref_belady(s, cap)
    for policy, ways in (("lru", 0), ("clock", 0), ("set-assoc", 4 if cap % 4 == 0 else 1)):
        assert best.sum() >= simple_hits(policy, s, cap, ways).sum()
    # the static set is loaded before the stream: counting its rows' first reads as misses, it is a
    # policy that never evicts, which MIN cannot lose to
    static = StaticSet.from_stream(s, cap)
    inside = static.hits(s)
    assert best.sum() >= inside.sum() - len(np.unique(s[inside]))


def test_static_on_its_own_stream_is_the_best_static_set():
    s = streams()["zipf"]
    _, counts = np.unique(s, return_counts=True)
    sizes = np.array([1, 10, 100, 1000, 5000])
    best = static_hits(counts, sizes)
    got = [int(StaticSet.from_stream(s, int(c)).hits(s).sum()) for c in sizes]
    assert got == best.tolist()


def ref_lru_prefetch(tokens, cap, look, bw):
    """LRU with a prefetcher, token by token: after token t, the rows of token t + look are queued
    (after token 0, those of tokens 1..look);
    up to `bw` queued rows still ahead are fetched (a cached one is touched for free)."""
    cache, queue, misses, fetched = OrderedDict(), [], 0, 0

    def touch(x):
        return lru_touch(cache, x, cap)

    for t, rows in enumerate(tokens):
        misses += sum(not touch(x) for x in rows)
        for k in range(1 if t == 0 else look, look + 1):  # after the first token, tokens 1..look are known
            if t + k < len(tokens):
                queue += [(x, t + k) for x in tokens[t + k]]
        budget = bw
        while budget and queue:
            x, need = queue.pop(0)
            if need <= t:
                continue
            if not touch(x):
                budget -= 1
                fetched += 1
    return misses, fetched


@pytest.mark.parametrize("look,bw", [(1, 1), (1, 4), (3, 2), (5, 8)])
def test_prefetch_equals_its_reference(look, bw):
    rng = np.random.default_rng(look * 10 + bw)
    tokens = (rng.zipf(1.3, (800, 4)) % 500).astype(np.int64)
    want = ref_lru_prefetch(tokens.tolist(), 64, look, bw)
    c = Cache("lru", 64, 0, look, bw, (look + 1) * 4 + 1)
    ptr = flat_ptr(len(tokens), 4)
    ptr = np.concatenate([ptr, np.full(look, ptr[-1])])  # nothing to peek at past the end
    hit, _ = c.feed(tokens.reshape(-1), ptr, len(tokens))
    assert (int((~hit).sum()), int(c.stats[0])) == want


@pytest.fixture(scope="module")
def layout():
    return load_layout(MODEL)


@pytest.fixture(scope="module")
def docs(layout):
    src = [(ROOT / "engram_core" / f).read_text() for f in ("hashing.py", "layout.py", "engram.py", "model.py")]
    return [layout.encode(t) for t in src]


GRID = Grid(capacities=tuple(parse_capacities("512,2048,64KiB")), ways=4)


def test_a_chunked_stream_gives_the_same_figures_as_one_chunk(layout, docs):
    g = replace(GRID, lookahead=2, bandwidth=6)
    whole = simulate(layout, lambda: docs, g, streams=3, granularity="page", chunk=1 << 20)
    cut = simulate(layout, lambda: docs, g, streams=3, granularity="page", chunk=97)
    assert whole == cut


def test_pages_of_one_row_equal_rows(layout, docs):
    wide = replace(layout, d_head=2048, dtype="bfloat16")  # 4096-byte rows: a page holds one row
    assert wide.row_bytes == 4096
    g = replace(GRID, capacities=tuple(parse_capacities("512,2MiB")))
    rows = simulate(wide, lambda: docs, g, granularity="row")
    pages = simulate(wide, lambda: docs, g, granularity="page")
    key = ("layer", "policy", "capacity_units", "reads", "hits", "bytes_per_token")
    assert [[r[k] for k in key] for r in rows] == [[r[k] for k in key] for r in pages]
    assert all(r["amplification"] == 1.0 for r in pages)


def test_pages_read_more_bytes_than_rows(layout, docs):
    recs = simulate(layout, lambda: docs, replace(GRID, policies=("lru",)), granularity="page")
    assert all(r["amplification"] >= 4096 / layout.row_bytes * 0.99 for r in recs if r["amplification"])


def test_streams_interleave_round_robin_and_refill(layout):
    a, b, c = (np.arange(k, k + n) for k, n in ((10, 3), (20, 2), (30, 2)))
    blocks = list(interleave(layout, [a, b, c], 2))
    got = np.concatenate(blocks, axis=1)[0]  # layer 0, (tokens, H)
    ra, rb, rc = (r[0] for r in document_rows(layout, [a, b, c]))
    want = np.stack([ra[0], rb[0], ra[1], rb[1], ra[2], rc[0], rc[1]])
    assert (got == want).all()


def test_more_streams_hit_less(layout, docs):
    g = replace(GRID, policies=("lru",), capacities=tuple(parse_capacities("2048")))
    one = simulate(layout, lambda: docs, g, streams=1)
    four = simulate(layout, lambda: docs, g, streams=4)
    assert [r["reads"] for r in one] == [r["reads"] for r in four]
    assert all(f["hit_rate"] < o["hit_rate"] for o, f in zip(one, four, strict=True))


def test_prefetch_takes_misses_off_the_critical_path(layout, docs):
    g = replace(GRID, policies=("lru",), capacities=tuple(parse_capacities("64KiB")))
    base = simulate(layout, lambda: docs, g)
    fetched = simulate(layout, lambda: docs, replace(g, lookahead=1, bandwidth=layout.spec.heads_per_layer))
    for b, f in zip(base, fetched, strict=True):
        # every read after the first token's was fetched a token ahead; nothing is known before the first
        assert f["reads"] - f["hits"] == layout.spec.heads_per_layer < b["reads"] - b["hits"]
        assert f["prefetched"] > 0


def test_static_from_the_trace_is_its_best_static_set(layout, docs):
    recs = simulate(layout, lambda: docs, replace(GRID, policies=("static",)))
    for r in recs:
        i = layout.layers.index(r["layer"])
        stream = np.concatenate([d[i].reshape(-1) for d in document_rows(layout, docs)])
        _, counts = np.unique(stream, return_counts=True)
        assert r["hits"] == int(static_hits(counts, np.array([r["capacity_units"]]))[0])


def test_capacities_parse():
    assert parse_capacity("100000").rows == 100000
    assert parse_capacity("1.5GiB").nbytes == 3 << 29
    assert parse_capacity("512KiB").nbytes == 512 << 10
    for bad in ("0", "-5", "12 apples", "1.5", "MiB", "0MiB"):
        with pytest.raises(ValueError):
            parse_capacity(bad)


BAD = [
    (["--capacity", "0"], "capacity must be positive"),
    (["--capacity", "-5"], "capacity"),
    (["--capacity", "1000", "--ways", "16"], "16 ways do not divide a capacity of 1,000 rows"),
    (["--policies", "lru,mru"], "unknown policy 'mru'"),
    (["--granularity", "byte"], "unknown granularity 'byte'"),
    (["--streams", "0"], "--streams takes positive integers"),
    (["--lookahead", "2"], "needs --bandwidth"),
    (["--scan", "/nonexistent"], "not a finished scan"),
]


@pytest.mark.parametrize("extra,message", BAD)
def test_bad_arguments_get_one_line_and_exit_2(engram_cli, extra, message):
    r = engram_cli("cache-sim", "--model", str(MODEL), "--domains", "code", *extra)
    assert r.returncode == 2, r.stderr
    assert message in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_a_scan_replays_its_corpus_and_refuses_another_layout(tmp_path, layout, engram_cli):
    from test_scan import corpus

    from engram_inspect.corpus.scan import scan

    folder = corpus(tmp_path / "c")
    scan(layout, [str(folder)], tmp_path / "out", shard_bytes=1500)
    args = ["cache-sim", "--model", str(MODEL), "--capacity", "1024,16384", "--streams", "1,2"]
    a = engram_cli(*args, "--scan", str(tmp_path / "out"), "-o", str(tmp_path / "a"))
    b = engram_cli(*args, "--corpus", str(folder), "-o", str(tmp_path / "b"))
    assert a.returncode == 0 and b.returncode == 0, a.stderr + b.stderr
    import pyarrow.parquet as pq

    ta, tb = pq.read_table(tmp_path / "a.parquet"), pq.read_table(tmp_path / "b.parquet")
    assert ta.num_rows == 2 * 5 * 2 * 2 and ta.equals(tb)
    assert "Per layer for 80% hits" in a.stdout
    assert (tmp_path / "a.html").stat().st_size > 10_000
    # a static set trained on the scan's counts equals one trained on the same corpus's texts
    s1 = engram_cli(
        *args[:-2],
        "--policies",
        "static",
        "--corpus",
        str(folder),
        "--static-from",
        str(tmp_path / "out"),
        "-o",
        str(tmp_path / "s1"),
    )
    s2 = engram_cli(
        *args[:-2],
        "--policies",
        "static",
        "--corpus",
        str(folder),
        "--static-from",
        str(folder),
        "-o",
        str(tmp_path / "s2"),
    )
    assert s1.returncode == 0 and s2.returncode == 0, s1.stderr + s2.stderr
    h1 = pq.read_table(tmp_path / "s1.parquet").column("hits").to_pylist()
    assert h1 == pq.read_table(tmp_path / "s2.parquet").column("hits").to_pylist()
    r = engram_cli("cache-sim", "--model", "deepseek-v4.1-flash", "--scan", str(tmp_path / "out"))
    assert r.returncode == 2 and "not 'deepseek-v4.1-flash'" in r.stderr


def test_ray_gives_the_local_records(tmp_path, ray_cluster, engram_cli):
    args = ["cache-sim", "--model", str(MODEL), "--domains", "plays", "--split", "val", "--max-tokens", "3000"]
    args += ["--capacity", "1024,64KiB", "--policies", "lru,set-assoc,belady", "--streams", "1,4"]
    local = engram_cli(*args, "-o", str(tmp_path / "local"))
    ray = engram_cli(*args, "--ray", "-o", str(tmp_path / "ray"))
    assert local.returncode == 0 and ray.returncode == 0, local.stderr + ray.stderr
    import pyarrow.parquet as pq

    a, b = pq.read_table(tmp_path / "local.parquet"), pq.read_table(tmp_path / "ray.parquet")
    assert a.num_rows == 2 * 3 * 2 * 2 and a.equals(b)


@pytest.mark.parametrize("policy,ref", [("lru", ref_lru), ("clock", ref_clock)])
def test_caches_that_grow_their_slots_chunk_by_chunk_equal_the_reference(policy, ref):
    """LRU and CLOCK start with 1,024 slots and grow as they fill: fed in small chunks, nothing changes."""
    s = np.random.default_rng(3).integers(0, 9000, 30000)
    c = Cache(policy, 5000)
    hits = np.concatenate(
        [
            c.feed(s[i : i + 777], flat_ptr(len(s[i : i + 777]), 1), len(s[i : i + 777]))[0]
            for i in range(0, len(s), 777)
        ]
    )
    assert len(c.slot_key) == 5000 and (hits == ref(s, 5000)).all()
