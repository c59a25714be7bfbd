"""The collision index of the shipped model over the whole training corpus: build time,
cache size and load time (targets: build <= 60 s and load <= 2 s on 2 CPU cores).

    python bench/bench_collisions.py [checkpoint folder]

The index is saved to a temporary folder, not beside the checkpoint, so the run
leaves the app's cache alone.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench.common import machine
from engram_core import load_checkpoint
from engram_inspect.memory.collisions import CollisionIndex, build_collision_index, training_streams
from engram_inspect.memory.health import memory_health


def seconds(fn) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main(folder: str = "assets/default-model") -> None:
    ck = load_checkpoint(folder)
    t_corpus, streams = seconds(lambda: training_streams(ck))
    n = sum(len(s) for s in streams)
    t_build, index = seconds(lambda: build_collision_index(ck, streams))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "collisions.npz"
        t_save, _ = seconds(lambda: index.save(path))
        size = path.stat().st_size
        loads = [seconds(lambda: CollisionIndex.load(path, index.checkpoint_key))[0] for _ in range(3)]
    t_health, health = seconds(lambda: memory_health(index))
    spec = index.spec
    layer, order = spec.layer_ids[0], spec.orders[-1]
    g = index.ngram_tuple(order, int(index.counts[order].argmax()))
    t_lookup, _ = seconds(
        lambda: [index.ngrams_at(layer, order, 0, int(index.row_of(g, layer)[0])) for _ in range(100)]
    )
    print(f"machine: {machine()}")
    print(f"corpus: {n:,} training tokens in {len(streams)} streams (loaded in {t_corpus:.1f} s)")
    print("distinct N-grams: " + ", ".join(f"{len(index.keys[o]):,} of order {o}" for o in spec.orders))
    print(f"build:  {t_build:6.1f} s  (target <= 60 s)")
    print(f"save:   {t_save:6.1f} s, file {size / 1e6:.1f} MB")
    print(f"load:   {statistics.median(loads):6.2f} s median of 3 (target <= 2 s)")
    print(f"memory_health of {len(health)} tables: {t_health:.2f} s; ngrams_at + row_of: {t_lookup * 10:.2f} ms")
    for row in index.head_table()[:: spec.heads_per_ngram]:
        h = next(x for x in health if (x.layer, x.order, x.head) == (row["layer"], row["order"], row["head"]))
        print(
            f"  layer {row['layer']} order {row['order']} head {row['head']}: collision rate "
            f"{row['collision_rate']:.3f}, usage {h.usage:.3f}, KL {h.kl_uniform:.2f} nats, Gini {h.gini:.3f}, "
            f"rows for 50 % {h.rows_for_50:,}"
        )


if __name__ == "__main__":
    main(*sys.argv[1:])
