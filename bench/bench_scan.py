"""`engram scan` throughput: the in-process executor against Ray Data with 1 and 2 workers,
on the same corpus (part of the Python standard library's source) and the V4.1 layout,
or a checkpoint with a backbone (its model runs in the map: gate sums and top contexts).
The reduce is in-process for the local executor, a Ray Data group by for Ray.

    python -m bench.bench_scan [--model deepseek-v4.1-flash|CHECKPOINT_DIR] [FOLDER...]
"""

from __future__ import annotations

import os
import sys
import sysconfig
import tempfile
from pathlib import Path

from bench.bench_addressing import cpu_name
from bench.common import machine
from engram_core.layout import load_layout
from engram_inspect.corpus.scan import scan
from engram_inspect.corpus.scan_ray import expand_part

DEFAULT = ("asyncio", "email", "json", "http", "logging", "unittest")


def main() -> None:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    args = sys.argv[1:]
    model = "deepseek-v4.1-flash"
    if args[:1] == ["--model"]:
        model, args = args[1], args[2:]
    paths = args or [str(stdlib / d) for d in DEFAULT]
    layout = load_layout(model)
    print(f"machine: {machine()}, {cpu_name()}; model {model}")
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    base = None
    with tempfile.TemporaryDirectory() as d:
        for name, executor, workers in (
            ("local", "local", 1),
            ("ray, 1 worker", "ray", 1),
            ("ray, 2 workers", "ray", 2),
        ):
            s = scan(layout, paths, Path(d) / name, executor, workers=workers, shard_bytes=1 << 20)
            if executor == "local":  # what the Ray group by shuffles: the parts expanded into keyed lines
                parts = sorted((Path(d) / name / "parts").glob("*.npz"))
                lines = [expand_part(layout, p) for p in parts]
                shuffled = sum(
                    v.nbytes if v.dtype != object else sum(map(len, v)) + 8 * len(v) for x in lines for v in x.values()
                )
                part_bytes = sum(p.stat().st_size for p in parts)
                print(
                    f"shuffle: {shuffled / s['tokens']:.0f} bytes a token "
                    f"({sum(len(x['row']) for x in lines):,} lines), "
                    f"{shuffled / part_bytes:.1f}x the parts ({part_bytes / s['tokens']:.1f} bytes a token)"
                )
            map_rate = s["tokens"] / s["map_seconds"]
            base = base or map_rate
            print(
                f"{name:>15}: {s['tokens']:,} tokens in {s['shards']} shards, {s['seconds']:.1f} s "
                f"({s['tokens_per_s']:,} tokens/s overall; "
                f"map {map_rate:,.0f} tokens/s = {map_rate / base:.2f}x local; "
                f"reduce {s['seconds'] - s['map_seconds']:.1f} s), "
                f"driver peak RSS {s['peak_rss_mib']:,} MiB"
            )
    ray.shutdown()


if __name__ == "__main__":
    main()
