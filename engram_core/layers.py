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


def _column_errors(P: torch.Tensor) -> torch.Tensor:
    """Per row-normalised matrix of (N, M, M): the largest |column sum - 1| (its rows sum to 1)."""
    return (P.sum(-2) - 1).abs().amax(-1)


def _rows(lf: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """P_ij = exp(l_ij + y_j) / sum_k exp(l_ik + y_k): the logits (N, M, M) with column log-factors
    y (N, M), every row normalised (a softmax: each row is shifted by its own largest entry).

    subtle: the scaling lives in y, never in an exponentiated matrix. Taking exp of the raw logits
    first underflowed every entry more than ~87 below the largest to 0 (then to a floor of 1e-30),
    which for logits spanning more than that changed the matrix being projected; here an entry
    underflows only when it is below ~1e-308 of its own row's largest.
    """
    return torch.softmax(lf + y.unsqueeze(-2), -1)


def _log_column_sums(P: torch.Tensor) -> torch.Tensor:
    """log of each column's sum (N, M); a column whose every entry underflowed counts as 1e-300."""
    return P.sum(-2).clamp_min(1e-300).log()


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


def _laplacian(A: torch.Tensor) -> torch.Tensor:
    """diag(row sums of A off the diagonal) - A off the diagonal, for symmetric A (N, M, M).

    With every row of P summing to 1, diag(c) - P^T P is exactly this Laplacian of A = P^T P
    (c_j = sum_k A_jk). subtle: written this way the diagonal is a sum of non-negative terms;
    c_j - A_jj cancels to 0 in fp32 for a nearly isolated column (P_jj = 1 - 1e-9), the pivot was
    then clamped and the Newton step lost (1e-3 missed on 3.5 % of random maps at logit scale 20).
    """
    off = A - torch.diag_embed(A.diagonal(dim1=-2, dim2=-1))
    return torch.diag_embed(off.sum(-1)) - off


RIDGE = 1e-9  # added to the Newton system's diagonal (against column sums of 1)


def _newton_columns(P: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
    """One Newton step with backtracking on the column log-factors y, from the row-normalised P (N, M, M).

    With every row normalised exactly, the scaling minimises the convex
    g(y) = sum_i log sum_j q_ij e^(y_j) - sum_j y_j; its gradient is (column sums - 1),
    its Hessian diag(c) - P^T P. y_M = 0 fixes the gauge.
    Returns dy (N, M), zero where `active` is False.
    """
    N, M, _ = P.shape
    c = P.sum(-2)  # (N, M)
    H = _laplacian(P.transpose(1, 2) @ P)  # (N, M, M)
    # subtle: a ridge. When a column is all but cut off from the others (the map nearly splits into
    # blocks), fixing y_M = 0 leaves the other block's common shift with a near-zero eigenvalue; its
    # gradient is zero in exact arithmetic, but rounding divided by that eigenvalue swamped the step
    H = H + RIDGE * torch.eye(M, dtype=H.dtype, device=H.device)
    d = _spd_solve(H[:, : M - 1, : M - 1], 1 - c[:, : M - 1])
    d = torch.where(active.unsqueeze(-1) & d.isfinite(), d, torch.zeros_like(d))
    d = d / (d.abs().amax(-1, keepdim=True) / 20).clamp_min(1.0)  # no overflow in exp
    dy = torch.cat([d, d.new_zeros(N, 1)], -1)
    # backtracking far from the solution: the longest of steps 1, 1/2, ..., 1/64 that lowers g
    t = torch.tensor([2.0**-k for k in range(7)], dtype=P.dtype)[:, None, None]  # (S, 1, 1)
    ty = t * dy  # (S, N, M)
    g_new = (P * ty.unsqueeze(-2).exp()).sum(-1).log().sum(-1) - ty.sum(-1)  # (S, N)
    step = torch.where(g_new < 0, t[:, :, 0], t[-1, :, 0]).amax(0)  # (N,); steps descend
    # near the solution the full step is right and the decrease of g is below rounding
    step = torch.where((c - 1).abs().amax(-1) < 0.05, torch.ones_like(step), step)
    return step.unsqueeze(-1) * dy


def _newton_iteration(lf: torch.Tensor, y: torch.Tensor, tol: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(y, stepped): one Newton step on the column log-factors of every matrix whose columns miss tol,
    and which matrices those were (N,). subtle: the caller passes a tenth of its tol, one more
    quadratic step, so the final check passes with room to spare."""
    P = _rows(lf, y)
    active = _column_errors(P) > tol
    return y + _newton_columns(P, active), active


def _sinkhorn_start(lf: torch.Tensor) -> torch.Tensor:
    """Column log-factors y (N, M) after three plain Sinkhorn steps from y = 0: Newton's start."""
    y = lf.new_zeros(lf.shape[:2])
    for _ in range(3):
        y = y - _log_column_sums(_rows(lf, y))
    return y


@functools.cache
def _compiled_sinkhorn_start():
    return torch.compile(_sinkhorn_start, dynamic=False)


@functools.cache
def _compiled_newton_iteration():
    """`_newton_iteration` compiled: training batches (thousands of matrices) run it as
    one fused kernel instead of ~60 small ATen calls; a single text stays eager (no
    compile wait in the app)."""
    return torch.compile(_newton_iteration, dynamic=False)


@torch.library.custom_op("engram::sinkhorn_projection", mutates_args=())
def sinkhorn_projection(logits: torch.Tensor, tol: float, max_iters: int) -> torch.Tensor:
    """The doubly stochastic scaling u_i exp(logits_ij) v_j (..., M, M), fp32, within tol.

    Everything runs on the column log-factors y, in float64, with every row normalised
    (`_rows`): three Sinkhorn steps, then Newton steps (at most 30; once few matrices are
    left, on those alone), then plain Sinkhorn steps (at most max_iters) on any matrix
    still above tol. Non-finite logits are refused (FloatingPointError): one such matrix
    would otherwise stop the loop's check for the whole batch. A custom op: the loop looks
    at the data, which inside a compiled graph would break it; its backward is
    `sinkhorn_projection_backward`.
    """
    M = logits.shape[-1]
    # subtle: float64 inside. In fp32 the decrease of g that Newton's line search looks for is
    # below rounding on nearly decomposable maps (entries 1 - 1e-12 beside 1e-12), and Newton
    # stalled; the maps are 4x4: a training batch's projection costs about 1.2x what it did in fp32
    lf = logits.detach().double().reshape(-1, M, M)
    bad = ~torch.isfinite(lf).flatten(1).all(-1)
    if bool(bad.any()):
        raise FloatingPointError(
            f"Sinkhorn projection: {int(bad.sum())} of {len(lf)} H_res maps have NaN or infinite logits"
        )
    y = (_compiled_sinkhorn_start() if len(lf) >= 2048 else _sinkhorn_start)(lf)  # (N, M) column log-factors
    left = torch.arange(len(lf))  # the matrices Newton still works on: after a few steps, a small share
    for _ in range(30):
        if not len(left):
            break
        if len(left) > len(lf) // 4:  # the whole batch, compiled when large (shapes stay fixed in training)
            step = _compiled_newton_iteration() if len(lf) >= 2048 else _newton_iteration
            y, stepped = step(lf, y, tol / 10)
            left = stepped.nonzero().flatten()
        else:  # the few left, eager
            y_left, stepped = _newton_iteration(lf[left], y[left], tol / 10)
            y[left] = y_left
            left = left[stepped]
    P = _rows(lf, y)
    for _ in range(max_iters):
        active = _column_errors(P) > tol  # per matrix: one hard map never holds back the others
        if not bool(active.any()):
            break
        y = torch.where(active.unsqueeze(-1), y - _log_column_sums(P), y)
        P = _rows(lf, y)
    return P.float().reshape(logits.shape)


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
    P = p.reshape(-1, M, M).double()  # float64 as the forward; the system is 3x3 per map
    G = g.reshape(-1, M, M).double()
    W = G * P
    r = P.sum(-1)
    wr, wc = W.sum(-1), W.sum(-2)
    Pr = P / r.unsqueeze(-1)
    H = _laplacian(P.transpose(1, 2) @ Pr)  # = diag(c) - p^T diag(1/r) p, without its cancellation
    # a ridge of 1e-6 (against sums of 1) keeps nearly decomposable maps, whose system is
    # close to singular, from turning the gradient into inf or NaN
    H = H + 1e-6 * torch.eye(M, dtype=H.dtype, device=H.device)
    rhs = wc - (P.transpose(1, 2) @ (wr / r).unsqueeze(-1)).squeeze(-1)
    beta = torch.cat([_spd_solve(H[:, : M - 1, : M - 1], rhs[:, : M - 1]), P.new_zeros(len(P), 1)], -1)
    alpha = (wr - (P @ beta.unsqueeze(-1)).squeeze(-1)) / r
    out = P * (G - alpha.unsqueeze(-1) - beta.unsqueeze(-2))
    # a solver overflow becomes 0; a NaN or inf coming from above passes on as it came
    out = torch.where(G.isfinite(), torch.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0), G)
    return out.float().reshape(p.shape)


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
