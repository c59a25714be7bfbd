"""Per-row gate statistics over a corpus sample: the slow pass behind row pages, computed once per checkpoint.

The sample is a fixed set of windows of the training corpus (every stream cut into
context-long windows, a deterministic, evenly spread choice of them), so it is stored
as (stream, start) pairs and regenerated from the cached corpus, never as text. Each
window is a fresh context for the model, as in training, but its hash rows come
from the stream (the N-grams at a window's start see the tokens before it), so a
position reads exactly the row the collision index files its N-gram under.

The pass keeps, per sample position and Engram layer, the gate alpha (mean over
branches, quantised to 1/255), and, on an evenly spread subset of the windows, a
first-order estimate of what removing each read costs: gradient x input,
-(d/de) sum_t log p(x_{t+1}) . e, for the looked-up row e of every head at every
position (every path counted: conv, attention, later layers; exact to first order).
Which positions read a row is not stored: hashing the sample again takes ~0.1 s.
The stats name the corpus they sampled (its fingerprint): the code part is the standard
library of the running interpreter, so under another interpreter the same (stream, start)
pairs would be other text, and the stats are computed again for that corpus.

W windows, T window length, L Engram layers, H heads per layer.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from engram_core import Checkpoint
from engram_core.hashing import hash_all
from engram_core.hooks import engram_hook

from ..base.activations import activations
from ..base.cache import cache_file, checkpoint_key, find_file
from .ngram_keys import corpus_fingerprint

FORMAT = "engram-rowstats/1"
SAMPLE_TOKENS = 1 << 20  # tokens of the gate pass: 4,096 windows of 256
DELTA_TOKENS = 1 << 14  # tokens of the gradient x input pass (a backward costs ~3 forwards)
BATCH = 8  # windows per forward: measured fastest on the 2-core machine (8: ~4,300 tok/s, 16: ~3,600, 48: ~1,850)

Progress = Callable[[int, int, str], None]


def corpus_streams(ck: Checkpoint) -> dict[str, np.ndarray]:
    """The training streams by name ("train/code", "train/plays"), tokenised with this checkpoint's tokenizer."""
    from engram_core.pipeline import prepare_corpus

    tok, streams, _ = prepare_corpus(log=lambda *_: None, tokenizer=ck.tokenizer)
    if tok.get_vocab() != ck.tokenizer.get_vocab():
        raise ValueError("the cached training corpus was tokenized with another tokenizer than this checkpoint's")
    return {k: v for k, v in sorted(streams.items()) if k.startswith("train/")}


