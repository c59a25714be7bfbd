"""The V4.1 Lookups numbers: a small scan read back row by row, against brute-force counts.

The oracle addresses every position of the corpus with engram_core and counts by hand
(a Counter per row and per N-gram), so the sparse scan reading must agree exactly.
"""

from collections import Counter

import numpy as np
import pytest

from engram_core.addressing import address, address_text, local_rows, look_back
from engram_core.layout import load_layout
from engram_inspect.corpus.layout_summary import ScanStats, lookup_rows, padded, token_ngrams
from engram_inspect.corpus.scan import scan

CORPUS = ("To be, or not to be, that is the question. " * 6) + "def f(x):\n    return x + 1\n"
TEXT = "To be, or not to be, that is it."


@pytest.fixture(scope="module")
def v41():
    return load_layout("deepseek-v4.1-flash")


@pytest.fixture(scope="module")
def scanned(v41, tmp_path_factory):
    root = tmp_path_factory.mktemp("scan")
    (root / "a.txt").write_text(CORPUS)
    scan(v41, [str(root / "a.txt")], root / "out")
    return ScanStats.open(root / "out")


def oracle(v41):
    """Per layer: reads and distinct N-grams per global row; and N-gram counts per order."""
    ids = v41.encode(CORPUS)
    cids = v41.compress(ids)
    run = look_back(len(cids))
    local = local_rows(cids, run, v41)  # (L, T, H)
    grams = {
        n: [tuple(padded(v41, ids[t - min(n, int(run[t])) + 1 : t + 1].tolist(), n)) for t in range(len(ids))]
        for n in v41.spec.orders
    }
    reads, rows_ngrams = {}, {}
    for i, layer in enumerate(v41.layers):
        glob = local[i] + v41.offsets[layer]
        reads[layer] = Counter(glob.reshape(-1).tolist())
        seen = {}
        for j in range(v41.spec.heads_per_layer):
            n, _ = v41.head_of(j)
            for t in range(len(ids)):
                seen.setdefault(int(glob[t, j]), set()).add(grams[n][t])
        rows_ngrams[layer] = {r: len(g) for r, g in seen.items()}
    return reads, rows_ngrams, {n: Counter(g) for n, g in grams.items()}


def test_lookup_rows_match_brute_force(v41, scanned):
    reads, rows_ngrams, counts = oracle(v41)
    a = address_text(v41, TEXT)
    grams = token_ngrams(a)
    for pos in (0, 3, len(a.ids) - 1):
        table = lookup_rows(a, pos, scanned)
        assert len(table) == 2 * 24
        for layer, order, head, _, row, local, count, ngrams, hits in table:
            i = v41.layers.index(layer)
            j = v41.spec.head_index(order, head)
            assert row == a.rows[i, pos, j] and local == a.local[i, pos, j]
            assert hits == reads[layer].get(row, 0)
            assert ngrams == rows_ngrams[layer].get(row, 0)
            assert count == counts[order].get(tuple(padded(v41, grams[pos][order], order)), 0)
    assert lookup_rows(a, 1, scanned)[0][6] > 0  # "To be" opens the text and the corpus: a bigram seen there


def test_token_ngrams_stop_at_dead_tokens(v41):
    ids = v41.encode("a b c d").tolist()
    a = address(v41, ids, dead_ids=[ids[1]])
    g = token_ngrams(a)
    assert g[0] == {2: ids[:1], 3: ids[:1], 4: ids[:1]}  # the sequence start cuts every order
    assert g[1] == {2: [], 3: [], 4: []}  # a dead token reads only the pad
    assert g[3] == {2: ids[2:4], 3: ids[2:4], 4: ids[2:4]}  # the look-back stops after the dead token


def test_layer_table_sums_heads(scanned):
    heads = scanned.summary["heads"]
    for layer, hit, reads, rate, most in scanned.layer_table():
        mine = [h for h in heads if h["layer"] == layer]
        assert reads == sum(h["reads"] for h in mine) == 24 * scanned.summary["tokens"]
        assert hit == sum(h["rows_hit"] for h in mine)
        assert 0 <= rate <= 1 and most >= 1
    assert not np.any(scanned.row_stats(1, np.array([0, 5]))[1])  # rows nobody read: no reads


def test_not_a_scan_is_one_line(tmp_path):
    with pytest.raises(ValueError, match="is not a finished scan"):
        ScanStats.open(tmp_path)
