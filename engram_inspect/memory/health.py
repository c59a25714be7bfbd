"""Memory health per hash table: how evenly the corpus spreads its reads over the rows.

Lample et al. 2019 ("Large Memory Layers with Product Keys", §4.4) judge a memory
by its usage (share of rows ever read) and the KL divergence of the read
distribution from uniform; we add the Gini coefficient, the number of rows that
hold 50/90/99 % of the reads, and dead rows. Each statistic exists twice: on raw
hit counts (every occurrence counts 1, from the collision index) and on hits
weighted by the gate α of the token that read the row (a row read often but
gated shut does little).

The statistics are pure functions of one head's hit vector (one entry per row);
this module does not decide whether a table is healthy.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import torch

from engram_core import Checkpoint, HashSpec

from ..base.activations import GATE, HASH_IDS, activations, memory_names
from .collisions import CollisionIndex

GATE_TOKENS = 65_536  # default token budget of gate_weighted_hits: 256 windows of 256 tokens
QUANTILES = (0.5, 0.9, 0.99)
NAN = float("nan")

HeadKey = tuple[int, int, int]  # (layer, order, head)


# --- statistics of one hit vector --------------------------------------------------------------


def _hits(hits: np.ndarray) -> np.ndarray:
    h = np.asarray(hits, dtype=np.float64)
    if h.ndim != 1 or len(h) == 0:
        raise ValueError(f"hits must be a non-empty 1-D vector (one entry per row), got shape {h.shape}")
    if not np.isfinite(h).all() or (h < 0).any():
        raise ValueError("hits must be finite and non-negative")
    return h


def usage(hits: np.ndarray) -> float:
    """Share of rows read at least once, in [0, 1] (hits > 0 for weighted hits)."""
    h = _hits(hits)
    return float((h > 0).mean())


def dead_rows(hits: np.ndarray) -> int:
    """Rows never read."""
    return int((_hits(hits) == 0).sum())


def kl_uniform(hits: np.ndarray) -> float:
    """KL(p || uniform over rows) in nats, p = hits / total: 0 if even, log(rows) if one row.

    NaN for a table without hits: there is no distribution to compare.
    """
    h = _hits(hits)
    total = h.sum()
    if total == 0:
        return NAN
    p = h[h > 0] / total
    return float(max(0.0, (p * np.log(p * len(h))).sum()))  # clamp float round-off below 0


def gini(hits: np.ndarray) -> float:
    """Gini coefficient of the hits over rows, in [0, 1 - 1/rows]; NaN for a table without hits.

    Convention: with x sorted ascending and i = 1..n,
    G = sum_i (2i - n - 1) x_i / (n sum_i x_i), which equals the mean absolute
    difference over all ordered pairs divided by twice the mean. Even hits give 0;
    all hits on one row give (n - 1) / n.
    """
    h = np.sort(_hits(hits))
    total = h.sum()
    if total == 0:
        return NAN
    n = len(h)
    coef = 2 * np.arange(1, n + 1, dtype=np.float64) - n - 1
    return float((coef * h).sum() / (n * total))


def rows_for(hits: np.ndarray, share: float) -> int:
    """Fewest rows (the busiest ones) that hold at least `share` of all hits; 0 without hits."""
    if not 0 < share <= 1:
        raise ValueError(f"share must lie in (0, 1], got {share}")
    h = _hits(hits)
    total = h.sum()
    if total == 0:
        return 0
    cum = np.cumsum(np.sort(h)[::-1])
    # subtle: 0.9 * total may land a rounding error above an exact partial sum
    return int(np.searchsorted(cum, share * total * (1 - 1e-12))) + 1


def table_stats(hits: np.ndarray) -> dict[str, float]:
    """Every statistic of one hit vector, keyed like the TableHealth fields (without prefix)."""
    h = _hits(hits)
    out = {
        "hits": float(h.sum()),
        "usage": usage(h),
        "kl_uniform": kl_uniform(h),
        "gini": gini(h),
        "dead_rows": dead_rows(h),
    }
    out.update({f"rows_for_{round(100 * q)}": rows_for(h, q) for q in QUANTILES})
    return out


# --- per table ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class TableHealth:
    """Health of one (layer, order, head) table; gw_* are gate-weighted, NaN when not measured."""

    layer: int
    order: int
    head: int
    rows: int  # table size (its prime)
    hits: int  # N-gram occurrences counted (corpus positions)
    usage: float  # share of rows read at least once
    kl_uniform: float  # KL(hit distribution || uniform), nats
    gini: float  # Gini coefficient of hits over rows
    rows_for_50: int  # busiest rows holding 50 % of the hits
    rows_for_90: int
    rows_for_99: int
    dead_rows: int  # rows never read
    gw_hits: float = NAN  # total gate weight (sum of α over the sampled tokens)
    gw_usage: float = NAN
    gw_kl_uniform: float = NAN
    gw_gini: float = NAN
    gw_rows_for_50: float = NAN
    gw_rows_for_90: float = NAN
    gw_rows_for_99: float = NAN
    gw_dead_rows: float = NAN


def table_hits(index: CollisionIndex, layer: int, order: int, head: int) -> np.ndarray:
    """Occurrences that read each row of one head: (P,) int64, the count-weighted bincount of rows."""
    occ = index.occupancy(layer, order, head)
    counts = index.counts[order][index.perm[(layer, order)][head]]  # grouped by row
    cum = np.concatenate([[0], np.cumsum(counts)])
    ptr = np.concatenate([[0], np.cumsum(occ)])
    return cum[ptr[1:]] - cum[ptr[:-1]]


def table_health(
    layer: int, order: int, head: int, hits: np.ndarray, weighted: np.ndarray | None = None
) -> TableHealth:
    """Health of one table from its hit vector and, optionally, its gate-weighted hits."""
    stats = table_stats(hits)
    stats["hits"] = int(stats["hits"])
    if weighted is not None:
        if len(weighted) != len(hits):
            raise ValueError(f"weighted hits have {len(weighted)} rows, hits {len(hits)}")
        stats.update({f"gw_{k}": float(v) for k, v in table_stats(weighted).items()})
    return TableHealth(layer=layer, order=order, head=head, rows=len(hits), **stats)


def memory_health(index: CollisionIndex, gate_hits: Mapping[HeadKey, np.ndarray] | None = None) -> list[TableHealth]:
    """Health of every table of the index, with gate-weighted variants where `gate_hits` has them."""
    out = []
    spec = index.spec
    for layer in spec.layer_ids:
        for order in spec.orders:
            for head in range(spec.heads_per_ngram):
                weighted = None if gate_hits is None else gate_hits.get((layer, order, head))
                out.append(table_health(layer, order, head, table_hits(index, layer, order, head), weighted))
    return out


def health_table(index: CollisionIndex, gate_hits: Mapping[HeadKey, np.ndarray] | None = None) -> list[dict]:
    """`memory_health` as plain dicts, one per table, for export."""
    return [dataclasses.asdict(h) for h in memory_health(index, gate_hits)]


# --- gate-weighted hits from the model ---------------------------------------------------------


def sample_windows(streams: Iterable[np.ndarray], window: int, max_tokens: int) -> list[np.ndarray]:
    """Non-overlapping windows of `window` tokens, evenly spread over all streams, ≤ max_tokens in all.

    Evenly spread over all candidate windows rather than the first ones, so a capped
    sample covers every stream (plays and code) roughly in proportion to its length,
    not only the start of the first. A stream shorter than a window is one window.
    """
    cands = []
    for s in streams:
        s = np.asarray(s)
        if 0 < len(s) < window:
            cands.append(s)
        cands += [s[i : i + window] for i in range(0, len(s) - window + 1, window)]
    k = min(len(cands), max_tokens // window)
    if k == 0:
        return []
    return [cands[int(i)] for i in np.linspace(0, len(cands) - 1, k).round().astype(int)]


def _capture(ck: Checkpoint, ids: torch.Tensor) -> dict[str, torch.Tensor]:
    """Hash ids and gates of the Engram layers for a batch of windows (the pass ends after the last one)."""
    return activations(ck.model, ids, memory_names(ck.model.engram_layers, (HASH_IDS, GATE)), logits=False)[1]


def gate_weighted_hits(
    ck: Checkpoint,
    token_streams: Iterable[np.ndarray] | Mapping[str, np.ndarray],
    max_tokens: int = GATE_TOKENS,
    window: int = 256,
    batch: int = 16,
) -> dict[HeadKey, np.ndarray]:
    """Per (layer, order, head), the row hits of sampled windows weighted by the gate α (mean over branches).

    Runs the model on at most `max_tokens` tokens of raw-id streams, in windows of
    ≤ `window` tokens (each a fresh context, as in training), spread evenly over the
    streams. Runs in float32: bfloat16 autocast was no faster on the 2-core CPU we
    measured. The default model took about 2.7 s per 1,000 tokens on 2 cores shared
    with a training run, so the default budget costs minutes: pass less when interactive.
    """
    model = ck.model
    spec = model.cfg.memory.hash_spec if model.cfg.memory is not None else None
    if spec is None:
        raise ValueError("this checkpoint has no Engram memory")
    streams = token_streams.values() if isinstance(token_streams, Mapping) else token_streams
    windows = sample_windows(streams, min(window, model.cfg.backbone.block_size), max_tokens)
    out = {
        (ly, n, h): np.zeros(spec.primes[ly][spec.head_index(n, h)])
        for ly in spec.layer_ids
        for n in spec.orders
        for h in range(spec.heads_per_ngram)
    }
    by_length: dict[int, list[np.ndarray]] = {}
    for w in windows:
        by_length.setdefault(len(w), []).append(w)
    for group in by_length.values():
        for start in range(0, len(group), batch):
            ids = torch.as_tensor(np.stack(group[start : start + batch]).astype(np.int64))  # (B, T)
            _accumulate(out, _capture(ck, ids), spec)
    return out


def _accumulate(out: dict[HeadKey, np.ndarray], cache: dict[str, torch.Tensor], spec: HashSpec) -> None:
    """Add each token's mean gate to the row every head read for it."""
    for ly in spec.layer_ids:
        hash_name, gate_name = memory_names([ly], (HASH_IDS, GATE))
        rows = cache[hash_name].reshape(-1, spec.heads_per_layer).cpu().numpy()  # (B*T, H)
        alpha = cache[gate_name].float().mean(-1).reshape(-1).cpu().numpy()  # (B*T,)
        for n in spec.orders:
            for h in range(spec.heads_per_ngram):
                acc = out[(ly, n, h)]
                acc += np.bincount(rows[:, spec.head_index(n, h)], weights=alpha, minlength=len(acc))


