"""The Engram language model, in data-flow order: compression -> hashing -> blocks -> logits.

A block with an Engram module adds the memory's output to every residual branch
before attention and the MLP (§2.3). Every activation worth seeing passes a named
`HookPoint`; `run_with_cache` returns them keyed by name.

B batch, T time, M branches, L Engram layers, H hash heads, D width, V vocabulary.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .ablation import RowSource, sample_seeds
from .config import ModelConfig
from .engram import Engram
from .hashing import hash_all
from .hooks import COMPRESSED_IDS
from .knockout import NO_KNOCKOUT, KnockOut
from .layers import MLP, Attention, HookPoint, HyperResidual, RMSNorm, sinkhorn_error


def sliding_windows(T: int, C: int) -> list[tuple[int, int]]:
    """(start, first owned position) of each window of C tokens over T, half a context apart."""
    out, start, done = [], 0, 0
    while done < T:
        start = max(0, min(start, T - C))
        out.append((start, done))
        done, start = start + C, start + C // 2
    return out


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int) -> None:
        super().__init__()
        b = cfg.backbone
        self.engram = None
        if cfg.memory is not None and layer in cfg.memory.layer_ids:
            self.engram = Engram(cfg.memory, cfg.memory.hash_spec, layer, b.d_model, b.n_branches)
        attn = Attention(b.d_model, b.n_head, b.block_size, b.rope_base)
        mhc = (b.d_model, b.n_branches, b.sinkhorn_iters, b.sinkhorn_tol, b.sinkhorn_max_iters)
        self.attn = HyperResidual(attn, *mhc)
        self.mlp = HyperResidual(MLP(b.d_model, b.mlp_ratio), *mhc)
        self.hook_resid_pre = HookPoint()
        self.hook_resid_post = HookPoint()

    def forward(self, H: torch.Tensor, e: torch.Tensor | None, ko: KnockOut) -> torch.Tensor:
        """H (B, T, M, D); e the rows this block's memory looked up (`Engram.lookup`)."""
        H = self.hook_resid_pre(H)  # (B, T, M, D)
        if self.engram is not None:
            H = H + self.engram.read(H, e, ko)  # §2.3: memory before attention and MLP
        return self.hook_resid_post(self.mlp(self.attn(H)))


