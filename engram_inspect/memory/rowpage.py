"""Row pages: everything known about one memory row L:N:K:R, gathered from precomputed parts.

- which corpus N-grams hash to it, with counts (the collision index), the top one's
  share and a "crowded" flag when no N-gram holds half the hits;
- what it writes along the direct path (valuespace.py): top promoted and suppressed tokens;
- how the gate treats it: alpha at every corpus-sample position that reads it
  (rowstats.py), with the highest- and lowest-gated contexts and their text;
- what removing it costs: the mean delta log p of its reads, estimated (gradient x
  input, on the sample's estimate windows) or exact on demand (each read removed at
  its one position in a copy of its window: the change in the window's summed
  log-likelihood, every path counted, and at the reading position's own prediction).
  A removed read becomes zeros, its head's mean row or a resampled corpus read, the
  modes of a knock-out (engram_core.ablation), averaged over the resampled runs.

`RowPages` holds the slow parts (sample, its hash rows, the collision index) so that
each page is a few array lookups. This module draws nothing.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch

from engram_core import Checkpoint, KnockOut
from engram_core.ablation import sample_seeds
from engram_core.hooks import engram_hook

from ..base.cache import cache_file, find_file
from .collisions import CollisionIndex, load_or_build, ngram_text
from .ngram_keys import pack_ngram
from .rows import RowAddress, RowLayout
from .rowstats import Progress, RowStats, corpus_streams, load_or_compute
from .valuemap import lookup_counts, plays_counts, row_colours
from .valuespace import ValueIndex, promotes, raw_nearest_in_head, top_tokens

TOP_CONTEXTS, BOTTOM_CONTEXTS, TOP_TOKENS = 20, 10, 10
HIST_BINS = 10  # alpha histogram over [0, 1]
BEFORE, AFTER = 12, 6  # tokens of text shown around a read
NEIGHBOURS = 10
MAX_EXACT = 16  # reads removed one by one for the exact removal cost


def parse_row(text: str) -> RowAddress:
    """A RowAddress from "L:N:K:R"; ValueError naming the expected form otherwise."""
    return RowAddress.parse(text)


@dataclass(frozen=True)
class NgramHits:
    ngram: tuple[int, ...]  # compressed ids, oldest first
    text: str  # one spelling (compression is many-to-one)
    count: int  # occurrences in the training corpus
    plays: int  # of which in the plays
    code: int  # of which in the code


@dataclass(frozen=True)
class Token:
    id: int
    text: str
    logit: float  # direct-path logit


@dataclass(frozen=True)
class Context:
    window: int  # sample window
    position: int  # position in the window (the read happens here)
    stream: str  # "train/plays" or "train/code"
    offset: int  # token offset of the read in its stream
    alpha: float  # mean over branches, to 1/255
    before: str  # text of the tokens before the read
    token: str  # the token whose N-gram reads the row
    after: str  # text after it
    delta: float | None = None  # gradient x input estimate, where the window has one


@dataclass(frozen=True)
class Neighbour:
    address: str  # "L:N:K:R"
    similarity: float  # cosine
    top_ngram: str  # the neighbour's most frequent corpus N-gram ('' if none)


@dataclass(frozen=True)
class RowPage:
    address: RowAddress
    ngrams: list[NgramHits]
    hits: int  # corpus occurrences of all its N-grams
    top_share: float  # share of hits held by the top N-gram (NaN without hits)
    crowded: bool  # no N-gram holds half the hits
    promoted: list[Token]
    suppressed: list[Token]
    reads: int  # corpus-sample positions that read the row
    mean_alpha: float  # NaN when no sample position reads it
    alpha_hist: list[int]  # HIST_BINS counts over [0, 1]
    top_contexts: list[Context]  # highest alpha first
    bottom_contexts: list[Context]  # lowest alpha first
    delta_estimate: float  # mean gradient x input estimate over the reads that have one (NaN: none)
    delta_estimate_reads: int
    delta_exact: float | None = None  # mean exact change in the window's log-likelihood (on demand)
    delta_exact_own: float | None = None  # the same at each read's own prediction only
    delta_exact_reads: int = 0
    delta_exact_mode: str | None = None  # what replaced each read: zero, mean or resample
    delta_exact_samples: int = 1  # resample: runs averaged
    delta_exact_seed: int | None = None  # resample: seed of the first run
    value_neighbours: list[Neighbour] = field(default_factory=list)  # any head, any layer: value-space cosine
    head_neighbours: list[Neighbour] = field(default_factory=list)  # same head only: raw-row cosine

    def to_dict(self) -> dict:
        d = asdict(self)
        d["address"] = f"{self.address.layer}:{self.address.order}:{self.address.head}:{self.address.row}"
        return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in d.items()}


class RowPages:
    """The slow parts every row page reads, loaded (or computed) once."""

    def __init__(self, ck: Checkpoint, stats: RowStats, streams: dict[str, np.ndarray], index: CollisionIndex) -> None:
        self.ck, self.stats, self.streams, self.index = ck, stats, streams, index
        self.layout = RowLayout.of(ck)
        self.tokens = stats.sample.tokens(streams)  # (W, T)
        rows = stats.sample.rows(ck, streams)
        # per layer, (H, W*T): one head's reads are one contiguous vector, scanned per page
        self.rows = {ly: np.ascontiguousarray(r.reshape(-1, r.shape[-1]).T) for ly, r in rows.items()}
        self.alpha = stats.alpha  # (W, T, L) uint8
        self._delta_at = np.full(len(stats.sample), -1, dtype=np.int64)  # window -> row in stats.delta
        self._delta_at[stats.delta_windows] = np.arange(len(stats.delta_windows))
        # loaded up front so that no page pays for counting the plays (~0.3 s an order)
        self._value_index: ValueIndex | None = None  # built on the first page (~1 s)
        self._plays = {n: plays_counts(ck, streams, n) for n in self.layout.spec.orders}

    @classmethod
    def load(cls, ck: Checkpoint, progress: Progress | None = None) -> RowPages:
        streams = corpus_streams(ck)
        return cls(ck, load_or_compute(ck, progress, streams=streams), streams, load_or_build(ck, progress=progress))

    def mean_alpha(self) -> np.ndarray:
        """Per flat row, the mean alpha of the sample positions that read it: (rows,) float32, NaN where none did."""
        out = np.full(self.layout.total, np.nan, dtype=np.float32)
        spec = self.layout.spec
        for li, layer in enumerate(self.layout.layers):
            alpha = self.alpha[:, :, li].ravel().astype(np.float64) / 255.0
            for order in spec.orders:
                for head in range(spec.heads_per_ngram):
                    r = self.layout.flat_range(layer, order, head)
                    rows = self.rows[layer][spec.head_index(order, head)]
                    n = np.bincount(rows, minlength=len(r))
                    with np.errstate(invalid="ignore", divide="ignore"):
                        out[r.start : r.stop] = np.bincount(rows, weights=alpha, minlength=len(r)) / n
        return out

    def colours(self) -> dict[str, np.ndarray]:
        """Per-row map colours (valuemap.row_colours), cached on disk beside the other derived files."""
        source, path = find_file(self.ck, "row-colours", ".npz"), cache_file(self.ck, "row-colours", ".npz")
        # mean alpha depends on the sample as well as the checkpoint: the file names both
        made_from = np.asarray([self.stats.sample.start.sum(), len(self.stats.sample), self.stats.sample.length])
        if source.is_file():
            try:
                with np.load(source, allow_pickle=False) as f:
                    if np.array_equal(f["made_from"], made_from):
                        out = {k: f[k] for k in ("kind", "domain")}
                        out.update({k: f[k].astype(np.float32) for k in ("top_share", "mean_alpha")})
                        return {**out, "crowded": out["top_share"] < 0.5}
            except (OSError, ValueError, KeyError):
                pass  # unreadable or from another sample: recompute
        out = row_colours(self.ck, self.index, self.streams, self.mean_alpha(), top_tokens(self.ck))
        tmp = path.with_name(path.name + ".tmp.npz")
        # float16 shares and alphas (3 significant digits) keep the shipped file small; crowded is derived
        small = {k: out[k].astype(np.float16) for k in ("top_share", "mean_alpha")}
        np.savez_compressed(tmp, made_from=made_from, kind=out["kind"], domain=out["domain"], **small)
        tmp.replace(path)
        return out

    def value_index(self) -> ValueIndex:
        if self._value_index is None:
            self._value_index = ValueIndex(self.ck)
        return self._value_index

    def neighbours(self, found: list[tuple[RowAddress, float]]) -> list[Neighbour]:
        out = []
        for a, sim in found:
            top = self.index.ngrams_at(a.layer, a.order, a.head, a.row)[:1]
            out.append(Neighbour(str(a), round(sim, 6), ngram_text(self.ck, top[0][0]) if top else ""))
        return out

    def reads(self, address: RowAddress) -> tuple[np.ndarray, np.ndarray]:
        """(window, position) of every sample position that reads the row, in sample order."""
        self.layout.check(address)
        h = self.layout.spec.head_index(address.order, address.head)
        flat = np.flatnonzero(self.rows[address.layer][h] == address.row)
        return np.divmod(flat, self.stats.sample.length)

    def context(self, w: int, t: int, alpha: float, delta: float | None) -> Context:
        ids = self.tokens[w]
        dec = self.ck.tokenizer.decode
        s = self.stats.sample
        return Context(
            int(w), int(t), s.names[int(s.stream[w])], int(s.start[w]) + int(t), alpha,
            dec([int(x) for x in ids[max(0, t - BEFORE) : t]], skip_special_tokens=False),
            dec([int(ids[t])], skip_special_tokens=False),
            dec([int(x) for x in ids[t + 1 : t + 1 + AFTER]], skip_special_tokens=False),
            delta,
        )  # fmt: skip

    def delta_of(self, address: RowAddress, w: np.ndarray, t: np.ndarray) -> np.ndarray:
        """Gradient x input estimate of each read (NaN where its window has none)."""
        li = self.layout.layers.index(address.layer)
        h = self.layout.spec.head_index(address.order, address.head)
        at = self._delta_at[w]
        out = np.full(len(w), np.nan)
        has = at >= 0
        out[has] = self.stats.delta[at[has], t[has], li, h].astype(np.float64)
        return out

    def ngram_hits(self, address: RowAddress) -> list[NgramHits]:
        a = address
        found = self.index.ngrams_at(a.layer, a.order, a.head, a.row)
        if not found:
            return []
        keys = np.asarray([pack_ngram(g, self.layout.spec.vocab_size) for g, _ in found], dtype=np.int64)
        plays = lookup_counts(self._plays[a.order], keys)
        return [
            NgramHits(g, ngram_text(self.ck, g), c, int(plays[i]), c - int(plays[i])) for i, (g, c) in enumerate(found)
        ]


def _tokens(ck: Checkpoint, ids: list[int], logits: list[float]) -> list[Token]:
    return [Token(i, ck.tokenizer.decode([i], skip_special_tokens=False), v) for i, v in zip(ids, logits, strict=True)]


def row_page(ck: Checkpoint, address: RowAddress, pages: RowPages | None = None, exact: bool = False,
             max_exact: int = MAX_EXACT, mode: str = "zero", samples: int = 1, seed: int = 0) -> RowPage:  # fmt: skip
    """The page of one row. Without `pages` the slow parts are loaded (or computed) first: pass them when
    asking for many pages. `exact` adds the exact removal cost of up to `max_exact` reads (seconds), each
    read replaced as `mode` says (zero, mean, or resample averaged over `samples` runs from `seed`)."""
    how = KnockOut(mode=mode, samples=samples, seed=seed)  # a bad mode fails before anything loads
    pages = pages or RowPages.load(ck)
    pages.layout.check(address)
    ngrams = pages.ngram_hits(address)
    hits = sum(n.count for n in ngrams)
    share = ngrams[0].count / hits if hits else float("nan")
    p = promotes(ck, address, TOP_TOKENS)
    w, t = pages.reads(address)
    li = pages.layout.layers.index(address.layer)
    a8 = pages.alpha[w, t, li]
    alpha = a8.astype(np.float64) / 255.0
    delta = pages.delta_of(address, w, t)
    hi = np.lexsort((np.arange(len(a8)), -a8.astype(np.int64)))[:TOP_CONTEXTS]  # ties: sample order
    lo = np.lexsort((np.arange(len(a8)), a8))[:BOTTOM_CONTEXTS]
    ctx = [
        [pages.context(w[i], t[i], float(alpha[i]), None if np.isnan(delta[i]) else float(delta[i])) for i in sel]
        for sel in (hi, lo)
    ]
    has = ~np.isnan(delta)
    page = RowPage(
        address=address,
        ngrams=ngrams,
        hits=hits,
        top_share=share,
        crowded=bool(hits) and share < 0.5,
        promoted=_tokens(ck, p.top_ids, p.top_logits),
        suppressed=_tokens(ck, p.bottom_ids, p.bottom_logits),
        reads=len(w),
        mean_alpha=float(alpha.mean()) if len(w) else float("nan"),
        alpha_hist=np.histogram(alpha, bins=HIST_BINS, range=(0.0, 1.0))[0].astype(int).tolist(),
        top_contexts=ctx[0],
        bottom_contexts=ctx[1],
        delta_estimate=float(delta[has].mean()) if has.any() else float("nan"),
        delta_estimate_reads=int(has.sum()),
        value_neighbours=pages.neighbours(pages.value_index().nearest(ck, address, NEIGHBOURS)),
        head_neighbours=pages.neighbours(raw_nearest_in_head(ck, address, NEIGHBOURS)),
    )
    if exact and len(w):
        pick = np.unique(np.linspace(0, len(w) - 1, min(max_exact, len(w))).round().astype(np.int64))
        total, own = exact_removal(pages, address, w[pick], t[pick], mode=how.mode, samples=how.samples,
                                   seed=how.seed)  # fmt: skip
        page = replace(page, delta_exact=float(total.mean()), delta_exact_own=float(own.mean()),
                       delta_exact_reads=len(pick), delta_exact_mode=how.mode,
                       delta_exact_samples=how.samples if how.mode == "resample" else 1,
                       delta_exact_seed=how.seed if how.mode == "resample" else None)  # fmt: skip
    return page


def _logp(model, ids: torch.Tensor, rows: dict[int, torch.Tensor], hook=None) -> torch.Tensor:
    """log p(x_{t+1}) at positions 0..T-2: (B, T-1); `hook` (layer -> forward hook on hook_rows) edits reads."""
    mods = dict(model.named_modules())
    handles = [mods[engram_hook(ly, "rows")].register_forward_hook(h) for ly, h in (hook or {}).items()]
    try:
        with torch.inference_mode():
            return model(ids, rows=rows).float().log_softmax(-1)[:, :-1].gather(-1, ids[:, 1:, None])[..., 0]
    finally:
        for h in handles:
            h.remove()


def exact_removal(pages: RowPages, address: RowAddress, w: np.ndarray, t: np.ndarray, batch: int = 16,
                  mode: str = "zero", samples: int = 1, seed: int = 0):  # fmt: skip
    """Exact delta log p of removing the row's read at one position (w, t), each in its own copy of the window.

    `mode` says what replaces the read, as a knock-out's does: zeros, the head's corpus-weighted
    mean row, or (`resample`) the row a random other corpus N-gram of the same order reads on the
    same head, drawn as `KnockOut(mode="resample", seed=s)` draws on that window alone, for
    s = seed .. seed + samples - 1; the result is then the mean delta over those runs. Modes mean
    and resample need the row sources (`engram_inspect.memory.ablation.install`).

    Returns (window total, own prediction), each (n,): the change in sum_t' log p(x_{t'+1})
    over the whole window, and at the reading position only (0 at a window's last position,
    which predicts nothing inside it).
    """
    how = KnockOut(mode=mode, samples=samples, seed=seed)  # one check of mode, samples and seed
    model, spec = pages.ck.model, pages.layout.spec
    h = spec.head_index(address.order, address.head)
    T = pages.stats.sample.length
    total, own = np.zeros(len(w)), np.zeros(len(w))
    for lo in range(0, len(w), batch):
        ww, tt = w[lo : lo + batch], t[lo : lo + batch]
        ids = torch.from_numpy(pages.tokens[ww])
        rows = {
            ly: torch.from_numpy(np.stack([r[:, x * T : (x + 1) * T].T for x in ww])).long()
            for ly, r in pages.rows.items()
        }
        base = _logp(model, ids, rows)
        pos = torch.from_numpy(tt)
        runs = []
        for sub in _substitutes(model, address.layer, h, rows[address.layer], pos, how):

            def put(_m, _i, e, pos=pos, sub=sub):
                e = e.clone()  # (B, T, H, Dh)
                e[torch.arange(len(pos)), pos, h] = sub.to(e.dtype)
                return e

            runs.append((_logp(model, ids, rows, {address.layer: put}) - base).double())
        diff = torch.stack(runs).mean(0)  # (B, T-1): the mean delta log p over the replacements
        total[lo : lo + len(ww)] = diff.sum(1).numpy()
        inside = torch.from_numpy(tt < T - 1)
        own_part = torch.zeros(len(ww), dtype=torch.float64)
        own_part[inside] = diff[torch.arange(len(ww))[inside], pos[inside]]
        own[lo : lo + len(ww)] = own_part.numpy()
    return total, own


def _substitutes(model, layer: int, head: int, hash_ids: torch.Tensor, pos: torch.Tensor,
                 how: KnockOut) -> list[torch.Tensor]:  # fmt: skip
    """Per run, the (B, Dh) rows that stand in for the reads at `pos` on `head` of `layer` (hash_ids (B, T, H)).

    Zero and mean have one run; resample has one per seed. The rows come from the model's own
    `substitutes` (engram_core.ablation), one window at a time: a read's draw then depends on its
    window and the seed only, not on which other reads share its batch.
    """
    if how.mode == "zero":
        return [torch.tensor(0.0)]
    engram = model.blocks[layer].engram
    seeds = sample_seeds(how.seed, how.samples) if how.mode == "resample" else [how.seed]
    runs = []
    for s in seeds:
        one = [
            engram.substitutes(hash_ids[b : b + 1], replace(how, seed=s))[0, int(p), head] for b, p in enumerate(pos)
        ]
        runs.append(torch.stack(one))
    return runs
