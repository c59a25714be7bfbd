"""Backbone pieces: hook points, RMSNorm, rotary attention, MLP, and the mHC residual.

B batch, T time, M residual branches, D width.
"""

from __future__ import annotations

import functools
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
    """Project exp(logits) (..., M, M) onto doubly stochastic matrices (Sinkhorn-Knopp), in fp32.

    tol = 0: exactly `iters` row-then-column steps, differentiated step by step (the
    paper's t_max = 20; how checkpoints from before the tolerance were trained).
    tol > 0: the projection itself, every row and column sum within tol of 1
    (`sinkhorn_projection`), with the exact gradient of the projection by implicit
    differentiation. subtle: plain Sinkhorn needs hundreds to thousands of steps for
    1e-3 on trained maps (entries near 1e-12 are common), which made a training step
    several times slower; Newton's method on the scaling converges in a few steps.
    """
    if tol <= 0:
        p = torch.exp(logits.float() - logits.float().amax(dim=(-2, -1), keepdim=True))
        for _ in range(iters):
            p = p / p.sum(dim=-1, keepdim=True)
            p = p / p.sum(dim=-2, keepdim=True)
        return p
    return sinkhorn_projection(logits, tol, max_iters)


def _errors(q: torch.Tensor) -> torch.Tensor:
    """Per matrix of (N, M, M): the largest |row sum - 1| or |column sum - 1|."""
    return torch.maximum((q.sum(-1) - 1).abs().amax(-1), (q.sum(-2) - 1).abs().amax(-1))


