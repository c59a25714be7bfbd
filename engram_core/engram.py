"""The Engram memory module: multi-head lookup, context-aware gate, short conv (§2.2-§2.4).

The lookup (hashing, table read, knock-out masks) stays eager because sparse
embeddings cannot be compiled; `EngramReadout` (W_K, W_V, gate, conv) is the
dense part that training may compile.

B batch, T time, M branches, H hash heads of this layer, Dh row width, D model width.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .ablation import RowSource, resampled_rows
from .config import MemoryConfig
from .hashing import HashSpec
from .knockout import KnockOut
from .layers import HookPoint, rms_norm


class BranchReads(NamedTuple):
    """Reads of a layer whose knocked-out branches take substitutes (modes mean, resample)."""

    kept: torch.Tensor  # (B, T, H*Dh) what the other branches read
    replaced: torch.Tensor  # (B, T, H*Dh) what the knocked-out branches read instead


Reads = torch.Tensor | BranchReads | None  # what `Engram.lookup` hands to `Engram.read`


def causal_dilated_conv(x: torch.Tensor, weight: torch.Tensor, dilation: int) -> torch.Tensor:
    """Depthwise causal conv over time: y_t = sum_j w[:, j] * x_{t - j*dilation}.

    x: (B, T, C), weight: (C, K). Tap 0 multiplies the current step, tap j the step
    j*dilation back: the reverse of nn.Conv1d's kernel order (see
    `conv_weight_from_conv1d`). Written as K shifted multiply-adds: on CPU this
    matches Conv1d to ~1e-6 and its backward is far cheaper (CALIBRATION.md).
    """
    T = x.shape[1]
    y = x * weight[:, 0].to(x.dtype)
    for j in range(1, weight.shape[1]):
        s = j * dilation
        if s >= T:
            break
        y = y + F.pad(x[:, : T - s], (0, 0, s, 0)) * weight[:, j].to(x.dtype)
    return y


def conv_weight_from_conv1d(w: torch.Tensor) -> torch.Tensor:
    """A depthwise nn.Conv1d weight (C, 1, K), applied with (K-1)*dilation zeros of left
    padding, as this module's (C, K) taps. Conv1d's last kernel element meets the
    current step, our tap 0 does: the kernel axis is reversed."""
    if w.dim() != 3 or w.shape[1] != 1:
        raise ValueError(f"expected a depthwise Conv1d weight of shape (C, 1, K), got {tuple(w.shape)}")
    return w[:, 0].flip(-1)


def conv_weight_to_conv1d(w: torch.Tensor) -> torch.Tensor:
    """The inverse of `conv_weight_from_conv1d`: (C, K) taps to a (C, 1, K) Conv1d weight."""
    if w.dim() != 2:
        raise ValueError(f"expected taps of shape (C, K), got {tuple(w.shape)}")
    return w.flip(-1).unsqueeze(1)


class EngramReadout(nn.Module):
    """From looked-up rows e_t and branch states h_t to the module output Y (eq. 3-5)."""

    def __init__(self, cfg: MemoryConfig, d: int, n_branches: int) -> None:
        super().__init__()
        e_dim = cfg.heads_per_layer * cfg.d_head
        M = n_branches
        self.signed_sqrt, self.dilation = cfg.signed_sqrt, cfg.max_ngram
        self.w_v = nn.Linear(e_dim, d, bias=False)  # shared by all branches (§2.4)
        self.w_k = nn.Linear(e_dim, M * d, bias=False)  # one W_K per branch, stacked
        self.norm_h = nn.Parameter(torch.ones(M, d))
        self.norm_k = nn.Parameter(torch.ones(M, d))
        self.norm_conv = nn.Parameter(torch.ones(M, d))
        # (M*D, K) taps, tap j on x_{t - j*dilation}: nn.Conv1d's kernel order reversed
        # (convert reference weights with conv_weight_from_conv1d); zero-init: Y = V~ at start
        self.conv = nn.Parameter(torch.zeros(M * d, cfg.conv_kernel))
        self.hook_gate_score = HookPoint()
        self.hook_gate = HookPoint()
        self.hook_value = HookPoint()
        self.hook_out = HookPoint()

    def forward(self, H: torch.Tensor, e: torch.Tensor, branch_keep: torch.Tensor | None) -> torch.Tensor:
        D = H.shape[-1]
        k = self.w_k(e).unflatten(-1, (H.shape[2], D))  # (B, T, M, D) eq. 3
        v = self.hook_value(self.w_v(e))  # (B, T, D) eq. 3
        # subtle: the gate is a dot product of two unit-RMS vectors of width D; in bf16
        # its rounding moves alpha by ~1e-3, so the query and key are normalised in fp32
        wide = torch.promote_types(H.dtype, torch.float32)  # fp32, or fp64 when the model runs in fp64
        q_n = rms_norm(H.to(wide), None) * self.norm_h.to(wide)
        k_n = rms_norm(k.to(wide), None) * self.norm_k.to(wide)
        s = (q_n * k_n).sum(-1) / math.sqrt(D)  # (B, T, M) eq. 4
        if self.signed_sqrt:
            s = s.sign() * s.abs().clamp_min(1e-6).sqrt()  # reference demo, not in eq. 4
        s = self.hook_gate_score(s)
        alpha = torch.sigmoid(s)
        if branch_keep is not None:
            alpha = alpha * branch_keep  # knock-out of whole branches
        alpha = self.hook_gate(alpha)
        v_gated = alpha.unsqueeze(-1).to(v.dtype) * v.unsqueeze(2)  # (B, T, M, D)
        B, T, M, _ = v_gated.shape
        normed = rms_norm(v_gated, None) * self.norm_conv.to(v_gated.dtype)
        conv = causal_dilated_conv(normed.reshape(B, T, M * D), self.conv, self.dilation)  # (B, T, M*D)
        return self.hook_out(F.silu(conv).view(B, T, M, D) + v_gated)  # eq. 5


class Engram(nn.Module):
    """One layer's memory: tables of every (order, head) in one matrix, plus the read-out."""

    def __init__(self, cfg: MemoryConfig, spec: HashSpec, layer: int, d: int, n_branches: int) -> None:
        super().__init__()
        self.layer, self.cfg, self.spec, self.n_branches = layer, cfg, spec, n_branches
        primes = torch.tensor(spec.primes[layer], dtype=torch.int64)
        offsets = torch.cumsum(primes, 0) - primes
        self.register_buffer("primes", primes, persistent=False)
        self.register_buffer("offsets", offsets, persistent=False)  # first row of each head
        self.table = nn.Embedding(int(primes.sum()), cfg.d_head, sparse=True)
        nn.init.normal_(self.table.weight, std=0.02)
        self.readout = EngramReadout(cfg, d, n_branches)
        self.hook_hash_ids = HookPoint()
        self.hook_rows = HookPoint()
        self.row_source: RowSource | None = None  # replacements for knock-out modes mean and resample

    def row_keep(self, hash_ids: torch.Tensor, ko: KnockOut) -> torch.Tensor:
        """(B, T, H) 1.0 where the looked-up row is kept, 0.0 where knocked out.

        `ko` must be valid for this model (`KnockOut.validate`): an unchecked head
        past the end of its order would land on the next order's head.
        """
        keep = torch.ones(hash_ids.shape, dtype=torch.float32, device=hash_ids.device)
        spec = self.spec
        for order in ko.orders:
            first = spec.head_index(order, 0)
            keep[..., first : first + spec.heads_per_ngram] = 0.0
        for layer, order, head in ko.heads:
            if layer == self.layer:
                keep[..., spec.head_index(order, head)] = 0.0
        for layer, order, head, row in ko.rows:
            if layer == self.layer:
                h = spec.head_index(order, head)
                keep[..., h] = torch.where(hash_ids[..., h] == row, 0.0, keep[..., h])
        return keep

    def install_row_source(self, source: RowSource | None) -> None:
        """Give this layer the replacement rows of knock-out modes mean and resample (None removes them)."""
        if source is not None and tuple(source.mean_rows.shape) != (self.cfg.heads_per_layer, self.cfg.d_head):
            raise ValueError(
                f"layer {self.layer}: mean rows of shape {tuple(source.mean_rows.shape)}, "
                f"the model has {self.cfg.heads_per_layer} heads of {self.cfg.d_head}"
            )
        self.row_source = source

    def substitutes(self, hash_ids: torch.Tensor, ko: KnockOut) -> torch.Tensor:
        """(B, T, H, Dh) what replaces a removed read under the knock-out's mode (see ablation.py)."""
        src = self.row_source
        if src is None:
            raise ValueError(
                f"knock-out mode={ko.mode} needs this checkpoint's corpus row statistics: "
                "install them with engram_inspect.memory.ablation.install(checkpoint)"
            )
        if ko.mode == "mean":
            return src.mean_rows.to(self.table.weight).expand(*hash_ids.shape, -1)
        rows = resampled_rows(hash_ids, src.pool, self.cfg.heads_per_ngram, ko.seed, self.layer)
        return self.table(rows + self.offsets)

    def lookup(self, hash_ids: torch.Tensor, ko: KnockOut) -> Reads:
        """The rows read at every position, (B, T, H*Dh); None when this layer is knocked out to zero.

        The sparse part of the module: it stays eager while `read` may be compiled. Under
        modes mean and resample a knocked-out branch needs the substitutes too: then the
        result is a `BranchReads` pair.
        """
        hash_ids = self.hook_hash_ids(hash_ids.to(self.offsets.device))  # (B, T, H) head-local rows
        off = ko.layer_off(self.layer)
        if off and not ko.replaces:
            return None
        e = self.table(hash_ids + self.offsets)  # (B, T, H, Dh) eq. 2
        sub = self.substitutes(hash_ids, ko) if ko.replaces and (ko.branches or off) else None
        if off:
            e = sub  # every read of the layer replaced
        elif ko.touches_rows(self.layer):
            keep = self.row_keep(hash_ids, ko).unsqueeze(-1)
            if ko.replaces:
                sub = self.substitutes(hash_ids, ko) if sub is None else sub
                e = torch.where(keep > 0, e, sub)
            else:
                e = e * keep
        e = self.hook_rows(e).flatten(-2)  # (B, T, H*Dh), order-major then head-minor (§4)
        if ko.branches and ko.replaces and not off:
            return BranchReads(e, sub.flatten(-2))
        return e

    def read(self, H: torch.Tensor, e: Reads, ko: KnockOut) -> torch.Tensor:
        """The module output Y (B, T, M, D) from looked-up rows; zeros for a layer knocked out to zero."""
        if e is None:
            # a knocked-out module adds nothing, so nothing after the hash needs computing
            return H.new_zeros(H.shape)
        if isinstance(e, BranchReads):
            # a replaced branch reads every head's substitute; the others keep their reads
            out, replaced = self.readout(H, e.kept, None), self.readout(H, e.replaced, None)
            m = torch.zeros(self.n_branches, dtype=torch.bool, device=H.device)
            m[sorted(ko.branches)] = True
            return torch.where(m[:, None], replaced, out)  # (B, T, M, D)
        branch_keep = None
        if ko.branches:
            branch_keep = torch.ones(self.n_branches, device=H.device)
            branch_keep[sorted(ko.branches)] = 0.0
        return self.readout(H, e, branch_keep)

    def forward(self, H: torch.Tensor, hash_ids: torch.Tensor, ko: KnockOut) -> torch.Tensor:
        return self.read(H, self.lookup(hash_ids, ko), ko)
