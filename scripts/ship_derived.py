"""Recompute every file that ships precomputed beside a checkpoint, and put it there.

    python scripts/ship_derived.py [assets/default-model]

After a retrain the checkpoint key changes, and the app would otherwise compute these
on first use (minutes). Each file is built through the same code path the app and
CLI use (which writes it to the cache, ENGRAM_CACHE/<key>/), then copied beside the
weights as <name>-<key>.npz; shipped files of other keys are removed. Files: row
statistics of the corpus sample, map colours, replacement rows for mean and resample
knock-outs, mean gate per row, PCA and UMAP maps of raw rows and of value vectors.
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path


def main(folder: str = "assets/default-model") -> None:
    from engram_core import load_checkpoint
    from engram_inspect.base.cache import SHIPPED_FILES, checkpoint_cache, checkpoint_key
    from engram_inspect.memory import ablation, mean_gate, rowstats
    from engram_inspect.memory.projection import compute_projection
    from engram_inspect.memory.rowpage import RowPages
    from engram_inspect.memory.valuemap import value_projection

    ck = load_checkpoint(folder)
    key, cache = checkpoint_key(ck), checkpoint_cache(ck)
    steps = [
        ("row statistics", lambda: rowstats.load_or_compute(ck, recompute=True)),
        ("map colours", lambda: RowPages.load(ck).colours()),
        ("replacement rows", lambda: ablation.ensure_sources(ck)),
        ("mean gate", lambda: mean_gate.load_or_compute(ck)),
        *(
            (f"{m} of raw rows", lambda m=m: compute_projection(ck, m, "pooled", recompute=True))
            for m in ("pca", "umap")
        ),
        *((f"{m} of value vectors", lambda m=m: value_projection(ck, m, recompute=True)) for m in ("pca", "umap")),
    ]
    for what, run in steps:
        t0 = time.perf_counter()
        run()
        print(f"{what}: {time.perf_counter() - t0:.0f} s", flush=True)
    for old in Path(folder).glob("*.npz"):
        if not old.stem.endswith(key):
            old.unlink()
            print(f"removed {old.name} (another checkpoint's)")
    for name in SHIPPED_FILES:
        src = cache / f"{name}.npz"
        if not src.is_file():
            raise SystemExit(f"{src} was not written: check the steps above")
        shutil.copyfile(src, Path(folder) / f"{name}-{key}.npz")
        print(f"shipped {name}-{key}.npz ({src.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main(*sys.argv[1:])