def _spd_solve(H: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """x with H x = g for a batch of small symmetric positive definite H (N, k, k).

    Cholesky written out over the batch: k is M - 1 (3 for four branches), where a
    LAPACK call per matrix costs more than the arithmetic.
    """
    k = H.shape[-1]
    L: dict[tuple[int, int], torch.Tensor] = {}
    for j in range(k):
        d = H[:, j, j] - sum((L[j, m] ** 2 for m in range(j)), H.new_zeros(()))
        L[j, j] = d.clamp_min(1e-30).sqrt()
        for i in range(j + 1, k):
            L[i, j] = (H[:, i, j] - sum((L[i, m] * L[j, m] for m in range(j)), H.new_zeros(()))) / L[j, j]
    z: list[torch.Tensor] = []
    for i in range(k):
        z.append((g[:, i] - sum((L[i, m] * z[m] for m in range(i)), H.new_zeros(()))) / L[i, i])
    x: list[torch.Tensor] = [H.new_zeros(())] * k
    for i in reversed(range(k)):
        x[i] = (z[i] - sum((L[m, i] * x[m] for m in range(i + 1, k)), H.new_zeros(()))) / L[i, i]
    return torch.stack(x, -1)


def _newton_columns(q: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
    """One Newton step with backtracking on the column log-factors y of q (N, M, M).

    With every row normalised exactly, the scaling minimises the convex
    g(y) = sum_i log sum_j q_ij e^(y_j) - sum_j y_j; its gradient is (column sums - 1),
    its Hessian diag(c) - P^T P over the row-normalised P. y_M = 0 fixes the gauge.
    Returns dy (N, M), zero where `active` is False.
    """
    N, M, _ = q.shape
    P = q / q.sum(-1, keepdim=True)
    c = P.sum(-2)  # (N, M)
    H = torch.diag_embed(c) - P.transpose(1, 2) @ P  # (N, M, M)
    d = _spd_solve(H[:, : M - 1, : M - 1], 1 - c[:, : M - 1])
    d = torch.where(active.unsqueeze(-1) & d.isfinite(), d, torch.zeros_like(d))
    d = d / (d.abs().amax(-1, keepdim=True) / 20).clamp_min(1.0)  # no overflow in exp
    dy = torch.cat([d, d.new_zeros(N, 1)], -1)
    # backtracking far from the solution: the longest of steps 1, 1/2, ..., 1/64 that lowers g
    t = torch.tensor([2.0**-k for k in range(7)], dtype=q.dtype)[:, None, None]  # (S, 1, 1)
    ty = t * dy  # (S, N, M)
    g_new = (P * ty.unsqueeze(-2).exp()).sum(-1).log().sum(-1) - ty.sum(-1)  # (S, N)
    step = torch.where(g_new < 0, t[:, :, 0], t[-1, :, 0]).amax(0)  # (N,); steps descend
    # near the solution the full step is right and the decrease of g is below fp32 rounding
    step = torch.where((c - 1).abs().amax(-1) < 0.05, torch.ones_like(step), step)
    return step.unsqueeze(-1) * dy


def _newton_iteration(q: torch.Tensor, tol: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(q, any left): one Newton step on every matrix whose rows, normalised, miss tol.
    subtle: the caller passes a tenth of its tol, one more quadratic step, so the
    final check passes with room to spare."""
    P = q / q.sum(-1, keepdim=True)  # rows renormalised every step: q stays bounded
    active = _errors(P) > tol
    dy = _newton_columns(P, active)
    return P * dy.exp().unsqueeze(-2), active.any()


@functools.cache
def _compiled_newton_iteration():
    """`_newton_iteration` compiled: training batches (thousands of matrices) run it as
    one fused kernel instead of ~60 small ATen calls; a single text stays eager (no
    compile wait in the app)."""
    return torch.compile(_newton_iteration, dynamic=False)


@torch.library.custom_op("engram::sinkhorn_projection", mutates_args=())
def sinkhorn_projection(logits: torch.Tensor, tol: float, max_iters: int) -> torch.Tensor:
    """The doubly stochastic scaling u_i exp(logits_ij) v_j (..., M, M), fp32, within tol.

    Three Sinkhorn steps, then Newton steps on the column factors with every row
    normalised exactly (at most 30), then plain Sinkhorn steps (at most max_iters)
    for any matrix Newton left above tol. A custom op: the loop looks at the data,
    which inside a compiled graph would break it; its backward is
    `sinkhorn_projection_backward`.
    """
    M = logits.shape[-1]
    lf = logits.detach().float().reshape(-1, M, M)
    # subtle: a whole row below the largest logit by more than ~87 underflows to zeros in
    # fp32 and would divide 0 by 0; 1e-30 is far below anything a sum within tol can see
    q = torch.exp(lf - lf.amax(dim=(-2, -1), keepdim=True)).clamp_min(1e-30)
    for _ in range(3):
        q = q / q.sum(-1, keepdim=True)
        q = q / q.sum(-2, keepdim=True)
    step = _compiled_newton_iteration() if len(q) >= 2048 else _newton_iteration
    for _ in range(30):
        q, left = step(q, tol / 10)
        if not bool(left):
            break
    q = q / q.sum(-1, keepdim=True)
    steps = 0
    while steps < max_iters and float(sinkhorn_error(q)) > tol:
        q = q / q.sum(-2, keepdim=True)
        q = q / q.sum(-1, keepdim=True)
        steps += 1
    return q.reshape(logits.shape)


@sinkhorn_projection.register_fake
def _(logits, tol, max_iters):  # noqa: ANN001, ANN202 - shapes only, for torch.compile
    return logits.new_empty(logits.shape, dtype=torch.float32)


@torch.library.custom_op("engram::sinkhorn_projection_backward", mutates_args=())
def sinkhorn_projection_backward(g: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """d loss / d logits from d loss / d p, by implicit differentiation of the constraints.

    p_ij = exp(l_ij + a_i + b_j) with rows and columns summing to 1. Differentiating
    the constraints: dp = p (dl + da 1^T + 1 db^T), diag(r) da + p db = -(p dl) 1 and
    p^T da + diag(c) db = -(p dl)^T 1. For W = g p (elementwise) the gradient is
    p (g - alpha 1^T - 1 beta^T), with [[diag(r), p], [p^T, diag(c)]] (alpha, beta) =
    (W 1, W^T 1); alpha eliminated, (diag(c) - p^T diag(1/r) p) beta = W^T 1 - p^T (W 1 / r),
    beta_M = 0 fixing the gauge (the system's null vector).
    """
    M = p.shape[-1]
    P = p.reshape(-1, M, M).float()
    G = g.reshape(-1, M, M).float()
    W = G * P
    r, c = P.sum(-1), P.sum(-2)
    wr, wc = W.sum(-1), W.sum(-2)
    Pr = P / r.unsqueeze(-1)
    H = torch.diag_embed(c) - P.transpose(1, 2) @ Pr
    # a ridge of 1e-6 (against sums of 1) keeps nearly decomposable maps, whose system is
    # close to singular, from turning the gradient into inf or NaN
    H = H + 1e-6 * torch.eye(M, dtype=H.dtype, device=H.device)
    rhs = wc - (P.transpose(1, 2) @ (wr / r).unsqueeze(-1)).squeeze(-1)
    beta = torch.cat([_spd_solve(H[:, : M - 1, : M - 1], rhs[:, : M - 1]), P.new_zeros(len(P), 1)], -1)
    alpha = (wr - (P @ beta.unsqueeze(-1)).squeeze(-1)) / r
    out = P * (G - alpha.unsqueeze(-1) - beta.unsqueeze(-2))
    return torch.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0).reshape(p.shape)


@sinkhorn_projection_backward.register_fake
def _(g, p):  # noqa: ANN001, ANN202
    return torch.empty_like(p)


def _projection_setup(ctx, inputs, output) -> None:  # noqa: ANN001
    ctx.save_for_backward(output)
    ctx.dtype = inputs[0].dtype


def _projection_grad(ctx, g):  # noqa: ANN001, ANN202
    (p,) = ctx.saved_tensors
    return sinkhorn_projection_backward(g.contiguous(), p).to(ctx.dtype), None, None


sinkhorn_projection.register_autograd(_projection_grad, setup_context=_projection_setup)


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