@dataclass(frozen=True, eq=False)
class Sample:
    """Windows of token streams: which stream, where it starts; tokens and rows regenerated from the streams."""

    names: tuple[str, ...]  # stream names, e.g. "train/plays"
    stream: np.ndarray  # (W,) int index into names
    start: np.ndarray  # (W,) int64 first token of each window in its stream
    length: int  # T, tokens per window

    @classmethod
    def choose(cls, streams: dict[str, np.ndarray], length: int, max_tokens: int) -> Sample:
        """Non-overlapping windows, evenly spread over all streams in proportion to their length."""
        if length < 1:
            raise ValueError(f"window length must be at least 1, got {length}")
        names = tuple(streams)
        cands = [(i, s) for i, n in enumerate(names) for s in range(0, len(streams[n]) - length + 1, length)]
        k = min(len(cands), max_tokens // length)
        if k == 0:
            raise ValueError(f"the streams hold no window of {length} tokens (or max_tokens < {length})")
        picked = [cands[int(j)] for j in np.linspace(0, len(cands) - 1, k).round().astype(int)]
        return cls(names, np.asarray([p[0] for p in picked]), np.asarray([p[1] for p in picked]), length)

    def __len__(self) -> int:
        return len(self.start)

    def tokens(self, streams: dict[str, np.ndarray]) -> np.ndarray:
        """(W, T) int64 raw ids."""
        return np.stack(
            [
                np.asarray(streams[self.names[i]][s : s + self.length], np.int64)
                for i, s in zip(self.stream, self.start, strict=True)
            ]
        )

    def rows(self, ck: Checkpoint, streams: dict[str, np.ndarray]) -> dict[int, np.ndarray]:
        """Head-local rows per Engram layer, (W, T, H) int32, hashed with each window's true preceding tokens."""
        spec = ck.model.cfg.memory.hash_spec
        back = spec.max_ngram - 1
        comp = ck.model.compression.cpu().numpy()
        cids = np.full((len(self), back + self.length), spec.pad_id, dtype=np.int64)
        for w, (i, s) in enumerate(zip(self.stream, self.start, strict=True)):
            lo = max(0, s - back)  # subtle: before a stream's start the pad stands in, as in the collision index
            seg = comp[np.asarray(streams[self.names[i]][lo : s + self.length], np.int64)]
            cids[w, back - (s - lo) :] = seg
        return {ly: r[:, back:].numpy().astype(np.int32) for ly, r in hash_all(cids, spec).items()}

    def meta(self) -> dict:
        return {"names": list(self.names), "length": self.length}


@dataclass(frozen=True, eq=False)
class RowStats:
    """What the pass measured at every sample position (see the module docstring)."""

    key: str  # checkpoint key
    corpus: str  # fingerprint of the streams sampled (ngram_keys.corpus_fingerprint)
    sample: Sample
    alpha: np.ndarray  # (W, T, L) uint8: round(255 * alpha), alpha the mean over branches
    delta_windows: np.ndarray  # (Wd,) indices into the sample's windows that have delta
    delta: np.ndarray  # (Wd, T, L, H) float16: gradient x input estimate of delta log p

    def alpha_float(self) -> np.ndarray:
        return self.alpha.astype(np.float32) / 255.0

    def save(self, path) -> None:
        meta = {"format": FORMAT, "key": self.key, "corpus": self.corpus, **self.sample.meta()}
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez_compressed(
            tmp,
            meta=np.asarray(json.dumps(meta)),
            stream=self.sample.stream.astype(np.int16),
            start=self.sample.start.astype(np.int64),
            alpha=self.alpha,
            delta_windows=self.delta_windows.astype(np.int32),
            delta=self.delta,
        )
        tmp.replace(path)  # atomic: a reader never sees half a file

    @classmethod
    def load(cls, path, key: str, corpus: str) -> RowStats | None:
        """The saved stats, or None when missing, unreadable, or made for another checkpoint or corpus."""
        try:
            with np.load(path, allow_pickle=False) as f:
                meta = json.loads(str(f["meta"]))
                if meta.get("format") != FORMAT or meta.get("key") != key or meta.get("corpus") != corpus:
                    return None
                sample = Sample(tuple(meta["names"]), f["stream"].astype(np.int64), f["start"], int(meta["length"]))
                return cls(key, corpus, sample, f["alpha"], f["delta_windows"].astype(np.int64), f["delta"])
        except (OSError, KeyError, ValueError):
            return None


def _gates(model, ids: torch.Tensor, rows: dict[int, torch.Tensor]) -> dict[int, torch.Tensor]:
    """Mean-over-branches alpha per Engram layer, (B, T); the forward stops after the last gate."""
    names = {engram_hook(ly, "gate"): ly for ly in model.engram_layers}
    _, cache = activations(model, ids, list(names), logits=False, rows=rows)
    return {ly: cache[name].float().mean(-1) for name, ly in names.items()}


def grad_times_input(model, ids: torch.Tensor, rows: dict[int, torch.Tensor]) -> dict[int, torch.Tensor]:
    """-(d sum_t log p(x_{t+1}) / de) . e per Engram layer, (B, T, H): first-order delta log p of removing each read."""
    reads: dict[int, torch.Tensor] = {}
    mods = dict(model.named_modules())

    def keep(layer):
        def hook(_m, _i, e):
            e = e.detach().requires_grad_(True)  # a leaf per layer: its gradient is what we read
            reads[layer] = e
            return e

        return hook

    handles = [mods[engram_hook(ly, "rows")].register_forward_hook(keep(ly)) for ly in model.engram_layers]
    try:
        with torch.enable_grad():
            logits = model(ids, rows=rows)
            logp = logits.to(torch.promote_types(logits.dtype, torch.float32)).log_softmax(-1)[:, :-1]
            total = logp.gather(-1, ids[:, 1:, None]).sum()
            grads = torch.autograd.grad(total, [reads[ly] for ly in model.engram_layers])
    finally:
        for h in handles:
            h.remove()
    return {ly: -(g * reads[ly].detach()).sum(-1) for ly, g in zip(model.engram_layers, grads, strict=True)}


def compute_row_stats(
    ck: Checkpoint,
    streams: dict[str, np.ndarray] | None = None,
    max_tokens: int = SAMPLE_TOKENS,
    delta_tokens: int = DELTA_TOKENS,
    progress: Progress | None = None,
) -> RowStats:
    """Run the pass (minutes for the default budgets; see bench/README.md)."""
    model = ck.model
    if model.cfg.memory is None:
        raise ValueError("this checkpoint has no Engram memory")
    streams = corpus_streams(ck) if streams is None else streams
    report = progress or (lambda _d, _t, _m: None)
    sample = Sample.choose(streams, model.cfg.backbone.block_size, max_tokens)
    ids, rows = sample.tokens(streams), sample.rows(ck, streams)
    W, T, L = len(sample), sample.length, len(model.engram_layers)
    n_delta = min(W, max(0, delta_tokens // T))
    delta_windows = np.linspace(0, W - 1, n_delta).round().astype(np.int64) if n_delta else np.zeros(0, np.int64)
    total = W + 3 * n_delta  # a backward costs about three gate passes
    alpha = np.empty((W, T, L), dtype=np.uint8)
    t0 = time.perf_counter()
    for lo in range(0, W, BATCH):
        hi = min(lo + BATCH, W)
        r = {ly: torch.from_numpy(rows[ly][lo:hi]).long() for ly in model.engram_layers}
        gates = _gates(model, torch.from_numpy(ids[lo:hi]), r)
        alpha[lo:hi] = np.stack([np.rint(gates[ly].numpy() * 255) for ly in model.engram_layers], -1)
        report(hi, total, f"gates: {hi * T:,} tokens, {hi * T / (time.perf_counter() - t0):,.0f} tok/s")
    delta = np.zeros((n_delta, T, L, model.cfg.memory.heads_per_layer), dtype=np.float16)
    for lo in range(0, n_delta, BATCH):
        sel = delta_windows[lo : lo + BATCH]
        r = {ly: torch.from_numpy(rows[ly][sel]).long() for ly in model.engram_layers}
        g = grad_times_input(model, torch.from_numpy(ids[sel]), r)
        delta[lo : lo + len(sel)] = np.stack([g[ly].numpy() for ly in model.engram_layers], 2)
        report(W + 3 * (lo + len(sel)), total, f"removal estimates: {(lo + len(sel)) * T:,} tokens")
    return RowStats(checkpoint_key(ck), corpus_fingerprint(list(streams.values())), sample, alpha, delta_windows, delta)


def load_or_compute(
    ck: Checkpoint,
    progress: Progress | None = None,
    recompute: bool = False,
    streams: dict[str, np.ndarray] | None = None,
) -> RowStats:
    """The stats of the training-corpus sample: shipped beside the weights (`rowstats-<key>.npz`), cached under
    ENGRAM_CACHE, or computed (minutes, with `progress`) and saved there on first use; a file of another
    corpus (another interpreter's standard library) is not used."""
    key = checkpoint_key(ck)
    streams = corpus_streams(ck) if streams is None else streams
    corpus = corpus_fingerprint(list(streams.values()))
    if not recompute:
        for source in (find_file(ck, "rowstats", ".npz"), cache_file(ck, "rowstats", ".npz")):  # shipped copy first
            stats = RowStats.load(source, key, corpus) if source.is_file() else None
            if stats is not None:
                return stats
    path = cache_file(ck, "rowstats", ".npz")
    stats = compute_row_stats(ck, streams, progress=progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    stats.save(path)
    return stats