def mean_gate_per_row(
    ck: Checkpoint, token_streams: Iterable[np.ndarray] | Mapping[str, np.ndarray], max_tokens: int = 16_384
) -> dict[HeadKey, np.ndarray]:
    """Per (layer, order, head), the mean gate α of the sampled tokens that read each row; NaN where none did."""
    model = ck.model
    spec = model.cfg.memory.hash_spec if model.cfg.memory is not None else None
    if spec is None:
        raise ValueError("this checkpoint has no Engram memory")
    streams = token_streams.values() if isinstance(token_streams, Mapping) else token_streams
    windows = sample_windows(streams, model.cfg.backbone.block_size, max_tokens)
    sums = {k: np.zeros(spec.primes[k[0]][spec.head_index(k[1], k[2])]) for k in _head_keys(spec)}
    counts = {k: np.zeros_like(v) for k, v in sums.items()}
    for w in windows:
        cache = _capture(ck, torch.as_tensor(w.astype(np.int64))[None])
        _accumulate(sums, cache, spec)
        ones = {n: torch.ones_like(cache[n]) for n in memory_names(spec.layer_ids, (GATE,))}
        _accumulate(counts, {**cache, **ones}, spec)
    with np.errstate(invalid="ignore", divide="ignore"):
        return {k: np.where(counts[k] > 0, sums[k] / counts[k], np.nan) for k in sums}


