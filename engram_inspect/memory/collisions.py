"""Which N-grams share a memory row: a corpus-wide collision index (ENGRAM.md §2-3).

The row a position reads depends only on its suffix N-gram (compressed ids, pad
before the sequence start), so the index hashes every *distinct* N-gram once and
groups them by row, head by head. This module is not a capture of one text and
does not look at weights: it only says which N-grams the corpus sends to each row
and how often.

N-grams are tuples of compressed ids, oldest token first, packed into int64 keys
(`ngram_keys`).

U distinct N-grams of one order, P rows (the prime) of one head, n order.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engram_core import Checkpoint, HashSpec

from ..base.cache import cache_file, checkpoint_key
from .ngram_keys import (
    Streams,
    as_list,
    check_packable,
    corpus_fingerprint,
    group_by_row,
    ngram_rows,
    pack_ngram,
    position_keys,
    unpack_keys,
)

FORMAT = "engram-collisions/1"

Progress = Callable[[int, int, str], None]


class CollisionIndexError(ValueError):
    """A collision index file that cannot be used, with the reason."""


# --- the index ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class CollisionIndex:
    """Distinct N-grams of a corpus, their counts, and which of them share each row."""

    spec: HashSpec  # the hash that fixes the rows
    checkpoint_key: str  # `cache.checkpoint_key` of the model the index was built for
    corpus: str  # `corpus_fingerprint` of the streams that were counted
    n_positions: int  # token positions counted (each has one N-gram of every order)
    keys: dict[int, np.ndarray]  # order -> (U,) sorted packed N-grams
    counts: dict[int, np.ndarray]  # order -> (U,) occurrences of each N-gram
    perm: dict[tuple[int, int], np.ndarray]  # (layer, order) -> (heads, U) N-gram indices sorted by row
    indptr: dict[tuple[int, int, int], np.ndarray]  # (layer, order, head) -> (P + 1,) row starts in perm

    # -- lookups --------------------------------------------------------------------------------

    def _check(self, layer: int, order: int, head: int = 0) -> None:
        if layer not in self.spec.layer_ids or order not in self.spec.orders:
            raise ValueError(
                f"no table for layer {layer}, order {order}: layers {self.spec.layer_ids}, orders {self.spec.orders}"
            )
        if not 0 <= head < self.spec.heads_per_ngram:
            raise ValueError(f"head {head} outside 0..{self.spec.heads_per_ngram - 1}")

    def prime(self, layer: int, order: int, head: int) -> int:
        self._check(layer, order, head)
        return self.spec.primes[layer][self.spec.head_index(order, head)]

    def ngram_tuple(self, order: int, index: int) -> tuple[int, ...]:
        return tuple(int(x) for x in unpack_keys(self.keys[order][index : index + 1], order, self.spec.vocab_size)[0])

    def find(self, ngram: tuple[int, ...]) -> int:
        """Index of an N-gram among its order's distinct N-grams, or -1 if the corpus never had it."""
        order = len(ngram)
        if order not in self.spec.orders:
            raise ValueError(f"N-gram {ngram} has order {order}; this index holds orders {self.spec.orders}")
        if any(not 0 <= int(x) < self.spec.vocab_size for x in ngram):
            return -1  # not a compressed id: never seen
        key = pack_ngram(ngram, self.spec.vocab_size)
        keys = self.keys[order]
        i = int(np.searchsorted(keys, key))
        return i if i < len(keys) and int(keys[i]) == key else -1

    def count(self, ngram: tuple[int, ...]) -> int:
        """Occurrences of an N-gram in the indexed corpus (0 if unseen)."""
        i = self.find(ngram)
        return 0 if i < 0 else int(self.counts[len(ngram)][i])

    def occupancy(self, layer: int, order: int, head: int) -> np.ndarray:
        """Distinct N-grams per row of one head: (P,)."""
        self._check(layer, order, head)
        return np.diff(self.indptr[(layer, order, head)])

    def rows(self, layer: int, order: int, head: int) -> np.ndarray:
        """Row of every distinct N-gram of the order on one head: (U,), aligned with `keys[order]`."""
        occ = self.occupancy(layer, order, head)
        out = np.empty(len(self.keys[order]), dtype=np.int64)
        out[self.perm[(layer, order)][head]] = np.repeat(np.arange(len(occ)), occ)
        return out

    def ngrams_at(self, layer: int, order: int, head: int, row: int) -> list[tuple[tuple[int, ...], int]]:
        """The distinct N-grams that read one row, with their counts, most frequent first."""
        self._check(layer, order, head)
        ptr = self.indptr[(layer, order, head)]
        if not 0 <= row < len(ptr) - 1:
            raise ValueError(f"row {row} outside 0..{len(ptr) - 2}")
        idx = self.perm[(layer, order)][head][ptr[row] : ptr[row + 1]]
        counts = self.counts[order][idx]
        by_count = np.argsort(-counts, kind="stable")  # ties keep key order
        grams = unpack_keys(self.keys[order][idx[by_count]], order, self.spec.vocab_size)
        return [(tuple(int(x) for x in g), int(c)) for g, c in zip(grams, counts[by_count], strict=True)]

    def collision_rate(self, layer: int, order: int, head: int) -> float:
        """Share of N-gram occurrences whose row also holds another distinct N-gram."""
        occ = self.occupancy(layer, order, head)
        counts = self.counts[order][self.perm[(layer, order)][head]]  # in row order
        total = int(counts.sum())
        if total == 0:
            return 0.0  # an empty corpus has no collisions
        return float(counts[np.repeat(occ > 1, occ)].sum() / total)

    def row_of(self, ngram: tuple[int, ...], layer: int) -> np.ndarray:
        """Rows an N-gram reads on every head of its order (seen or not): (heads_per_ngram,)."""
        self._check(layer, len(ngram))
        return ngram_rows(np.asarray([ngram], dtype=np.int64), self.spec, layer)[:, 0]

    def alone_heads(self, ngram: tuple[int, ...], layer: int) -> int:
        """On how many heads of its order no other distinct N-gram shares this N-gram's row.

        For a seen N-gram this is the number of heads where it is alone in its row;
        for an unseen one, the heads whose row the corpus left empty.
        """
        order = len(ngram)
        rows = self.row_of(ngram, layer)
        own = 1 if self.find(ngram) >= 0 else 0
        occ = [int(self.occupancy(layer, order, h)[r]) for h, r in enumerate(rows)]
        return sum(o == own for o in occ)

    def alone_heads_all(self, layer: int, order: int) -> np.ndarray:
        """`alone_heads` of every distinct N-gram of the order: (U,) int, aligned with `keys[order]`."""
        self._check(layer, order)
        out = np.zeros(len(self.keys[order]), dtype=np.int64)
        for head in range(self.spec.heads_per_ngram):
            occ = self.occupancy(layer, order, head)
            out[self.perm[(layer, order)][head]] += np.repeat(occ == 1, occ)
        return out

    def head_table(self) -> list[dict]:
        """One row per (layer, order, head), for export."""
        out = []
        for layer in self.spec.layer_ids:
            for order in self.spec.orders:
                for head in range(self.spec.heads_per_ngram):
                    out.append(
                        {
                            "layer": layer,
                            "order": order,
                            "head": head,
                            "prime": self.prime(layer, order, head),
                            "distinct_ngrams": len(self.keys[order]),
                            "occupied_rows": int((self.occupancy(layer, order, head) > 0).sum()),
                            "collision_rate": self.collision_rate(layer, order, head),
                        }
                    )
        return out

    # -- files ----------------------------------------------------------------------------------

    def save(self, path: str | Path) -> Path:
        """One uncompressed `.npz` (fast to load), no pickle; meta as a JSON string array."""
        path = Path(path)
        s = self.spec
        meta = {
            "format": FORMAT,
            "checkpoint_key": self.checkpoint_key,
            "corpus": self.corpus,
            "n_positions": self.n_positions,
            "spec": {
                "vocab_size": s.vocab_size,
                "table_sizes": list(s.table_sizes),
                "max_ngram": s.max_ngram,
                "heads_per_ngram": s.heads_per_ngram,
                "layer_ids": list(s.layer_ids),
                "pad_id": s.pad_id,
                "seed": s.seed,
            },
        }
        arrays = {"meta": np.array(json.dumps(meta))}
        arrays.update({f"keys_{n}": v for n, v in self.keys.items()})
        arrays.update({f"counts_{n}": v for n, v in self.counts.items()})
        arrays.update({f"perm_{ly}_{n}": v for (ly, n), v in self.perm.items()})
        arrays.update({f"indptr_{ly}_{n}_{h}": v for (ly, n, h), v in self.indptr.items()})
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp.npz")  # write then rename: no half-written cache
        np.savez(tmp, **arrays)
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path, key: str) -> CollisionIndex:
        """Read a saved index; refuses a file of another format or another checkpoint key."""
        try:
            with np.load(path, allow_pickle=False) as f:
                meta = json.loads(str(f["meta"]))
                if meta.get("format") != FORMAT:
                    raise CollisionIndexError(f"{path} is not an {FORMAT} file (format {meta.get('format')!r})")
                if meta["checkpoint_key"] != key:
                    raise CollisionIndexError(
                        f"{path} was built for checkpoint {meta['checkpoint_key']}, not {key}: rebuild the index"
                    )
                spec = HashSpec(**meta["spec"])
                arrays = {name: f[name] for name in f.files if name != "meta"}
        except (OSError, KeyError, ValueError) as e:
            if isinstance(e, CollisionIndexError):
                raise
            raise CollisionIndexError(f"{path} cannot be read as a collision index: {e}") from e
        return cls(
            spec=spec,
            checkpoint_key=meta["checkpoint_key"],
            corpus=meta["corpus"],
            n_positions=int(meta["n_positions"]),
            keys={n: arrays[f"keys_{n}"] for n in spec.orders},
            counts={n: arrays[f"counts_{n}"] for n in spec.orders},
            perm={(ly, n): arrays[f"perm_{ly}_{n}"] for ly in spec.layer_ids for n in spec.orders},
            indptr={
                (ly, n, h): arrays[f"indptr_{ly}_{n}_{h}"]
                for ly in spec.layer_ids
                for n in spec.orders
                for h in range(spec.heads_per_ngram)
            },
        )


