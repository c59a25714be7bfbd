"""Attribution of one prediction to the memory reads that fed it.

For a clicked position p (the prediction of token p+1), a *read* is one looked-up
row: (Engram layer, order, head, position read). Two answers:

- `exact`: the reads closest to p, those at p and at the earlier positions the
  short conv reaches (p - j * dilation, j < kernel, dilation = max N-gram order,
  §2.3), each removed alone at that one position; the change in log p(actual next
  token) counts every path (the gate, the conv, attention and later layers).
- `approx`: gradient x input on the looked-up rows, for every read at every
  position up to p at once (one forward and one backward): the first-order
  estimate of the same removal, which also covers reads outside the conv's reach
  that act through attention.

How the exact removals stay cheap: removing a read at position q changes nothing
before q, so one plain pass over the window cut at p keeps every block's inputs,
and each removal re-runs only positions q..p, batched one copy per read (one batch
per position read), attending to the kept keys and values of the earlier
positions. A test checks this against the full-window knock-out.

This module is analysis only: it reads the model, it never changes it.

C copies, T window positions, n suffix positions, H heads of a layer, Dh row width,
M branches, D width.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F

from engram_core import Checkpoint, KnockOut
from engram_core.ablation import sample_seeds
from engram_core.knockout import NO_KNOCKOUT
from engram_core.layers import apply_rope
from engram_core.tokenizer import encode

from ..memory.ablation import install
from .capture import _decode_each, _ngram_texts

METHODS = ("exact", "approx")


@dataclass
class _Window:
    """The text cut at the clicked position, as the model sees it."""

    ids: torch.Tensor  # (1, T) raw ids of the window, ending at the clicked position
    rows: dict[int, torch.Tensor]  # layer -> (1, T, H) rows read, hashed over the whole text
    start: int  # position of the window's first token in the text
    target: int  # raw id of the actual next token


def conv_reach(position: int, kernel: int, dilation: int) -> list[int]:
    """Positions whose memory reads reach `position` through the short conv (eq. 5), nearest first."""
    return [position - j * dilation for j in range(kernel) if position - j * dilation >= 0]


def _window(ck: Checkpoint, ids: list[int], position: int) -> _Window:
    model = ck.model
    C = model.cfg.backbone.block_size
    full = torch.tensor([ids])
    rows = model.hash_rows(full)
    start = max(0, position + 1 - C)
    cut = {k: v[:, start : position + 1] for k, v in rows.items()}
    return _Window(full[:, start : position + 1], cut, start, ids[position + 1])


def _check(ck: Checkpoint, ids: list[int], position: int) -> None:
    if ck.model.cfg.memory is None:
        raise ValueError("this checkpoint has no Engram memory to attribute to")
    if not ids:
        raise ValueError("the text is empty: nothing to attribute")
    if len(ids) < 2:
        raise ValueError("the text is one token: there is no next token to predict")
    if not 0 <= position < len(ids) - 1:
        raise ValueError(
            f"position {position} has no next token: choose 0..{len(ids) - 2} (the text is {len(ids)} tokens)"
        )


class _BasePass:
    """One plain pass over the window, keeping what the suffix re-runs need: every block's
    residual input, every attention sublayer's input, and every Engram layer's looked-up rows."""

    def __init__(self, model, w: _Window) -> None:
        self.resid: dict[int, torch.Tensor] = {}  # block -> (1, T, M, D)
        self.attn_in: dict[int, torch.Tensor] = {}  # block -> (1, T, D)
        self.e: dict[int, torch.Tensor] = {}  # layer -> (1, T, H, Dh)
        handles = []
        for b, block in enumerate(model.blocks):
            handles.append(block.hook_resid_pre.register_forward_hook(self._keep(self.resid, b)))
            handles.append(block.attn.sublayer.register_forward_pre_hook(self._keep_input(self.attn_in, b)))
            if block.engram is not None:
                handles.append(block.engram.hook_rows.register_forward_hook(self._keep(self.e, b)))
        try:
            self.logits = model(w.ids, rows=w.rows)
        finally:
            for h in handles:
                h.remove()

    @staticmethod
    def _keep(store: dict, key: int):
        return lambda _m, _i, out: store.__setitem__(key, out.detach())

    @staticmethod
    def _keep_input(store: dict, key: int):
        return lambda _m, args: store.__setitem__(key, args[0].detach())


def _prefix_attention(attn, x: torch.Tensor, x_prefix: torch.Tensor) -> torch.Tensor:
    """Causal attention of suffix inputs x (C, n, D) over the kept prefix (1, s, D) and themselves.

    The same arithmetic as `Attention.forward` on the whole window, restricted to
    the last n queries; the prefix's keys and values are computed once for all copies.
    """
    C, n, D = x.shape
    s = x_prefix.shape[1]
    nh = attn.n_head
    heads = lambda t: t.view(t.shape[0], t.shape[1], nh, D // nh).transpose(1, 2)  # noqa: E731  (B, nh, T, hd)
    q, k, v = (heads(t) for t in attn.qkv(attn.norm(x)).split(D, dim=-1))
    q = apply_rope(q, attn.cos[s : s + n], attn.sin[s : s + n])
    k = apply_rope(k, attn.cos[s : s + n], attn.sin[s : s + n])
    if s:
        _, kp, vp = (heads(t) for t in attn.qkv(attn.norm(x_prefix)).split(D, dim=-1))
        kp = apply_rope(kp, attn.cos[:s], attn.sin[:s])
        k = torch.cat([kp.expand(C, -1, -1, -1), k], 2)  # (C, nh, s + n, hd)
        v = torch.cat([vp.expand(C, -1, -1, -1), v], 2)
    att = (q @ k.transpose(-2, -1)) * (q.shape[-1] ** -0.5)  # (C, nh, n, s + n)
    att = att.masked_fill(~attn.causal[s : s + n, : s + n], float("-inf")).softmax(-1)
    return attn.proj((att @ v).transpose(1, 2).reshape(C, n, D))


def _suffix_logprob(model, base: _BasePass, e: dict[int, torch.Tensor], s: int, target: int) -> torch.Tensor:
    """log p(target) at the window's last position for C copies whose looked-up rows are `e`
    (layer -> (C, T, H, Dh)), identical to the plain pass before position s."""
    first = min(e)
    T = base.resid[first].shape[1]
    C = next(iter(e.values())).shape[0]
    reach = (model.cfg.memory.conv_kernel - 1) * model.cfg.memory.max_ngram
    H = base.resid[first][:, s:].expand(C, -1, -1, -1)  # (C, n, M, D)
    for b in range(first, len(model.blocks)):
        block = model.blocks[b]
        if block.engram is not None:
            lo = max(0, s - reach)  # the conv at s looks back `reach` positions
            H_ext = torch.cat([base.resid[b][:, lo:s].expand(C, -1, -1, -1), H], 1)
            Y = block.engram.readout(H_ext, e[b][:, lo:T].flatten(-2), None)
            H = H + Y[:, s - lo :]
        prefix = base.attn_in[b][:, :s]
        hook = block.attn.sublayer.register_forward_hook(
            lambda m, args, _out, kept=prefix: _prefix_attention(m, args[0], kept)
        )
        try:
            H = block.attn(H)  # the mHC mixing of the block, with attention over the kept prefix
        finally:
            hook.remove()
        H = block.mlp(H)
    logits = F.linear(model.norm(H[:, -1].mean(1)), model.wte.weight)  # (C, V) tied head
    return F.log_softmax(logits.float(), -1)[:, target]


def _reads(model, w: _Window, position_in_window: int) -> list[tuple[int, int, int]]:
    """(layer, head index, position in window) of every read in the conv's reach, layer-major."""
    mem = model.cfg.memory
    near = conv_reach(position_in_window, mem.conv_kernel, mem.max_ngram)
    return [(L, h, q) for L in mem.layer_ids for h in range(mem.heads_per_layer) for q in near]


