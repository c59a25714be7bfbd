"""A capture: everything the memory does for one text, as one `Trace`.

One call runs the model with memory on and under a knock-out mask (all memory off
by default) and keeps, per position: the tokens, their compressed ids, the suffix
N-grams and the row every (layer, order, head) reads, the gate before and after
the sigmoid per branch, the norm of the memory's output, the log-probability of
the actual next token and the top-k with memory on and under the mask, KL(on ||
masked), and the logit lens (KL of every layer's prediction to the final one)
with memory on and off. Same text and checkpoint give the same trace, bit for bit.

T tokens, L Engram layers, O orders, H heads per layer, M branches, K top-k, Y blocks.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from engram_core import Checkpoint, KnockOut
from engram_core.hashing import head_index, suffix_ngrams
from engram_core.hooks import COMPRESSED_IDS, engram_hook
from engram_core.tokenizer import encode

from ..base.activations import GATE, GATE_SCORE, HASH_IDS, OUT, activations, lens_kl, memory_names, on_cpu, resid_names
from ..base.cache import checkpoint_key
from ..memory.ablation import install

SCHEMA = "engram-trace/1"
MAX_TOKENS = 4096  # longest text a capture takes, in tokens (sliding windows past the context)
PAD_TEXT = "\u2400"  # shown for positions before the start of the text (the pad id)


@dataclass(frozen=True, eq=False)
class Trace:
    text: str
    checkpoint: str  # checkpoint_key of the model that produced it
    tokens: list[str]  # decoded text of each token
    token_ids: np.ndarray  # (T,) raw ids
    offsets: np.ndarray  # (T, 2) character offsets in `text`
    compressed_ids: np.ndarray  # (T,)
    layers: tuple[int, ...]  # Engram layer ids
    orders: tuple[int, ...]  # N-gram orders 2..N
    heads_per_ngram: int
    ngram_ids: np.ndarray  # (O, T, N) compressed suffix N-grams, oldest first, -1 past the order
    ngram_text: list[list[str]]  # (O, T) text of each suffix N-gram
    hash_rows: np.ndarray  # (L, T, H) head-local row read, heads order-major
    gate_score: np.ndarray  # (L, T, M) gate before the sigmoid
    gate: np.ndarray  # (L, T, M) alpha
    out_norm: np.ndarray  # (L, T) L2 norm of the Engram output over branches and width
    mask: KnockOut  # what the masked run switched off (exporters write it as a dict)
    logprob_next: np.ndarray  # (T,) log p(actual next token), memory on; NaN at the last position
    topk_ids: np.ndarray  # (T, K) memory on
    topk_logprob: np.ndarray  # (T, K)
    masked_logprob_next: np.ndarray  # (T,) under the mask
    masked_topk_ids: np.ndarray  # (T, K)
    masked_topk_logprob: np.ndarray  # (T, K)
    kl: np.ndarray  # (T,) KL(on || masked) of the next-token distributions
    lens_kl_on: np.ndarray  # (Y, T) KL(layer || final), memory on
    lens_kl_off: np.ndarray  # (Y, T) the same with all memory off
    topk_text: list[list[str]] = field(default_factory=list)  # (T, K) decoded, memory on
    masked_topk_text: list[list[str]] = field(default_factory=list)  # (T, K) under the mask
    schema: str = SCHEMA

    @property
    def n_tokens(self) -> int:
        return len(self.tokens)

    def head_index(self, order: int, head: int) -> int:
        """Position of (order, head) on the head axis of `hash_rows` (the core's order-major layout)."""
        return head_index(order, head, self.heads_per_ngram)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Trace):
            return NotImplemented
        for f in dataclasses.fields(self):
            a, b = getattr(self, f.name), getattr(other, f.name)
            if isinstance(a, np.ndarray):
                if a.dtype != b.dtype or not np.array_equal(a, b, equal_nan=a.dtype.kind == "f"):
                    return False
            elif a != b:
                return False
        return True


def _ngram_texts(tok, token_ids: list[int], tokens: list[str], orders: tuple[int, ...]) -> list[list[str]]:
    out = []
    for n in orders:
        row = []
        for t in range(len(token_ids)):
            lo = max(t - n + 1, 0)
            pads = PAD_TEXT * max(0, n - 1 - t)
            parts = tokens[lo : t + 1]
            # tokens that are whole characters concatenate; a split UTF-8 sequence must decode jointly
            joined = "".join(parts) if not any("\ufffd" in p for p in parts) else tok.decode(token_ids[lo : t + 1])
            row.append(pads + joined)
        out.append(row)
    return out