# --- building ----------------------------------------------------------------------------------


def count_ngrams(cids: list[np.ndarray], order: int, spec: HashSpec) -> tuple[np.ndarray, np.ndarray]:
    """Distinct packed N-grams of one order over sequences of compressed ids, and their counts."""
    check_packable(spec.vocab_size, order)
    if not cids:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    keys = np.concatenate([position_keys(c, order, spec.vocab_size, spec.pad_id) for c in cids])
    uniq, counts = np.unique(keys, return_counts=True)
    return uniq, counts.astype(np.int64)


def build_index(
    spec: HashSpec,
    compression: np.ndarray,
    streams: Streams,
    key: str = "",
    progress: Progress | None = None,
) -> CollisionIndex:
    """The index of raw-id streams under a hash spec and a raw -> compressed id table.

    Each stream is its own sequence: its first tokens read pad, like a fresh context.
    """
    table = np.asarray(compression, dtype=np.int64)
    raw = as_list(streams)
    cids = [table[np.asarray(s, dtype=np.int64)] for s in raw]  # §1
    total = len(spec.orders) * (1 + len(spec.layer_ids))
    done = 0
    report = progress or (lambda _d, _t, _m: None)
    report(0, total, "counting N-grams")
    keys, counts, perm, indptr = {}, {}, {}, {}
    for order in spec.orders:
        keys[order], counts[order] = count_ngrams(cids, order, spec)
        done += 1
        report(done, total, f"{len(keys[order]):,} distinct {order}-grams")
    for layer in spec.layer_ids:
        for order in spec.orders:
            rows = ngram_rows(unpack_keys(keys[order], order, spec.vocab_size), spec, layer)
            grouped = [group_by_row(rows[h], spec.primes[layer][spec.head_index(order, h)]) for h in range(len(rows))]
            perm[(layer, order)] = np.stack([g[0] for g in grouped]) if grouped else np.zeros((0, 0), np.int32)
            indptr.update({(layer, order, h): g[1] for h, g in enumerate(grouped)})
            done += 1
            report(done, total, f"layer {layer}, {order}-grams grouped by row")
    return CollisionIndex(
        spec=spec,
        checkpoint_key=key,
        corpus=corpus_fingerprint(raw),
        n_positions=int(sum(len(s) for s in raw)),
        keys=keys,
        counts=counts,
        perm=perm,
        indptr=indptr,
    )