def _head_keys(spec: HashSpec) -> list[HeadKey]:
    return [(ly, n, h) for ly in spec.layer_ids for n in spec.orders for h in range(spec.heads_per_ngram)]


@dataclass(frozen=True)
class MhcCheck:
    """How far H_res is from doubly stochastic on one text (§2.4: it should be exactly)."""

    error: float  # largest |row or column sum - 1| of H_res over every mHC map and position
    tolerance: float  # the checkpoint's Sinkhorn tolerance; 0 when it runs a fixed number of steps
    steps: int  # the fixed step count (tolerance 0) or the step cap

    def describe(self) -> str:
        how = (
            f"Sinkhorn to a tolerance of {self.tolerance:g} (at most {self.steps} steps)"
            if self.tolerance > 0
            else f"{self.steps} fixed Sinkhorn steps, as this checkpoint was trained"
        )
        verdict = "within 1e-3" if self.error <= 1e-3 else "not doubly stochastic to 1e-3"
        return f"mHC: largest row or column error of H_res on this text {self.error:.2g} ({verdict}; {how})."


def mhc_check(ck: Checkpoint, token_ids: np.ndarray) -> MhcCheck:
    """The H_res error of one text under the checkpoint's own Sinkhorn settings."""
    b = ck.model.cfg.backbone
    ids = torch.as_tensor(np.asarray(token_ids, dtype=np.int64)[: b.block_size]).unsqueeze(0)
    error = ck.model.sinkhorn_error(ids) if ids.shape[1] else 0.0
    steps = b.sinkhorn_max_iters if b.sinkhorn_tol > 0 else b.sinkhorn_iters
    return MhcCheck(error=float(error), tolerance=b.sinkhorn_tol, steps=steps)
