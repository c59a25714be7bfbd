"""2-D maps of Engram memory rows: PCA (instant) and UMAP (seeded, cached on disk).

A projection covers one scope: every Engram layer pooled (`"pooled"`), one layer
(`"layer1"`) or one head's table (`"layer1-order2-head0"`), restricted to the rows
the caller passes (e.g. the rows a corpus hits) or to all rows. At most
`MAX_POINTS` rows are drawn, by a seeded sample, because a UMAP of 50k rows already
takes minutes on two cores and a browser scatter of more is unreadable. PCA axes
are fitted on every row of the scope (cheap) and then applied to the sample.

Results are cached under the cache directory (`cache.cache_file`), so the app's
second request is a file read; a projection shipped beside the weights is read first. This module draws nothing.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engram_core import Checkpoint

from ..base.cache import cache_file, find_file
from .rows import RowLayout, row_vectors

MAX_POINTS = 50_000  # rows per projection; larger scopes are sampled (seeded) down to this
UMAP_PARAMS = {"n_neighbors": 15, "min_dist": 0.1, "metric": "cosine"}
METHODS = ("pca", "umap")
FORMAT = 1  # bump when the cached arrays change meaning

# subtle: numba-compiled UMAP code is not re-entrant, and the app may ask for two
# projections at once from two threads; this lock is the module's only global.
_UMAP_LOCK = threading.Lock()

Progress = Callable[[int, int, str], None]
_SCOPE = re.compile(r"^(?:pooled|layer(\d+)(?:-order(\d+)-head(\d+))?)$")


@dataclass(frozen=True, eq=False)
class Projection:
    """2-D coordinates of memory rows, with each point's table for colouring."""

    method: str  # "pca" or "umap"
    scope: str  # "pooled", "layer<L>" or "layer<L>-order<n>-head<k>"
    rows: np.ndarray  # (N,) int64 flat row ids (see rows.py), sorted
    coords: np.ndarray  # (N, 2) float32
    layer: np.ndarray  # (N,) int64, per point
    order: np.ndarray  # (N,) int64
    head: np.ndarray  # (N,) int64
    explained: tuple[float, float] | None = None  # PCA: variance ratio of each axis; UMAP: None


def scope_name(layer: int | None = None, order: int | None = None, head: int | None = None) -> str:
    if layer is None:
        return "pooled"
    if order is None and head is None:
        return f"layer{layer}"
    if order is None or head is None:
        raise ValueError("a table scope needs layer, order and head")
    return f"layer{layer}-order{order}-head{head}"


def parse_scope(scope: str) -> tuple[int | None, int | None, int | None]:
    """(layer, order, head) of a scope name, None where the scope is wider."""
    m = _SCOPE.match(scope) if isinstance(scope, str) else None
    if m is None:
        raise ValueError(f"scope {scope!r} is not 'pooled', 'layer<L>' or 'layer<L>-order<n>-head<k>'")
    return tuple(None if g is None else int(g) for g in m.groups())  # type: ignore[return-value]


def pca_axes(x: np.ndarray, n_components: int = 2) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean (D,), principal axes (n_components, D) and their variance ratios, by SVD.

    Each axis's sign is fixed so that its largest loading is positive, so the same
    rows always give the same picture (SVD alone may flip an axis).
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"PCA needs at least 2 points as an (N, D) array, got shape {x.shape}")
    mean = x.mean(axis=0)
    xc = x - mean
    # SVD of the D x D scatter matrix, not of the N x D rows: same axes (it is symmetric
    # PSD, so its singular vectors are its eigenvectors), 50x faster for 0.4M rows
    _, var, vt = np.linalg.svd(xc.T @ xc)
    ratio = var / var.sum() if var.sum() > 0 else np.zeros_like(var)
    axes = vt[:n_components]
    signs = np.sign(axes[np.arange(len(axes)), np.abs(axes).argmax(axis=1)])
    axes = axes * np.where(signs == 0, 1.0, signs)[:, None]
    pad = max(0, n_components - len(axes))  # fewer dims than components: the extra axes are zero
    return mean, np.pad(axes, ((0, pad), (0, 0))), np.pad(ratio[:n_components], (0, pad))


