"""`engram audit`: a released table checked row by row, streamed in bounded memory.

What users of quantised copies ask: is this table garbage (a wrong bit width, rows
gathered without dequantisation, scale tensors cut short)? Per layer:
- the table against the layout: row count (padding included), row width, readable shards
  (a truncated file or a scale tensor of the wrong shape is one finding);
- FP8 scales that cannot be (E8M0 0xFF is NaN);
- rows holding NaN or inf, all-zero rows (padding rows excepted);
- row norms per head: a log2 histogram per head (never the norms themselves), and rows more
  than 64x off their head's median norm;
- with a reference copy: the relative L2 error of every row, per head, weighted by how often
  a corpus reads each row (a scan's rows.parquet), and the worst rows.

The pass is resumable: its accumulators are saved every `SAVE_EVERY` rows to a state file
keyed by the tables, the reference and the layout, and a rerun continues from there.
Memory: one block of rows (`BLOCK_ROWS`) and the per-head histograms.
"""

from __future__ import annotations

import hashlib
import heapq
import os
import pickle
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from engram_core.layout import LayoutError, MemoryLayout
from engram_core.tables import count_problem, open_tables

BLOCK_ROWS = 1 << 16
SAVE_EVERY = 1 << 24  # rows between state saves
BINS = np.linspace(-64.0, 64.0, 2561)  # log2 norm histogram edges, 0.05 apart
OUTLIER = 6.0  # log2 of the factor off the head's median that makes a row an outlier (64x)
WORST = 10


@dataclass
class Finding:
    layer: int
    kind: str  # count, width, unreadable, nan_scale, non_finite, zero_rows, norm_outliers
    text: str

    def line(self) -> str:
        return f"layer {self.layer}: {self.text}"


@dataclass
class HeadAcc:
    """One head's running figures."""

    hist: np.ndarray = field(default_factory=lambda: np.zeros(len(BINS) - 1, np.int64))
    rows: int = 0
    compared: int = 0
    err_sum: float = 0.0
    err_max: float = 0.0
    w_err: float = 0.0
    w_sum: float = 0.0
    extremes: list = field(default_factory=list)  # (log2 norm, row), at most 2 x WORST


@dataclass
class LayerAcc:
    done: int = 0  # rows audited so far
    non_finite: int = 0
    first_non_finite: list = field(default_factory=list)
    zero: int = 0
    first_zero: list = field(default_factory=list)
    nan_scales: int = 0
    first_nan_scale: list = field(default_factory=list)
    heads: dict = field(default_factory=dict)  # head index -> HeadAcc
    worst: list = field(default_factory=list)  # min-heap of (score, row, error, reads)


@dataclass
class AuditReport:
    layout: str
    findings: list[Finding]
    layers: dict[int, dict]  # per layer: rows, heads (per head: median norm, error figures), worst rows
    rows: int  # rows audited
    resumed_from: int = 0

    @property
    def broken(self) -> bool:
        return bool(self.findings)


class Holes:
    """Where a sparse file holds no data (SEEK_HOLE): rows lying wholly in a hole are zero, known
    without reading them. A released table copied whole has no holes; a full-size test file is
    almost all hole, so its pass takes seconds."""

    def __init__(self) -> None:
        self._extents: dict[str, np.ndarray] = {}

    def data(self, path: str) -> np.ndarray:
        """(k, 2) byte extents [start, end) that hold data."""
        if path not in self._extents:
            out = []
            try:
                with open(path, "rb") as f:
                    fd, size, pos = f.fileno(), os.fstat(f.fileno()).st_size, 0
                    while pos < size:
                        try:
                            start = os.lseek(fd, pos, os.SEEK_DATA)
                        except OSError:  # no data past pos
                            break
                        end = os.lseek(fd, start, os.SEEK_HOLE)
                        out.append((start, end))
                        pos = end
            except (OSError, AttributeError):  # no SEEK_DATA here: treat the whole file as data
                out = [(0, 1 << 62)]
            self._extents[path] = np.array(out, np.int64).reshape(-1, 2)
        return self._extents[path]

    def empty(self, arr: np.ndarray, a: int, b: int) -> bool:
        """Whether rows a..b-1 of a memory-mapped 2-D array lie wholly in holes."""
        if not isinstance(arr, np.memmap) or arr.filename is None:
            return False
        row = arr.shape[1] * arr.itemsize
        x, y = arr.offset + a * row, arr.offset + b * row
        ext = self.data(arr.filename)
        i = np.searchsorted(ext[:, 1], x, side="right")  # the first extent ending after x
        return i >= len(ext) or ext[i, 0] >= y

    def table_empty(self, t, a: int, b: int) -> bool:
        if hasattr(t, "shards"):  # ShardedTable: every shard the rows touch
            for i in range(len(t.shards)):
                lo, hi = max(a, int(t.first[i])), min(b, int(t.first[i + 1]))
                if lo < hi and not self.empty(t.shards[i].values, lo - int(t.first[i]), hi - int(t.first[i])):
                    return False
            return True
        if not self.empty(t.values, a, b):
            return False
        return t.scales is None or self.empty(t.scales, a, b)