def _substitutes(ck: Checkpoint, w: _Window, how: KnockOut) -> list[dict[int, torch.Tensor]]:
    """Per resampled run (one for zero and mean), per layer, (1, T, H, Dh) rows that replace a removed read."""
    model = ck.model
    if how.mode == "zero":
        return [None]
    install(ck)
    # subtle: resampled rows are looked up in the table, a parameter; under approx's enable_grad
    # they would carry a graph, and a replacement is a constant of the first-order change
    with torch.no_grad():
        return [
            {L: model.blocks[L].engram.substitutes(w.rows[L], replace(how, seed=s)) for L in w.rows}
            for s in sample_seeds(how.seed, how.samples)
        ]


@torch.no_grad()
def exact_deltas(
    ck: Checkpoint, ids: list[int], position: int, how: KnockOut = NO_KNOCKOUT
) -> tuple[list[tuple[int, int, int]], np.ndarray]:
    """Reads in the conv's reach of `position` ((layer, head index, position in the text)) and the
    exact change in log p(next token) when each is removed at that one position, replaced as
    `how.mode` says (zeros, its head's mean row, or resampled: log of the mean p over the runs)."""
    _check(ck, ids, position)
    model = ck.model
    w = _window(ck, ids, position)
    p = w.ids.shape[1] - 1
    base = _BasePass(model, w)
    reads = _reads(model, w, p)
    runs = _substitutes(ck, w, how)
    deltas = np.zeros(len(reads), dtype=np.float32)
    # one batch per position read: a removal at q re-runs only positions q..p
    for q in sorted({q for _, _, q in reads}):
        group = [i for i, r in enumerate(reads) if r[2] == q]
        n = 1 + len(group) * len(runs)  # copy 0 keeps everything; then one copy per read and run
        e = {L: base.e[L].expand(n, -1, -1, -1).clone() for L in base.e}
        for r, sub in enumerate(runs):
            for c, i in enumerate(group):
                L, h, _ = reads[i]
                e[L][1 + r * len(group) + c, q, h] = 0.0 if sub is None else sub[L][0, q, h]
        lp = _suffix_logprob(model, base, e, q, w.target).double()
        removed = torch.logsumexp(lp[1:].view(len(runs), len(group)), 0) - math.log(len(runs))
        deltas[group] = (removed - lp[0]).float().numpy()
    return [(L, h, q + w.start) for L, h, q in reads], deltas