class EngramLM(nn.Module):
    def __init__(self, cfg: ModelConfig, compression: np.ndarray | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        b = cfg.backbone
        table = np.arange(b.vocab_size) if compression is None else np.asarray(compression)
        if table.shape != (b.vocab_size,):
            raise ValueError(f"compression table has shape {table.shape}, expected ({b.vocab_size},)")
        if cfg.memory is not None and (table.max() >= cfg.memory.vocab_size or table.min() < 0):
            raise ValueError("compression table maps outside the compressed vocabulary")
        self.register_buffer("compression", torch.as_tensor(table, dtype=torch.int64), persistent=False)
        self.wte = nn.Embedding(b.vocab_size, b.d_model)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(b.n_layer))
        self.norm = RMSNorm(b.d_model)
        self.hook_compressed_ids = HookPoint()
        self.hook_logits = HookPoint()
        self._valid_knockout: KnockOut = NO_KNOCKOUT  # the last knock-out that passed validate_knockout
        self._init_weights()

    def _init_weights(self) -> None:
        n = self.cfg.backbone.n_layer
        for name, p in self.named_parameters():
            if (
                name.endswith(("qkv.weight", "up.weight", "phi.weight", "w_v.weight", "w_k.weight"))
                or name == "wte.weight"
            ):
                nn.init.normal_(p, std=0.02)
            elif name.endswith(("proj.weight", "down.weight")):
                nn.init.normal_(p, std=0.02 / (2 * n) ** 0.5)

    @property
    def engram_layers(self) -> tuple[int, ...]:
        return () if self.cfg.memory is None else self.cfg.memory.layer_ids

    def check_ids(self, ids: torch.Tensor, long_ok: bool = False) -> torch.Tensor:
        """Clear errors for what torch would otherwise reject deep inside."""
        ids = torch.as_tensor(ids)
        if ids.dim() == 1:
            ids = ids.unsqueeze(0)
        if ids.dim() != 2 or ids.dtype.is_floating_point or ids.dtype == torch.bool:
            raise ValueError(f"token ids must be a (batch, time) integer tensor, got {ids.dtype} {tuple(ids.shape)}")
        b = self.cfg.backbone
        if ids.shape[1] > b.block_size and not long_ok:
            raise ValueError(
                f"{ids.shape[1]} tokens exceed the context of {b.block_size}; "
                "use EngramLM.forward_long for sliding windows"
            )
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= b.vocab_size):
            raise ValueError(f"token ids must lie in 0..{b.vocab_size - 1}, got {int(ids.min())}..{int(ids.max())}")
        return ids.long().to(self.wte.weight.device)  # ids from anywhere, the model's device from here on

    def validate_knockout(self, knockout: KnockOut) -> None:
        """`knockout.validate(self.cfg)`, skipped for the object that passed last time.

        subtle: a mask of thousands of rows takes ~50 ms to check, and sliding
        windows and generation run forward many times with the same object; the
        config is frozen, so one pass per object is enough.
        """
        if knockout is not self._valid_knockout:
            knockout.validate(self.cfg)
            self._valid_knockout = knockout

    def hash_rows(self, ids: torch.Tensor) -> dict[int, torch.Tensor]:
        """Compress raw ids and hash them: per Engram layer, (B, T, H) head-local rows."""
        cids = self.hook_compressed_ids(self.compression[ids])  # §1
        spec = self.cfg.memory.hash_spec if self.cfg.memory is not None else None
        return hash_all(cids, spec) if spec is not None else {}  # §3, eq. 1

    def forward(
        self, ids: torch.Tensor, knockout: KnockOut = NO_KNOCKOUT, rows: dict[int, torch.Tensor] | None = None
    ) -> torch.Tensor:
        """Logits (B, T, V) of raw token ids (B, T); `rows` may carry precomputed hashes."""
        ids = self.check_ids(ids)
        self.validate_knockout(knockout)
        if rows is None:
            rows = self.hash_rows(ids)
        if knockout.mode == "resample" and knockout.samples > 1:
            return self._average_samples(ids, knockout, rows)
        return self.dense(ids, self.lookups(rows, knockout), knockout)

    def lookups(self, rows: dict[int, torch.Tensor], knockout: KnockOut) -> dict[int, torch.Tensor | None]:
        """Per Engram layer, the looked-up rows (B, T, H*Dh): the sparse, eager part of a forward."""
        return {i: self.blocks[i].engram.lookup(r, knockout) for i, r in rows.items()}

    def dense(self, ids: torch.Tensor, e: dict[int, torch.Tensor | None], knockout: KnockOut) -> torch.Tensor:
        """Everything after the lookups, logits (B, T, V): the part training compiles."""
        return self.head(self.stream(ids, e, knockout))

    def stream(self, ids: torch.Tensor, e: dict[int, torch.Tensor | None], knockout: KnockOut) -> torch.Tensor:
        """The residual stream (B, T, M, D) after the last block."""
        M = self.cfg.backbone.n_branches
        H = self.wte(ids).unsqueeze(2).expand(-1, -1, M, -1)  # (B, T, M, D)
        for i, block in enumerate(self.blocks):
            H = block(H, e.get(i), knockout)
        return H

    def head(self, H: torch.Tensor) -> torch.Tensor:
        return self.hook_logits(F.linear(self.norm(H.mean(2)), self.wte.weight))  # tied head

    def head_loss(self, H: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self.head(H).flatten(0, 1).float(), targets.flatten())

    def dense_loss(
        self, ids: torch.Tensor, e: dict[int, torch.Tensor | None], targets: torch.Tensor, knockout: KnockOut
    ) -> torch.Tensor:
        return self.head_loss(self.stream(ids, e, knockout), targets)

    def _average_samples(self, ids: torch.Tensor, ko: KnockOut, rows: dict[int, torch.Tensor]) -> torch.Tensor:
        """Logits of the mean next-token distribution over k resampled runs (run i seeded seed + i).

        The mean of probabilities, not of logits, so that the loss under these logits is
        the loss of the averaged prediction. Hooks see every run; a cache keeps the last.
        """
        runs = [
            F.log_softmax(self(ids, replace(ko, samples=1, seed=s), rows).float(), -1)
            for s in sample_seeds(ko.seed, ko.samples)
        ]
        return torch.logsumexp(torch.stack(runs), 0) - math.log(len(runs))

    def install_row_source(self, sources: dict[int, RowSource] | None) -> None:
        """Replacement rows per Engram layer for knock-out modes mean and resample (None removes them)."""
        for layer in self.engram_layers:
            self.blocks[layer].engram.install_row_source(None if sources is None else sources[layer])

    def forward_long(self, ids: torch.Tensor, knockout: KnockOut = NO_KNOCKOUT) -> torch.Tensor:
        """Logits for sequences longer than the context, by sliding windows (see `run_with_cache_long`)."""
        return self.run_with_cache_long(ids, knockout, names=())[0]

    def loss(
        self,
        ids: torch.Tensor,
        targets: torch.Tensor,
        knockout: KnockOut = NO_KNOCKOUT,
        rows: dict[int, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Mean next-token cross-entropy; `rows` may carry hashes computed ahead (the data loader's)."""
        ids = self.check_ids(ids)
        self.validate_knockout(knockout)
        if rows is None:
            rows = self.hash_rows(ids)
        return self.dense_loss(
            ids, self.lookups(rows, knockout), torch.as_tensor(targets).long().to(ids.device), knockout
        )

    def hook_names(self) -> list[str]:
        return [n for n, m in self.named_modules() if isinstance(m, HookPoint)]

    @torch.no_grad()
    def run_with_cache(
        self,
        ids: torch.Tensor,
        knockout: KnockOut = NO_KNOCKOUT,
        names: Iterable[str] | None = None,
        rows: dict[int, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Logits plus every hooked activation (or those in `names`), detached, keyed by hook name."""
        wanted = set(self.hook_names() if names is None else names)
        unknown = wanted - set(self.hook_names())
        if unknown:
            raise KeyError(f"no such hooks: {sorted(unknown)}")
        cache: dict[str, torch.Tensor] = {}
        handles = []
        for name, mod in self.named_modules():
            if name in wanted:
                handles.append(
                    mod.register_forward_hook(lambda _m, _i, out, n=name: cache.__setitem__(n, out.detach()))
                )
        try:
            logits = self(ids, knockout=knockout, rows=rows)
        finally:
            for h in handles:
                h.remove()
        return logits, cache

    @torch.no_grad()
    def run_with_cache_long(
        self, ids: torch.Tensor, knockout: KnockOut = NO_KNOCKOUT, names: Iterable[str] | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """`run_with_cache` for any length, by sliding windows.

        Windows of block_size tokens advance by half a context; each position takes
        its logits and activations from the window where it has the most history
        (at least half a context once past the start). Hash rows come from the whole
        sequence, so N-grams that straddle a window's start still read their true rows.
        Every hooked activation has time on dim 1, so windows stitch along it.
        """
        ids = self.check_ids(ids, long_ok=True)
        self.validate_knockout(knockout)  # before hashing the whole text, not inside the first window
        T, C = ids.shape[1], self.cfg.backbone.block_size
        if T <= C:
            return self.run_with_cache(ids, knockout, names)
        rows = self.hash_rows(ids)
        parts: dict[str, list[torch.Tensor]] = {}
        logits_parts = []
        for start, own in sliding_windows(T, C):
            window = ids[:, start : start + C]
            logits, cache = self.run_with_cache(
                window, knockout, names, {k: v[:, start : start + C] for k, v in rows.items()}
            )
            logits_parts.append(logits[:, own - start :])
            for k, v in cache.items():
                parts.setdefault(k, []).append(v[:, own - start :])
        out = {k: torch.cat(v, 1) for k, v in parts.items()}
        if names is None or COMPRESSED_IDS in names:
            out[COMPRESSED_IDS] = self.compression[ids]  # hashed once above, outside the windows
        return torch.cat(logits_parts, 1), out

    @torch.no_grad()
    def generate(self, ids: torch.Tensor | list[int], n_tokens: int, knockout: KnockOut = NO_KNOCKOUT) -> torch.Tensor:
        """Greedy continuation: the (B, n_tokens) ids that follow `ids` ((T,) or (B, T), T >= 1).

        Each step reads at most the last block_size tokens, so a prompt of any length works.
        """
        if not isinstance(ids, torch.Tensor):
            ids = torch.as_tensor(ids, dtype=torch.long)  # subtle: [] would become a float tensor
        ids = self.check_ids(ids, long_ok=True)
        if ids.shape[1] == 0 or n_tokens < 0:
            raise ValueError(f"greedy generation needs at least one prompt token and n_tokens >= 0, got {n_tokens}")
        self.validate_knockout(knockout)
        C = self.cfg.backbone.block_size
        x = ids[:, -C:]
        out = ids.new_empty((ids.shape[0], 0))
        for _ in range(n_tokens):
            nxt = self(x, knockout=knockout)[:, -1].argmax(-1, keepdim=True)  # (B, 1)
            out = torch.cat([out, nxt], 1)
            x = torch.cat([x, nxt], 1)[:, -C:]
        return out

    @torch.no_grad()
    def sinkhorn_error(self, ids: torch.Tensor) -> float:
        """Largest |row or column sum - 1| of H_res over every mHC map of one forward (0.0 with M = 1).

        Health and the model card report it: H_res should be doubly stochastic (§2.4).
        """
        worst = [0.0]

        def check(mod: HyperResidual, args: tuple) -> None:
            if mod.M > 1:
                worst[0] = max(worst[0], float(sinkhorn_error(mod.maps(args[0])[2])))

        handles = [m.register_forward_pre_hook(check) for m in self.modules() if isinstance(m, HyperResidual)]
        try:
            self(ids)
        finally:
            for h in handles:
                h.remove()
        return worst[0]

    def param_counts(self) -> dict[str, int]:
        tables = sum(p.numel() for n, p in self.named_parameters() if n.endswith("table.weight"))
        total = sum(p.numel() for p in self.parameters())
        engram = sum(p.numel() for n, p in self.named_parameters() if ".engram." in n)
        return {"total": total, "tables": tables, "engram_dense": engram - tables, "backbone": total - engram}