def _first(acc: list, rows: np.ndarray, k: int = 5) -> None:
    acc.extend(int(r) for r in rows[: max(0, k - len(acc))])


def _state_key(layout: MemoryLayout, folder: Path, reference: Path | None, scan: Path | None) -> str:
    parts = [layout.digest]
    for p in (folder, reference, scan):
        if p is None:
            parts.append("-")
            continue
        files = sorted(p.glob("*")) if p.is_dir() else [p]
        parts += [f"{f.resolve()} {f.stat().st_size} {f.stat().st_mtime_ns}" for f in files if f.is_file()]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def _scan_reads(scan: Path, layer: int) -> tuple[np.ndarray, np.ndarray]:
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    t = pq.read_table(scan / "rows.parquet", columns=["layer", "row", "hits"])
    t = t.filter(pc.equal(t["layer"], layer))
    rows, hits = t["row"].to_numpy().astype(np.int64), t["hits"].to_numpy().astype(np.int64)
    order = np.argsort(rows)
    return rows[order], hits[order]


def audit(
    layout: MemoryLayout,
    folder: str | Path,
    reference: str | Path | None = None,
    scan: str | Path | None = None,
    state_dir: str | Path | None = None,
    progress: Callable[[int, int], None] | None = None,
    block_rows: int = BLOCK_ROWS,
) -> AuditReport:
    """Audit every Engram table of `folder` under `layout` (see the module docstring)."""
    folder = Path(folder)
    if not folder.exists():
        raise LayoutError(f"no such folder or file: {folder}")
    reference = Path(reference) if reference else None
    scan = Path(scan) if scan else None
    findings: list[Finding] = []
    try:
        tables = open_tables(folder)
    except LayoutError as e:  # a truncated shard, a scale tensor cut short: the table cannot be read
        return AuditReport(layout.name, [Finding(-1, "unreadable", str(e))], {}, 0)
    ref_tables = open_tables(reference, layout) if reference else {}
    for layer in layout.layers:
        if layer not in tables:
            findings.append(Finding(layer, "missing", f"no table for this layer in {folder}"))
    readable = {}
    for layer, t in sorted(tables.items()):
        if layer not in layout.layers:
            continue
        problem = count_problem(layout, layer, t)
        if problem:
            findings.append(Finding(layer, "count", problem))
        elif t.width != layout.d_head:
            findings.append(
                Finding(layer, "width", f"{t.name} rows are {t.width} values wide, the layout says {layout.d_head}")
            )
        else:
            readable[layer] = t
    total = sum(t.n_rows for t in readable.values())
    state_path = None
    accs: dict[int, LayerAcc] = {layer: LayerAcc() for layer in readable}
    resumed = 0
    if state_dir is not None:
        state_path = Path(state_dir) / f"audit-{_state_key(layout, folder, reference, scan)}.pkl"
        if state_path.is_file():
            with open(state_path, "rb") as f:
                accs = pickle.load(f)
            resumed = sum(a.done for a in accs.values())
    done = resumed
    since_save = 0
    holes = Holes()
    for layer, t in readable.items():
        acc = accs[layer]
        offsets = layout.offsets[layer]
        real = layout.num_embeddings(layer)  # rows past it are padding
        ref = ref_tables.get(layer)
        reads = _scan_reads(scan, layer) if scan is not None else None
        scales = getattr(t, "scales", None)
        for a in range(acc.done, t.n_rows, block_rows):
            b = min(a + block_rows, t.n_rows)
            rows = np.arange(a, b, dtype=np.int64)
            if holes.table_empty(t, a, b) and (ref is None or holes.table_empty(ref, a, b)):
                zero = rows[rows < real]  # never written: zero rows (and zero errors against a zero reference)
                acc.zero += len(zero)
                _first(acc.first_zero, zero)
                acc.done, done, since_save = b, done + b - a, since_save + b - a
                if progress:
                    progress(done, total)
                continue
            if scales is not None:
                bad = np.flatnonzero((scales[a:b] == 0xFF).any(axis=1))
                acc.nan_scales += len(bad)
                _first(acc.first_nan_scale, bad + a)
            with np.errstate(invalid="ignore", over="ignore"):
                vals = t.read(rows)
                finite = np.isfinite(vals).all(axis=1)
                norms = np.sqrt(np.square(vals, where=np.isfinite(vals), out=np.zeros_like(vals)).sum(axis=1))
            in_table = rows < real
            bad = rows[~finite & in_table]
            acc.non_finite += len(bad)
            _first(acc.first_non_finite, bad)
            zero = finite & (norms == 0) & in_table
            acc.zero += int(zero.sum())
            _first(acc.first_zero, rows[zero])
            head = np.searchsorted(offsets, rows, side="right") - 1
            ok = finite & ~zero & in_table
            logn = np.log2(norms[ok], where=norms[ok] > 0, out=np.full(int(ok.sum()), -64.0))
            err = None
            if ref is not None:
                with np.errstate(invalid="ignore", divide="ignore"):
                    want = ref.read(rows)
                    err = np.linalg.norm(vals - want, axis=1) / np.maximum(np.linalg.norm(want, axis=1), 1e-30)
                err = np.where(np.isfinite(err), err, np.inf)
            w = None
            if reads is not None:
                i = np.minimum(np.searchsorted(reads[0], rows), max(len(reads[0]) - 1, 0))
                w = np.where(reads[0][i] == rows, reads[1][i], 0) if len(reads[0]) else np.zeros(len(rows), np.int64)
            for h in np.unique(head[in_table]):
                hacc = acc.heads.setdefault(int(h), HeadAcc())
                mine = (head == h)[ok]
                hacc.hist += np.histogram(logn[mine], BINS)[0]
                hrows = rows[ok][mine]
                for pick in (np.argsort(logn[mine])[:WORST], np.argsort(logn[mine])[-WORST:]):
                    hacc.extremes += [(float(logn[mine][j]), int(hrows[j])) for j in pick]
                hacc.extremes = sorted(set(hacc.extremes))
                hacc.extremes = (
                    hacc.extremes[:WORST] + hacc.extremes[-WORST:] if len(hacc.extremes) > 2 * WORST else hacc.extremes
                )
                sel = (head == h) & in_table
                hacc.rows += int(sel.sum())
                if err is not None:
                    e = err[sel]
                    hacc.compared += len(e)
                    hacc.err_sum += float(np.sum(np.where(np.isfinite(e), e, 0.0)))
                    hacc.err_max = max(hacc.err_max, float(e.max()) if len(e) else 0.0)
                    if w is not None:
                        hacc.w_err += float(np.sum(np.where(np.isfinite(e), e, 0.0) * w[sel]))
                        hacc.w_sum += float(w[sel].sum())
            if err is not None:
                score = err * (w if w is not None else 1)
                for j in np.argsort(score)[-WORST:]:
                    if in_table[j]:
                        item = (float(score[j]), int(rows[j]), float(err[j]), int(w[j]) if w is not None else 0)
                        (heapq.heappush if len(acc.worst) < WORST else heapq.heappushpop)(acc.worst, item)
            acc.done = b
            done += b - a
            since_save += b - a
            if progress:
                progress(done, total)
            if state_path is not None and since_save >= SAVE_EVERY:
                _save(state_path, accs)
                since_save = 0
    if state_path is not None:
        _save(state_path, accs)
    layers = {}
    for layer, acc in accs.items():
        findings += _layer_findings(layout, layer, acc)
        layers[layer] = _layer_summary(layout, layer, acc)
    return AuditReport(layout.name, findings, layers, done, resumed)