def approx_deltas(
    ck: Checkpoint, ids: list[int], position: int, how: KnockOut = NO_KNOCKOUT
) -> tuple[list[tuple[int, int, int]], np.ndarray]:
    """Every read at every position of the window cut at `position`, with gradient x input:
    Δ log p ≈ ∂ log p(next) / ∂e · (e' - e), the first-order change when the read e becomes
    its replacement e' (zeros, the head's mean row, or resampled rows averaged over the runs)."""
    _check(ck, ids, position)
    model = ck.model
    w = _window(ck, ids, position)
    leaves: dict[int, torch.Tensor] = {}

    def make_leaf(layer: int):
        def hook(_m, _i, out):
            leaves[layer] = out.detach().requires_grad_(True)
            return leaves[layer]

        return hook

    handles = [b.engram.hook_rows.register_forward_hook(make_leaf(i)) for i, b in enumerate(model.blocks) if b.engram]
    try:
        with torch.enable_grad():
            logits = model(w.ids, rows=w.rows)
            lp = F.log_softmax(logits[0, -1].float(), -1)[w.target]
            layers = sorted(leaves)
            grads = torch.autograd.grad(lp, [leaves[L] for L in layers])
    finally:
        for h in handles:
            h.remove()
    T = w.ids.shape[1]
    H = model.cfg.memory.heads_per_layer
    runs = _substitutes(ck, w, how)
    reads, out = [], []
    for L, g in zip(layers, grads, strict=True):
        e = leaves[L][0].detach()
        d = torch.stack([(g[0] * ((0.0 if sub is None else sub[L][0]) - e)).sum(-1) for sub in runs]).mean(0)  # (T, H)
        reads += [(L, h, q + w.start) for h in range(H) for q in range(T - 1, -1, -1)]
        out.append(d.T.flip(1).reshape(-1))
    return reads, torch.cat(out).numpy()


def attribute(
    ck: Checkpoint,
    text: str,
    position: int,
    method: str = "exact",
    ablation: str = "zero",
    samples: int = 1,
    seed: int = 0,
) -> list[dict]:
    """Memory reads behind the prediction at `position` (of token position+1), strongest first.

    Records {layer, order, head, position_read, row, ngram, delta_logprob}; `delta_logprob`
    is log p(actual next token) with the read removed minus with it (negative: the read helped).
    `ablation` says what replaces a removed read, as a knock-out's mode does (zero, mean, resample
    with `samples` runs from `seed`).
    """
    how = KnockOut(mode=ablation, samples=samples, seed=seed)
    if method not in METHODS:
        raise ValueError(f"unknown attribution method {method!r}: choose exact or approx")
    if not isinstance(position, int | np.integer) or isinstance(position, bool):
        raise ValueError(f"position must be an integer token index, got {position!r}")
    ids, _ = encode(ck.tokenizer, text)
    position = int(position)
    _check(ck, ids, position)
    reads, deltas = (exact_deltas if method == "exact" else approx_deltas)(ck, ids, position, how)
    mem = ck.model.cfg.memory
    used = sorted({q for _, _, q in reads})
    rows = ck.model.hash_rows(torch.tensor([ids[: max(used) + 1]]))
    tokens = _decode_each(ck.tokenizer, np.asarray(ids[: max(used) + 1]))
    texts = _ngram_texts(ck.tokenizer, ids[: max(used) + 1], tokens, mem.hash_spec.orders)
    out = []
    for (L, h, q), d in zip(reads, deltas, strict=True):
        order, head = mem.hash_spec.head_address(h)
        out.append(
            {
                "layer": L,
                "order": order,
                "head": head,
                "position_read": q,
                "row": int(rows[L][0, q, h]),
                "ngram": texts[order - 2][q],
                "delta_logprob": float(d),
            }
        )
    out.sort(key=lambda r: (-abs(r["delta_logprob"]), r["layer"], r["order"], r["head"], -r["position_read"]))
    return out
