"""Backbone pieces: hook points, RMSNorm, rotary attention, MLP, and the mHC residual.

B batch, T time, M residual branches, D width.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class HookPoint(nn.Module):
    """Identity whose output a capture can read by name (TransformerLens style)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def rms_norm(x: torch.Tensor, weight: torch.Tensor | None, eps: float = 1e-6) -> torch.Tensor:
    # subtle: cast the weight to the input dtype under autocast, else an unfused path runs
    return F.rms_norm(x, (x.shape[-1],), None if weight is None else weight.to(x.dtype), eps)


class RMSNorm(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight)


def rope_tables(block_size: int, head_dim: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    inv = 1.0 / base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    ang = torch.outer(torch.arange(block_size, dtype=torch.float32), inv)  # (T, hd/2)
    return ang.cos(), ang.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: (B, nh, T, hd), rotated pairwise (first half, second half)."""
    x1, x2 = x.chunk(2, dim=-1)
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


class Attention(nn.Module):
    """Pre-norm causal self-attention with rotary positions."""

    def __init__(self, d: int, n_head: int, block_size: int, rope_base: float) -> None:
        super().__init__()
        self.n_head = n_head
        self.norm = RMSNorm(d)
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.proj = nn.Linear(d, d, bias=False)
        cos, sin = rope_tables(block_size, d // n_head, rope_base)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)
        self.register_buffer("causal", torch.ones(block_size, block_size, dtype=torch.bool).tril(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, D = x.shape
        q, k, v = self.qkv(self.norm(x)).split(D, dim=-1)
        q, k, v = (t.view(B, T, self.n_head, D // self.n_head).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hd)
        q, k = apply_rope(q, self.cos[:T], self.sin[:T]), apply_rope(k, self.cos[:T], self.sin[:T])
        # subtle: explicit softmax attention; at T <= 256 it compiles to faster CPU code than SDPA
        att = (q @ k.transpose(-2, -1)) * (q.shape[-1] ** -0.5)  # (B, nh, T, T)
        att = att.masked_fill(~self.causal[:T, :T], float("-inf")).softmax(-1)
        y = att @ v
        return self.proj(y.transpose(1, 2).reshape(B, T, D))


class MLP(nn.Module):
    def __init__(self, d: int, ratio: int) -> None:
        super().__init__()
        self.norm = RMSNorm(d)
        self.up = nn.Linear(d, ratio * d, bias=False)
        self.down = nn.Linear(ratio * d, d, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.gelu(self.up(self.norm(x))))


def sinkhorn(logits: torch.Tensor, iters: int, tol: float = 0.0, max_iters: int = 500) -> torch.Tensor:
    """Project exp(logits) (..., M, M) onto doubly stochastic matrices (Sinkhorn-Knopp).

    tol = 0: exactly `iters` row-then-column steps (how checkpoints from before the
    tolerance were trained). tol > 0: steps until every row sum is within tol of 1
    (a step ends on the columns, which are then exact), at most `max_iters` steps.
    subtle: convergence is checked every `iters` steps, not every step: the check
    syncs and breaks a compiled graph, so it runs a few times, not two hundred.
    """
    p = torch.exp(logits.float() - logits.float().amax(dim=(-2, -1), keepdim=True))
    done = 0
    while True:
        for _ in range(min(iters, max_iters - done) if tol > 0 else iters):
            p = p / p.sum(dim=-1, keepdim=True)
            p = p / p.sum(dim=-2, keepdim=True)
        done += iters
        if tol <= 0 or done >= max_iters or float(sinkhorn_error(p.detach())) <= tol:
            return p


def sinkhorn_error(p: torch.Tensor) -> torch.Tensor:
    """Largest |row sum - 1| or |column sum - 1| of (..., M, M) matrices (0 when doubly stochastic)."""
    rows = (p.sum(-1) - 1).abs().amax() if p.numel() else p.new_zeros(())
    cols = (p.sum(-2) - 1).abs().amax() if p.numel() else p.new_zeros(())
    return torch.maximum(rows, cols)


class HyperResidual(nn.Module):
    """One sublayer F inside a manifold-constrained hyper-connection (mHC, §2.4, eq. 6).

    H <- H_res H + H_post^T F(H_pre H). The maps are static biases plus small
    token-dependent terms read from the normalised flattened stream; H_pre in
    (0,1), H_post in (0,2), H_res doubly stochastic. With M = 1 this is H + F(H).
    """

    def __init__(
        self, sublayer: nn.Module, d: int, n_branches: int, sinkhorn_iters: int, tol: float = 0.0, max_iters: int = 500
    ) -> None:
        super().__init__()
        self.sublayer, self.M, self.iters = sublayer, n_branches, sinkhorn_iters
        self.tol, self.max_iters = tol, max_iters
        M = n_branches
        if M == 1:
            return
        self.norm = RMSNorm(M * d)
        self.phi = nn.Linear(M * d, 2 * M + M * M, bias=False)
        self.alpha = nn.Parameter(torch.full((3,), 0.01))  # scales of the dynamic terms
        # at init each branch reads the mean, receives the whole output, and keeps itself
        self.b_pre = nn.Parameter(torch.full((M,), -math.log(M - 1)))
        self.b_post = nn.Parameter(torch.zeros(M))
        self.b_res = nn.Parameter(torch.full((M, M), -4.0).fill_diagonal_(0.0))

    def maps(self, H: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        M = self.M
        p = self.phi(self.norm(H.flatten(-2)))  # (B, T, 2M + M^2)
        a = self.alpha.to(p.dtype)
        pre = torch.sigmoid(a[0] * p[..., :M] + self.b_pre)  # (B, T, M)
        post = 2 * torch.sigmoid(a[1] * p[..., M : 2 * M] + self.b_post)  # (B, T, M)
        res = sinkhorn(a[2] * p[..., 2 * M :].unflatten(-1, (M, M)) + self.b_res, self.iters, self.tol, self.max_iters)
        # (B, T, M, M)
        return pre, post, res

    def forward(self, H: torch.Tensor) -> torch.Tensor:
        if self.M == 1:
            return H + self.sublayer(H[:, :, 0]).unsqueeze(2)
        pre, post, res = self.maps(H)
        h = (pre.to(H.dtype).unsqueeze(-1) * H).sum(2)  # (B, T, D)
        y = self.sublayer(h)  # (B, T, D)
        # subtle: a broadcast sum, not einsum: 4x4 batched matmuls are slow on CPU, this fuses
        mixed = (res.to(H.dtype).unsqueeze(-1) * H.unsqueeze(2)).sum(3)  # (B, T, M, D)
        return mixed + post.to(y.dtype).unsqueeze(-1) * y.unsqueeze(2)  # §2.4