def pca(x: np.ndarray, n_components: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates (N, n_components) float32 and the variance ratio of each axis."""
    mean, axes, ratio = pca_axes(x, n_components)
    return ((np.asarray(x, dtype=np.float64) - mean) @ axes.T).astype(np.float32), ratio


def umap_fit(x: np.ndarray, seed: int = 0, **params) -> np.ndarray:
    """UMAP coordinates (N, 2) float32; seeded, so umap runs single-threaded and repeatable."""
    import umap  # lazy: ~15 s to import, and importing engram_inspect must stay fast

    if len(x) <= UMAP_PARAMS["n_neighbors"]:
        raise ValueError(f"UMAP needs more than {UMAP_PARAMS['n_neighbors']} points, got {len(x)}")
    import torch

    threads = torch.get_num_threads()
    with _UMAP_LOCK:
        reducer = umap.UMAP(n_components=2, random_state=seed, n_jobs=1, **{**UMAP_PARAMS, **params})
        try:
            return reducer.fit_transform(np.asarray(x, dtype=np.float32)).astype(np.float32)
        finally:
            # subtle: numba's OpenMP layer shares torch's libgomp and leaves its own thread count
            # behind, so every later forward pass in this process would run on other threads
            torch.set_num_threads(threads)


def scope_rows(layout: RowLayout, scope: str, rows: np.ndarray | None = None) -> np.ndarray:
    """Sorted unique flat ids of `rows` (or of all rows) that fall in `scope`."""
    r = layout.flat_range(*parse_scope(scope))
    if rows is None:
        return np.arange(r.start, r.stop, dtype=np.int64)
    rows = np.unique(np.asarray(rows, dtype=np.int64))
    if rows.size and (rows[0] < 0 or rows[-1] >= layout.total):
        raise ValueError(f"flat row ids must lie in 0..{layout.total - 1}, got {rows[0]}..{rows[-1]}")
    return rows[(rows >= r.start) & (rows < r.stop)]


def sample_rows(rows: np.ndarray, max_points: int, seed: int) -> np.ndarray:
    """At most max_points of rows, drawn without replacement by a seeded generator, kept sorted."""
    if len(rows) <= max_points:
        return rows
    keep = np.random.default_rng(seed).choice(len(rows), size=max_points, replace=False)
    return rows[np.sort(keep)]


def _rows_digest(rows: np.ndarray | None) -> str:
    if rows is None:
        return ""
    return "-rows" + hashlib.sha256(np.unique(np.asarray(rows, dtype=np.int64)).tobytes()).hexdigest()[:12]


def _meta(method: str, scope: str, seed: int, max_points: int) -> dict:
    return {"format": FORMAT, "method": method, "scope": scope, "seed": seed, "max_points": max_points, **UMAP_PARAMS}


def _save(path: Path, p: Projection, meta: dict) -> None:
    # the per-point layer/order/head are rebuilt from the flat ids on load: smaller files, one truth
    tmp = path.with_name(path.name + ".tmp.npz")
    explained = np.asarray(p.explained if p.explained is not None else [], dtype=np.float64)
    np.savez(tmp, rows=p.rows, coords=p.coords, explained=explained, meta=np.asarray(json.dumps(meta, sort_keys=True)))
    tmp.replace(path)  # atomic: a reader never sees half a file


def _load(path: Path, layout: RowLayout, meta: dict) -> Projection | None:
    try:
        with np.load(path, allow_pickle=False) as f:
            if json.loads(str(f["meta"])) != json.loads(json.dumps(meta, sort_keys=True)):
                return None  # computed with other parameters: recompute
            rows, coords, explained = f["rows"].astype(np.int64), f["coords"].astype(np.float32), f["explained"]
    except (OSError, KeyError, ValueError):
        return None  # missing or unreadable: recompute
    layer, order, head, _ = layout.decode(rows)
    ex = (float(explained[0]), float(explained[1])) if len(explained) == 2 else None
    return Projection(meta["method"], meta["scope"], rows, coords, layer, order, head, ex)


def project(
    ck: Checkpoint, method: str, scope: str, rows: np.ndarray | None, seed: int, max_points: int, progress: Progress
) -> Projection:
    """Compute a projection without touching the cache (see compute_projection)."""
    layout = RowLayout.of(ck)
    progress(0, 4, f"selecting rows ({scope})")
    in_scope = scope_rows(layout, scope, rows)
    if len(in_scope) < 2:
        raise ValueError(f"scope {scope} holds {len(in_scope)} of the given rows; a projection needs at least 2")
    picked = sample_rows(in_scope, max_points, seed)
    progress(1, 4, f"sampled {len(picked):,} of {len(in_scope):,} rows")
    explained = None
    if method == "pca":
        # axes from every row in scope (cheap: an SVD of the d_head x d_head scatter), then place the sample
        mean, axes, ratio = pca_axes(row_vectors(ck, in_scope))
        coords = ((row_vectors(ck, picked) - mean) @ axes.T).astype(np.float32)
        explained = (float(ratio[0]), float(ratio[1]))
    else:
        progress(2, 4, f"fitting UMAP on {len(picked):,} rows (minutes for tens of thousands)")
        coords = umap_fit(row_vectors(ck, picked), seed=seed)
    layer, order, head, _ = layout.decode(picked)
    return Projection(method, scope, picked, coords, layer, order, head, explained)


def compute_projection(
    ck: Checkpoint,
    method: str,
    scope: str = "pooled",
    rows: np.ndarray | None = None,
    progress: Progress | None = None,
    recompute: bool = False,
    seed: int = 0,
    max_points: int = MAX_POINTS,
    cache_path: str | Path | None = None,
) -> Projection:
    """A 2-D projection of memory rows, loaded from the disk cache when it is there.

    rows: flat row ids to project (e.g. those a corpus hits); None means every row.
    progress: called as progress(done, total, message) at each stage.
    cache_path: the .npz to use instead of the cached (or shipped) one (tests).
    """
    check_request(method, max_points)
    layout = RowLayout.of(ck)
    layout.flat_range(*parse_scope(scope))  # a clear error for a scope this model does not have
    meta = _meta(method, scope, seed, max_points)
    # a row set gets its own file, so the corpus's rows and all rows can both stay cached
    meta["rows"] = _rows_digest(rows)
    name = f"projection-{method}-{scope}{meta['rows']}"
    return cached_projection(
        ck, layout, name, meta, lambda report: project(ck, method, scope, rows, seed, max_points, report),
        progress, recompute, cache_path,
    )  # fmt: skip


def check_request(method: str, max_points: int) -> None:
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if max_points < 2:
        raise ValueError(f"max_points must be at least 2, got {max_points}")


def cached_projection(
    ck: Checkpoint,
    layout: RowLayout,
    name: str,
    meta: dict,
    compute: Callable[[Progress], Projection],
    progress: Progress | None = None,
    recompute: bool = False,
    cache_path: str | Path | None = None,
) -> Projection:
    """The projection `name` from disk when its meta matches, else `compute(progress)`, saved to the cache.

    A shipped copy beside the weights is read first; writes go only to the cache.
    cache_path: the .npz to use instead of the cached (or shipped) one (tests).
    """
    progress = progress or (lambda done, total, message: None)
    source = Path(cache_path) if cache_path is not None else find_file(ck, name, ".npz")
    path = Path(cache_path) if cache_path is not None else cache_file(ck, name, ".npz")
    if not recompute and source.is_file():
        cached = _load(source, layout, meta)
        if cached is not None:
            progress(4, 4, f"loaded from {source.name}")
            return cached
    p = compute(progress)
    progress(3, 4, f"saving {path.name}")
    path.parent.mkdir(parents=True, exist_ok=True)
    _save(path, p, meta)
    progress(4, 4, "done")
    return p
