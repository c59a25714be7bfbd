"""One way to read a model's activations: named hooks over token ids, and the logit lens.

`capture` (one text), `health` (gates and rows over corpus windows) and the studies
(held-out windows) all read activations through `activations` and compare layers
through `lens_kl`. Hook names come from the core (`engram_core.hooks`), which spells
them in one place.

B batch, T time, M branches, D width, Y blocks, V vocabulary.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F

from engram_core import KnockOut
from engram_core.hooks import block_hook, engram_hook, engram_hook_layer
from engram_core.knockout import NO_KNOCKOUT

# short names of the Engram hooks (engram_core.hooks.ENGRAM_HOOKS) that analyses read
HASH_IDS, GATE_SCORE, GATE, OUT = "hash_ids", "gate_score", "gate", "out"


def memory_names(layers: Iterable[int], parts: Iterable[str] = (HASH_IDS, GATE)) -> list[str]:
    """Hook names of the given parts (HASH_IDS, GATE, ...) in every listed Engram layer, layer-major."""
    parts = list(parts)
    return [engram_hook(L, p) for L in layers for p in parts]


def resid_names(model) -> list[str]:
    """The residual stream after every block, first to last."""
    return [block_hook(i, "resid_post") for i in range(model.cfg.backbone.n_layer)]


class _Stop(Exception):
    """Raised to end a forward pass once every wanted hook has fired."""


def _memory_only_stop(model, names: list[str]):
    """The module whose start ends the pass when only Engram hooks are wanted, else None.

    Later blocks cannot change an Engram layer's hashes or gates, and a block runs its
    memory before its attention (§2.3), so the last wanted layer's attention is the end.
    """
    layers = [engram_hook_layer(n) for n in names]
    if not layers or None in layers:
        return None
    return model.blocks[max(layers)].attn


@torch.no_grad()
def _hooks_only(
    model, ids: torch.Tensor, names: list[str], knockout: KnockOut, stop_at, rows=None
) -> dict[str, torch.Tensor]:
    cache: dict[str, torch.Tensor] = {}
    handles = [
        model.get_submodule(n).register_forward_hook(lambda _m, _i, out, n=n: cache.__setitem__(n, out.detach()))
        for n in names
    ]

    def stop(*_args: object) -> None:
        raise _Stop

    handles.append(stop_at.register_forward_pre_hook(stop))
    try:
        model(ids, knockout=knockout, rows=rows)
    except _Stop:
        pass
    finally:
        for h in handles:
            h.remove()
    return cache


@torch.no_grad()
def activations(
    model,
    ids: torch.Tensor,
    names: Iterable[str],
    knockout: KnockOut = NO_KNOCKOUT,
    logits: bool = True,
    batch: int | None = None,
    rows: dict[int, torch.Tensor] | None = None,
) -> tuple[torch.Tensor | None, dict[str, torch.Tensor]]:
    """(logits or None, {hook name: activation}) for token ids (B, T), detached.

    Sequences longer than the context run by sliding windows (`run_with_cache_long`).
    `logits=False` may end the pass early when only Engram hooks are wanted (about half
    of the default model's work). `batch` splits B into chunks of that many rows.
    `rows` may carry hashes computed ahead (per Engram layer, (B, T, H)), e.g. from a
    longer stream, so N-grams that straddle a window's start read their true rows.
    """
    names = list(names)
    if rows is not None and (batch is not None or ids.shape[1] > model.cfg.backbone.block_size):
        raise ValueError("precomputed rows need one batch of at most a context of tokens")
    if batch is not None and len(ids) > batch:
        parts = [activations(model, ids[i : i + batch], names, knockout, logits) for i in range(0, len(ids), batch)]
        out = torch.cat([p[0] for p in parts]) if logits else None
        return out, {k: torch.cat([p[1][k] for p in parts]) for k in parts[0][1]}
    model.eval()
    stop_at = None if logits else _memory_only_stop(model, names)
    if stop_at is not None and ids.shape[1] <= model.cfg.backbone.block_size:
        return None, _hooks_only(model, model.check_ids(ids), names, knockout, stop_at, rows)
    if rows is not None:
        out, cache = model.run_with_cache(ids, knockout, names=names, rows=rows)
    else:
        out, cache = model.run_with_cache_long(ids, knockout, names=names)
    return (out if logits else None), cache


def lens_kl(model, cache: dict[str, torch.Tensor], final_logp: torch.Tensor) -> torch.Tensor:
    """Logit lens (§6.1): per block, KL(the block's own prediction || the final one), (Y, B, T).

    A block's prediction is the tied head on the normed mean of its residual branches,
    as the final prediction is made; the last block's prediction is the final one, so
    its row is exactly zero. `cache` needs `resid_names(model)`; `final_logp` is (B, T, V).
    """
    names = resid_names(model)
    device = model.wte.weight.device  # the cache may have been moved to the CPU (`on_cpu`)
    final_logp = final_logp.to(device)
    kls = torch.zeros(len(names), *final_logp.shape[:-1])  # on the CPU, whatever the model's device
    for b, name in enumerate(names[:-1]):
        resid = cache[name].to(device)  # (B, T, M, D)
        logp = F.log_softmax(F.linear(model.norm(resid.mean(2)), model.wte.weight).float(), -1)  # (B, T, V)
        kls[b] = (logp.exp() * (logp - final_logp)).sum(-1).cpu()
    return kls


def on_cpu(logits: torch.Tensor | None, cache: dict[str, torch.Tensor]):
    """`activations`' result with every tensor on the CPU, where NumPy can read it (the model may be on CUDA)."""
    return (None if logits is None else logits.cpu()), {k: v.cpu() for k, v in cache.items()}
