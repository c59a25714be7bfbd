"""Hashing: bit-exact with the reference vectors, a hand-computed case, and a naive oracle."""

import json
from pathlib import Path

import numpy as np
import pytest

from engram_core.hashing import HashSpec, hash_ids, is_prime, suffix_ngrams, table_primes

VECTORS = Path(__file__).parent / "data" / "engram_hash_vectors.json"


def spec_of(cfg: dict) -> HashSpec:
    return HashSpec(**{k: cfg[k] for k in HashSpec.__dataclass_fields__})


def cases():
    return json.loads(VECTORS.read_text())["cases"]


@pytest.mark.parametrize("case", cases(), ids=lambda c: c["name"])
def test_reference_vectors_bit_exact(case):
    spec = spec_of(case["config"])
    ids = np.asarray(case["input_ids"], dtype=np.int64).reshape(len(case["input_ids"]), -1)
    for layer in spec.layer_ids:
        assert list(spec.primes[layer]) == case["primes"][str(layer)]
        assert spec.multipliers[layer].tolist() == case["multipliers"][str(layer)]
        got = hash_ids(ids, spec, layer).numpy()
        want = np.asarray(case["expected"][str(layer)], dtype=np.int64).reshape(got.shape)
        np.testing.assert_array_equal(got, want)


def test_hand_computed_five_tokens():
    """V'=10, one head per order, primes 5 (order 2) and 7 (order 3), multipliers [1, 3, 5], pad 0.

    ids 1 2 3 4 0:
      order 2: x_t*1 ^ x_{t-1}*3 = 1^0=1, 2^3=1, 3^6=5, 4^9=13, 0^12=12  -> mod 5: 1 1 0 3 2
      order 3: that ^ x_{t-2}*5   = 1^0=1, 1^0=1, 5^5=0, 13^10=7, 12^15=3 -> mod 7: 1 1 0 0 3
    """
    spec = HashSpec(vocab_size=10, table_sizes=(5, 7), max_ngram=3, heads_per_ngram=1, layer_ids=(0,), pad_id=0)
    assert spec.primes[0] == (5, 7)
    spec.__dict__["multipliers"] = {0: np.array([1, 3, 5], dtype=np.int64)}
    rows = hash_ids([[1, 2, 3, 4, 0]], spec, 0)
    assert rows.tolist() == [[[1, 1], [1, 1], [0, 0], [3, 0], [2, 3]]]


def naive_hash(ids: np.ndarray, spec: HashSpec, layer: int) -> np.ndarray:
    """Per-position, per-head Python-int loop straight from eq. 1."""
    m = [int(x) for x in spec.multipliers[layer]]
    primes = spec.primes[layer]
    B, T = ids.shape
    out = np.zeros((B, T, spec.heads_per_layer), dtype=np.int64)
    for b in range(B):
        for t in range(T):
            for n in spec.orders:
                mix = 0
                for k in range(n):
                    x = int(ids[b, t - k]) if t - k >= 0 else spec.pad_id
                    mix ^= x * m[k]
                for h in range(spec.heads_per_ngram):
                    out[b, t, spec.head_index(n, h)] = mix % primes[spec.head_index(n, h)]
    return out


def test_vectorised_matches_naive_loop(rng):
    spec = HashSpec(vocab_size=3135, table_sizes=(27000, 27000, 9000), max_ngram=4, heads_per_ngram=3, layer_ids=(1, 2))
    ids = rng.integers(0, spec.vocab_size, size=(3, 40))
    for layer in spec.layer_ids:
        np.testing.assert_array_equal(hash_ids(ids, spec, layer).numpy(), naive_hash(ids, spec, layer))


def test_primes_distinct_and_ordered():
    spec = HashSpec(vocab_size=100, table_sizes=(50, 50), max_ngram=3, heads_per_ngram=4, layer_ids=(3, 0))
    primes = table_primes(spec)
    flat = [p for layer in spec.layer_ids for p in primes[layer]]
    assert len(set(flat)) == len(flat) == 16
    assert all(is_prime(p) for p in flat)
    assert primes[3][:4] == (53, 59, 61, 67)  # layer 3 comes first in configured order
    assert primes[0][0] > primes[3][-1]


def test_empty_and_single_token():
    spec = HashSpec(vocab_size=50, table_sizes=(11, 13), layer_ids=(0,), pad_id=3)
    assert tuple(hash_ids(np.zeros((2, 0), dtype=np.int64), spec, 0).shape) == (2, 0, 8)
    one = hash_ids([[7]], spec, 0)
    padded = hash_ids([[3, 3, 7]], spec, 0)
    assert one[0, 0].tolist() == padded[0, 2].tolist()  # before the start reads the pad id


def test_suffix_ngrams_oldest_first():
    spec = HashSpec(vocab_size=10, table_sizes=(5, 7), pad_id=0)
    assert suffix_ngrams([[4, 5, 6]], spec, 3).tolist() == [[[0, 0, 4], [0, 4, 5], [4, 5, 6]]]


@pytest.mark.parametrize(
    "ids, err",
    [([[0, 10]], ValueError), ([[-1]], ValueError), ([1, 2], ValueError), (np.array([[0.5]]), TypeError)],
)
def test_bad_ids_rejected(ids, err):
    spec = HashSpec(vocab_size=10, table_sizes=(5, 7), layer_ids=(0,))
    with pytest.raises(err):
        hash_ids(ids, spec, 0)


def test_bad_spec_rejected():
    with pytest.raises(ValueError, match="table_sizes"):
        HashSpec(vocab_size=10, table_sizes=(5,), max_ngram=3)
    with pytest.raises(ValueError, match="pad_id"):
        HashSpec(vocab_size=10, table_sizes=(5, 7), pad_id=10)
    spec = HashSpec(vocab_size=10, table_sizes=(5, 7), layer_ids=(0,))
    with pytest.raises(ValueError, match="not an Engram layer"):
        hash_ids([[1]], spec, 5)