def _next_token_stats(logits: torch.Tensor, ids: torch.Tensor, k: int) -> tuple[torch.Tensor, ...]:
    """log p of the actual next token (NaN at the end), top-k ids and log-probs, log-softmax."""
    logp = F.log_softmax(logits.float(), -1)  # (T, V)
    nxt = torch.full((logp.shape[0],), float("nan"))
    if logp.shape[0] > 1:
        nxt[:-1] = logp[:-1].gather(1, ids[1:, None]).squeeze(1)
    top = logp.topk(min(k, logp.shape[-1]), dim=-1)
    return nxt, top.indices, top.values, logp


def _decode_each(tok, ids: np.ndarray) -> list:
    """Decoded text of every id in an integer array, decoding each distinct id once."""
    uniq, inv = np.unique(ids, return_inverse=True)
    texts = np.array([tok.decode([int(i)]) for i in uniq], dtype=object)
    return texts[inv.reshape(ids.shape)].tolist()


@torch.no_grad()
def capture(ck: Checkpoint, text: str, mask: KnockOut | None = None, top_k: int = 5) -> Trace:
    """Trace one text. `mask` defaults to all memory off; raises ValueError on unusable text."""
    model, tok = ck.model, ck.tokenizer
    if model.cfg.memory is None:
        raise ValueError("this checkpoint has no Engram memory to capture")
    mask = KnockOut(all=True) if mask is None else mask
    if mask.replaces:
        install(ck)  # modes mean and resample need the checkpoint's corpus row statistics
    ids_list, offsets = encode(tok, text)
    if not ids_list:
        raise ValueError("the text is empty: nothing to capture")
    if len(ids_list) > MAX_TOKENS:
        raise ValueError(f"the text is {len(ids_list)} tokens; a capture takes at most {MAX_TOKENS}")
    ids = torch.tensor([ids_list])
    mem = model.cfg.memory
    layers = mem.layer_ids
    lens_names = resid_names(model)
    names = [*lens_names, COMPRESSED_IDS, *memory_names(layers, (HASH_IDS, GATE_SCORE, GATE, OUT))]
    logits, cache = on_cpu(*activations(model, ids, names))
    off = KnockOut(all=True)
    m_logits, m_cache = on_cpu(*activations(model, ids, lens_names, mask))
    on_next, on_top, on_topv, on_logp = _next_token_stats(logits[0], ids[0], top_k)
    m_next, m_top, m_topv, m_logp = _next_token_stats(m_logits[0], ids[0], top_k)
    off_cache, off_final = m_cache, m_logp
    if mask != off:  # the logit lens with memory off needs its own pass
        off_logits, off_cache = on_cpu(*activations(model, ids, lens_names, off))
        off_final = F.log_softmax(off_logits[0].float(), -1)
    cids = cache[COMPRESSED_IDS]
    spec = mem.hash_spec
    ngram = np.full((len(spec.orders), len(ids_list), mem.max_ngram), -1, dtype=np.int64)
    for o, n in enumerate(spec.orders):
        ngram[o, :, :n] = suffix_ngrams(cids, spec, n)[0].cpu().numpy()
    tokens = _decode_each(tok, np.asarray(ids_list))
    stack = lambda part: torch.stack([cache[engram_hook(L, part)][0] for L in layers])  # noqa: E731
    return Trace(
        text=text,
        checkpoint=checkpoint_key(ck),
        tokens=tokens,
        token_ids=np.asarray(ids_list, dtype=np.int64),
        offsets=np.asarray(offsets, dtype=np.int64).reshape(-1, 2),
        compressed_ids=cids[0].numpy().astype(np.int64),
        layers=tuple(layers),
        orders=tuple(spec.orders),
        heads_per_ngram=mem.heads_per_ngram,
        ngram_ids=ngram,
        ngram_text=_ngram_texts(tok, ids_list, tokens, spec.orders),
        hash_rows=stack(HASH_IDS).numpy().astype(np.int64),
        gate_score=stack(GATE_SCORE).float().numpy(),
        gate=stack(GATE).float().numpy(),
        out_norm=stack(OUT).flatten(2).norm(dim=-1).float().numpy(),
        mask=mask,
        logprob_next=on_next.numpy(),
        topk_ids=on_top.numpy().astype(np.int64),
        topk_logprob=on_topv.numpy(),
        masked_logprob_next=m_next.numpy(),
        masked_topk_ids=m_top.numpy().astype(np.int64),
        masked_topk_logprob=m_topv.numpy(),
        kl=(on_logp.exp() * (on_logp - m_logp)).sum(-1).numpy(),
        lens_kl_on=lens_kl(model, cache, on_logp[None])[:, 0].numpy(),
        lens_kl_off=lens_kl(model, off_cache, off_final[None])[:, 0].numpy(),
        topk_text=_decode_each(tok, on_top.numpy()),
        masked_topk_text=_decode_each(tok, m_top.numpy()),
    )