def _save(path: Path, accs: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        pickle.dump(accs, f)
    os.replace(tmp, path)  # a killed run leaves the previous state whole


def _median(hist: np.ndarray) -> float:
    c = np.cumsum(hist)
    if not len(c) or c[-1] == 0:
        return float("nan")
    i = int(np.searchsorted(c, c[-1] / 2))
    return float((BINS[i] + BINS[i + 1]) / 2)


def _outliers(hacc: HeadAcc) -> tuple[int, float, list]:
    """(rows more than 64x off the median norm, the median's log2, the most extreme such rows)."""
    med = _median(hacc.hist)
    if np.isnan(med):
        return 0, med, []
    centres = (BINS[:-1] + BINS[1:]) / 2
    far = np.abs(centres - med) > OUTLIER
    rows = [(n, r) for n, r in hacc.extremes if abs(n - med) > OUTLIER]
    return int(hacc.hist[far].sum()), med, rows


def _layer_findings(layout: MemoryLayout, layer: int, acc: LayerAcc) -> list[Finding]:
    out = []
    if acc.nan_scales:
        out.append(
            Finding(
                layer,
                "nan_scale",
                f"{acc.nan_scales:,} rows have E8M0 scales 0xFF (NaN) (first rows: {acc.first_nan_scale})",
            )
        )
    if acc.non_finite:
        out.append(
            Finding(
                layer, "non_finite", f"{acc.non_finite:,} rows hold NaN or inf (first rows: {acc.first_non_finite})"
            )
        )
    if acc.zero:
        out.append(
            Finding(
                layer,
                "zero_rows",
                f"{acc.zero:,} all-zero rows of {layout.num_embeddings(layer):,} (first rows: {acc.first_zero})",
            )
        )
    for h, hacc in sorted(acc.heads.items()):
        n, med, rows = _outliers(hacc)
        if n:
            order, head = layout.head_of(h)
            shown = ", ".join(f"row {r} norm {2**v:.3g}" for v, r in sorted(rows, key=lambda x: -abs(x[0] - med))[:3])
            out.append(
                Finding(
                    layer,
                    "norm_outliers",
                    f"head {order}:{head}: {n:,} rows more than 64x off the median norm {2**med:.3g} ({shown})",
                )
            )
    return out


def _layer_summary(layout: MemoryLayout, layer: int, acc: LayerAcc) -> dict:
    heads = []
    for h, hacc in sorted(acc.heads.items()):
        order, head = layout.head_of(h)
        heads.append(
            {
                "order": order,
                "head": head,
                "rows": hacc.rows,
                "median_norm": 2 ** _median(hacc.hist),
                "mean_error": hacc.err_sum / hacc.compared if hacc.compared else None,
                "max_error": hacc.err_max if hacc.compared else None,
                "read_weighted_error": hacc.w_err / hacc.w_sum if hacc.w_sum else None,
            }
        )
    worst = [
        {
            "row": r,
            "error": e,
            "reads": w,
            "head": "{}:{}".format(*layout.head_of(int(np.searchsorted(layout.offsets[layer], r, side="right") - 1))),
        }
        for _, r, e, w in sorted(acc.worst, reverse=True)
    ]
    return {"rows": acc.done, "heads": heads, "worst": worst}


def worst_ngrams(scan: str | Path, layer: int, rows: list[int]) -> dict[int, tuple[int, list]]:
    """Per row: (distinct N-grams the scan saw read it, those it kept: the collided ones, compressed
    ids oldest first, most read first)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    scan = Path(scan)
    want = np.array(sorted(rows), np.int64)
    t = pq.read_table(scan / "rows.parquet", columns=["layer", "row", "ngrams"])
    t = t.filter(pc.and_(pc.equal(t["layer"], layer), pc.is_in(t["row"], value_set=pa.array(want))))
    counts = dict(zip(t["row"].to_pylist(), t["ngrams"].to_pylist(), strict=True))
    g = pq.read_table(scan / "ngrams.parquet", columns=["layer", "row", "ngram", "count"])
    g = g.filter(pc.and_(pc.equal(g["layer"], layer), pc.is_in(g["row"], value_set=pa.array(want))))
    kept: dict[int, list] = {}
    for r, ng, _ in sorted(
        zip(g["row"].to_pylist(), g["ngram"].to_pylist(), g["count"].to_pylist(), strict=True), key=lambda x: -x[2]
    ):
        kept.setdefault(r, []).append(ng)
    return {r: (int(counts.get(r, 0)), kept.get(r, [])) for r in rows}