def _memory_spec(ck: Checkpoint) -> HashSpec:
    if ck.model.cfg.memory is None:
        raise ValueError("this checkpoint has no Engram memory: there are no rows to collide")
    return ck.model.cfg.memory.hash_spec


def build_collision_index(ck: Checkpoint, streams: Streams, progress: Progress | None = None) -> CollisionIndex:
    """The collision index of raw-id streams under a checkpoint's compression and hash."""
    return build_index(_memory_spec(ck), ck.model.compression.cpu().numpy(), streams, checkpoint_key(ck), progress)


def training_streams(ck: Checkpoint) -> list[np.ndarray]:
    """The shipped training corpus (plays, code), tokenized as the checkpoint was trained on."""
    from engram_core.pipeline import prepare_corpus

    tok, streams, _ = prepare_corpus(log=lambda *_: None, tokenizer=ck.tokenizer)
    if tok.get_vocab() != ck.tokenizer.get_vocab():
        raise ValueError("the cached training corpus was tokenized with another tokenizer than this checkpoint's")
    return [v for k, v in sorted(streams.items()) if k.startswith("train/")]


def load_or_build(ck: Checkpoint, streams: Streams | None = None, progress: Progress | None = None) -> CollisionIndex:
    """The cached index of the training corpus (or of `streams`), built and saved on first use.

    The default corpus lives in `collisions-<key>.npz`; other corpora get their own
    file named by their fingerprint, so they never overwrite the training index.
    """
    key = checkpoint_key(ck)
    name = "collisions" if streams is None else f"collisions-{corpus_fingerprint(streams)}"
    path = cache_file(ck, name, ".npz")
    streams = training_streams(ck) if streams is None else streams
    if path.is_file():
        try:
            index = CollisionIndex.load(path, key)
            # subtle: the training corpus's code is the running interpreter's standard library; an
            # index another interpreter left in a shared cache counted other text
            if index.corpus == corpus_fingerprint(streams):
                return index
        except CollisionIndexError:
            pass  # stale or damaged cache: rebuild below
    t0 = time.perf_counter()
    index = build_collision_index(ck, streams, progress)
    index.save(path)
    if progress is not None:
        progress(1, 1, f"collision index built in {time.perf_counter() - t0:.1f} s, saved to {path.name}")
    return index


# --- text --------------------------------------------------------------------------------------


def representatives(compression: np.ndarray, size: int) -> np.ndarray:
    """For every compressed id, the first raw id that maps to it (-1 if none): (V',)."""
    ids, first = np.unique(np.asarray(compression), return_index=True)
    out = np.full(size, -1, dtype=np.int64)
    out[ids] = first
    return out


def ngram_text(ck: Checkpoint, ngram: tuple[int, ...]) -> str:
    """One representative spelling of an N-gram of compressed ids.

    Compression is many-to-one ("The", "the", " the" may share an id), so this
    decodes the first raw id of each compressed id: one spelling among several.
    """
    reps = representatives(ck.model.compression.cpu().numpy(), _memory_spec(ck).vocab_size)
    if any(not 0 <= int(x) < len(reps) or reps[int(x)] < 0 for x in ngram):
        raise ValueError(f"{ngram} holds ids that no raw token maps to")
    return ck.tokenizer.decode([int(reps[int(x)]) for x in ngram], skip_special_tokens=False)
