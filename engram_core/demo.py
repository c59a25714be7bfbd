"""A terminal trace of one sentence: what each token looked up and how much the gate let in."""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F

from .checkpoint import load_checkpoint
from .hooks import COMPRESSED_IDS, engram_hook
from .knockout import KnockOut
from .tokenizer import encode


def demo_lines(checkpoint: str, text: str) -> Iterator[str]:
    ck = load_checkpoint(checkpoint)
    model, tok = ck.model, ck.tokenizer
    ids, _ = encode(tok, text)
    if not ids:
        yield "the text has no tokens: nothing to trace"
        return
    limit = model.cfg.backbone.block_size
    if len(ids) > limit:
        yield f"note: {len(ids)} tokens; tracing the first {limit} (the model's context)"
        ids = ids[:limit]
    x = torch.tensor([ids])
    logits, cache = model.run_with_cache(x)
    off = model(x, knockout=KnockOut(all=True)).detach()
    layers = model.engram_layers
    yield f"checkpoint {checkpoint}: Engram at layers {list(layers)}, {len(ids)} tokens"
    yield (
        f"{'token':>16} {'cid':>5} " + " ".join(f"{'a' + str(i):>6}" for i in layers) + "   rows (first layer, order 2)"
    )
    for t, i in enumerate(ids):
        gates = [float(cache[engram_hook(i_, "gate")][0, t].mean()) for i_ in layers]
        rows = []
        if layers:  # the order-2 heads of the first Engram layer
            spec = model.cfg.memory.hash_spec
            first = spec.head_index(2, 0)
            rows = cache[engram_hook(layers[0], "hash_ids")][0, t, first : first + spec.heads_per_ngram]
        yield (
            f"{tok.decode([i])!r:>16} {int(cache[COMPRESSED_IDS][0, t]):>5} "
            + " ".join(f"{g:6.3f}" for g in gates)
            + "   "
            + " ".join(str(int(r)) for r in rows)
        )
    if len(ids) > 1:
        y = x[0, 1:]
        on_loss = F.cross_entropy(logits[0, :-1], y).item()
        off_loss = F.cross_entropy(off[0, :-1], y).item()
        yield f"loss with memory {on_loss:.3f} nats/token, with all memory knocked out {off_loss:.3f}"
