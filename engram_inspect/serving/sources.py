"""Where a cache's traffic comes from: documents as raw-id arrays, read lazily, one pass each.

- `domain_docs`: the project's corpus (plays, code), its training or held-out split,
  tokenised with the layout's own tokenizer (any layout: V4.1 reads it through its own);
- `corpus_docs`: folders of text files, JSONL or Parquet, shard by shard (as `engram scan`);
- `scan_docs`: the token streams an `engram scan` kept in its parts, never re-tokenised;
- `scan_counts`: per layer, the reads of every row a scan counted (training a static set).

Every source is a callable returning a fresh iterator (`simulate.Docs`), so a grid can run
several passes and Ray workers can each open their own.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from engram_core.layout import MemoryLayout

from ..corpus.scan_sample import tokenize_capped
from ..corpus.shards import load_stream, plan_shards, read_shard
from .caches import CacheSimError

SPLITS = ("train", "val", "all")


def _domain_iter(layout: MemoryLayout, domains: tuple[str, ...], split: str) -> Iterator[np.ndarray]:
    from engram_core.data import load_documents

    picked = [d.text for d in load_documents() if d.domain in domains and split in ("all", d.split)]
    for i in range(0, len(picked), 64):
        yield from tokenize_capped(layout, picked[i : i + 64], None)


def domain_docs(layout: MemoryLayout, domains: list[str], split: str = "train"):
    from ..corpus.texts import DOMAINS

    bad = [d for d in domains if d not in DOMAINS]
    if bad or not domains:
        raise CacheSimError(f"unknown domain {(bad or [''])[0]!r}: choose from {', '.join(DOMAINS)}")
    if split not in SPLITS:
        raise CacheSimError(f"unknown split {split!r}: {', '.join(SPLITS)}")
    if layout.tokenizer is None:
        raise CacheSimError(f"layout {layout.name} has no tokenizer: give --scan parts of token ids")
    return partial(_domain_iter, layout, tuple(domains), split)


def _corpus_iter(layout: MemoryLayout, paths: tuple[str, ...]) -> Iterator[np.ndarray]:
    for shard in plan_shards(list(paths)):
        texts, _, _ = read_shard(shard)
        yield from tokenize_capped(layout, texts, None)


def corpus_docs(layout: MemoryLayout, paths: list[str]):
    if layout.tokenizer is None:
        raise CacheSimError(f"layout {layout.name} has no tokenizer: give --scan parts of token ids")
    plan_shards(list(paths))  # a missing path or an empty folder is refused now, not mid-pass
    return partial(_corpus_iter, layout, tuple(paths))


def check_scan(layout: MemoryLayout, out_dir: str | Path) -> list[Path]:
    """The parts of a finished scan of this layout, in corpus order; one line for anything else."""
    out_dir = Path(out_dir)
    summary = out_dir / "summary.json"
    if not summary.is_file():
        raise CacheSimError(f"{out_dir} is not a finished scan (no summary.json): run engram scan first")
    try:
        meta = json.loads(summary.read_text())
    except json.JSONDecodeError as e:
        raise CacheSimError(f"{summary} is not valid JSON ({e})") from e
    digest = meta.get("layout_digest")  # older scans name their model only
    if (digest or meta.get("model")) != (layout.digest if digest else layout.name):
        raise CacheSimError(
            f"{out_dir} was scanned under {meta.get('model')!r}, not {layout.name!r}: its rows are another layout's"
        )
    parts = sorted((out_dir / "parts").glob("*.npz"))
    parts = [p for p in parts if not p.name.endswith(".tmp.npz")]
    if not parts:
        raise CacheSimError(f"{out_dir}/parts holds no parts")
    order = meta.get("part_order")
    if order:  # the scan's shard order: the corpus as it was read
        by_name = {p.stem: p for p in parts}
        parts = [by_name[k] for k in order if k in by_name]
    for p in parts[:1]:
        if load_stream(p) is None:
            raise CacheSimError(f"{out_dir} was scanned before scans kept token streams: scan it again")
    return parts


def _scan_iter(parts: tuple[Path, ...]) -> Iterator[np.ndarray]:
    for p in parts:
        docs = load_stream(p)
        if docs is None:
            raise CacheSimError(f"{p} holds no token stream: scan again")
        yield from docs


def scan_docs(layout: MemoryLayout, out_dir: str | Path):
    return partial(_scan_iter, tuple(check_scan(layout, out_dir)))


def scan_counts(layout: MemoryLayout, out_dir: str | Path) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Per layer, (rows, reads) from the scan's rows.parquet: a static set trained on that corpus."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    check_scan(layout, out_dir)
    table = pq.read_table(Path(out_dir) / "rows.parquet", columns=["layer", "row", "hits"])
    out = {}
    for layer in layout.layers:
        t = table.filter(pc.equal(table["layer"], layer))
        rows, hits = t["row"].to_numpy().astype(np.int64), t["hits"].to_numpy().astype(np.int64)
        keys, inv = np.unique(rows, return_inverse=True)  # a row two heads share is one unit
        out[layer] = (keys, np.bincount(inv, weights=hits).astype(np.int64))
    return out


@dataclass(frozen=True)
class TraceSpec:
    """Where a simulation's traffic and its static set's training traffic come from, as plain
    values: what a Ray worker receives to open the same trace itself."""

    model: str
    scan: str | None = None  # an `engram scan` OUT_DIR
    corpus: tuple[str, ...] = ()  # files and folders
    domains: tuple[str, ...] = ("plays", "code")
    split: str = "train"
    static_from: str = "trace"  # "trace", "train", a scan folder or a path

    def open(self, static: bool = True):
        """(layout, docs, static training source or None)."""
        from engram_core.layout import load_layout

        layout = load_layout(self.model)
        if self.scan:
            docs = scan_docs(layout, self.scan)
        elif self.corpus:
            docs = corpus_docs(layout, list(self.corpus))
        else:
            docs = domain_docs(layout, list(self.domains), self.split)
        trained = None
        if static and self.static_from != "trace":
            if self.static_from == "train":
                trained = domain_docs(layout, list(self.domains), "train")
            elif (Path(self.static_from) / "summary.json").is_file():
                trained = scan_counts(layout, self.static_from)
            else:
                trained = corpus_docs(layout, [self.static_from])
        return layout, docs, trained
