"""The training step as it was before the speed work, kept frozen as the benchmark's baseline.

A verbatim copy of the model, read-out, mHC residual and optimizers of
`engram_core` at that time (layers.py, engram.py, model.py, train.py), minus the
knock-out masks and hooks' callers that training never uses. Parameter names
match `EngramLM`, so the same state dict loads into both and the benchmark
compares like with like. Do not optimise this file: it is the yardstick.

B batch, T time, M branches, H hash heads, D width, V vocabulary.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from engram_core.config import MemoryConfig, ModelConfig
from engram_core.hashing import HashSpec, hash_all


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


def sinkhorn(logits: torch.Tensor, iters: int) -> torch.Tensor:
    """Project exp(logits) (..., M, M) onto doubly stochastic matrices (Sinkhorn-Knopp)."""
    p = torch.exp(logits.float() - logits.float().amax(dim=(-2, -1), keepdim=True))
    for _ in range(iters):
        p = p / p.sum(dim=-1, keepdim=True)
        p = p / p.sum(dim=-2, keepdim=True)
    return p


class HyperResidual(nn.Module):
    """One sublayer F inside a manifold-constrained hyper-connection (mHC, §2.4, eq. 6).

    H <- H_res H + H_post^T F(H_pre H). The maps are static biases plus small
    token-dependent terms read from the normalised flattened stream; H_pre in
    (0,1), H_post in (0,2), H_res doubly stochastic. With M = 1 this is H + F(H).
    """

    def __init__(self, sublayer: nn.Module, d: int, n_branches: int, sinkhorn_iters: int) -> None:
        super().__init__()
        self.sublayer, self.M, self.iters = sublayer, n_branches, sinkhorn_iters
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
        res = sinkhorn(a[2] * p[..., 2 * M :].unflatten(-1, (M, M)) + self.b_res, self.iters)  # (B, T, M, M)
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


def causal_dilated_conv(x: torch.Tensor, weight: torch.Tensor, dilation: int) -> torch.Tensor:
    """Depthwise causal conv over time: y_t = sum_j w[:, j] * x_{t - j*dilation}.

    x: (B, T, C), weight: (C, K). Written as K shifted multiply-adds: on CPU this
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
        self.conv = nn.Parameter(torch.zeros(M * d, cfg.conv_kernel))  # zero-init: Y = V~ at start
        self.hook_gate_score = HookPoint()
        self.hook_gate = HookPoint()
        self.hook_value = HookPoint()
        self.hook_out = HookPoint()

    def forward(self, H: torch.Tensor, e: torch.Tensor, branch_keep: torch.Tensor | None) -> torch.Tensor:
        D = H.shape[-1]
        k = self.w_k(e).unflatten(-1, (H.shape[2], D))  # (B, T, M, D) eq. 3
        v = self.hook_value(self.w_v(e))  # (B, T, D) eq. 3
        q_n = rms_norm(H, None) * self.norm_h.to(H.dtype)
        k_n = rms_norm(k, None) * self.norm_k.to(k.dtype)
        s = (q_n * k_n).sum(-1).float() / math.sqrt(D)  # (B, T, M) eq. 4
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
        self.layer, self.cfg, self.n_branches = layer, cfg, n_branches
        primes = torch.tensor(spec.primes[layer], dtype=torch.int64)
        offsets = torch.cumsum(primes, 0) - primes
        self.register_buffer("primes", primes, persistent=False)
        self.register_buffer("offsets", offsets, persistent=False)  # first row of each head
        self.table = nn.Embedding(int(primes.sum()), cfg.d_head, sparse=True)
        nn.init.normal_(self.table.weight, std=0.02)
        self.readout = EngramReadout(cfg, d, n_branches)
        self.hook_hash_ids = HookPoint()
        self.hook_rows = HookPoint()

    def forward(self, H: torch.Tensor, hash_ids: torch.Tensor) -> torch.Tensor:
        hash_ids = self.hook_hash_ids(hash_ids)  # (B, T, H) head-local rows
        e = self.table(hash_ids + self.offsets)  # (B, T, H, Dh) eq. 2
        e = self.hook_rows(e).flatten(-2)  # (B, T, H*Dh), order-major then head-minor (§4)
        return self.readout(H, e, None)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int) -> None:
        super().__init__()
        b = cfg.backbone
        self.engram = None
        if cfg.memory is not None and layer in cfg.memory.layer_ids:
            self.engram = Engram(cfg.memory, cfg.memory.hash_spec, layer, b.d_model, b.n_branches)
        attn = Attention(b.d_model, b.n_head, b.block_size, b.rope_base)
        self.attn = HyperResidual(attn, b.d_model, b.n_branches, b.sinkhorn_iters)
        self.mlp = HyperResidual(MLP(b.d_model, b.mlp_ratio), b.d_model, b.n_branches, b.sinkhorn_iters)
        self.hook_resid_pre = HookPoint()
        self.hook_resid_post = HookPoint()

    def forward(self, H: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
        H = self.hook_resid_pre(H)  # (B, T, M, D)
        if self.engram is not None:
            H = H + self.engram(H, rows)  # §2.3: memory before attention and MLP
        return self.hook_resid_post(self.mlp(self.attn(H)))


class BaselineLM(nn.Module):
    """`EngramLM`'s training path: compression, hashing, blocks, tied head, loss."""

    def __init__(self, cfg: ModelConfig, compression: np.ndarray) -> None:
        super().__init__()
        self.cfg = cfg
        b = cfg.backbone
        self.register_buffer("compression", torch.as_tensor(compression, dtype=torch.int64), persistent=False)
        self.wte = nn.Embedding(b.vocab_size, b.d_model)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(b.n_layer))
        self.norm = RMSNorm(b.d_model)
        self.hook_compressed_ids = HookPoint()
        self.hook_logits = HookPoint()

    def hash_rows(self, ids: torch.Tensor) -> dict[int, torch.Tensor]:
        cids = self.hook_compressed_ids(self.compression[ids])  # §1
        spec = self.cfg.memory.hash_spec if self.cfg.memory is not None else None
        return hash_all(cids, spec) if spec is not None else {}  # §3, eq. 1

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        ids = ids.long()
        rows = self.hash_rows(ids)
        M = self.cfg.backbone.n_branches
        H = self.wte(ids).unsqueeze(2).expand(-1, -1, M, -1)  # (B, T, M, D)
        for i, block in enumerate(self.blocks):
            H = block(H, rows.get(i))
        return self.hook_logits(F.linear(self.norm(H.mean(2)), self.wte.weight))  # tied head

    def loss(
        self,
        ids: torch.Tensor,
        targets: torch.Tensor,
    ) -> torch.Tensor:
        logits = self(ids)
        return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())


class RowAdam(torch.optim.Optimizer):
    """Adam on sparse row gradients of embedding tables: only the rows read this step move.

    The same lazy update as torch.optim.SparseAdam (moments of unread rows stay as
    they are), written with index_select / index_copy_ on the coalesced rows
    instead of sparse-tensor masks: about a tenth of a training step cheaper.
    """

    def __init__(self, params, lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps})

    @torch.no_grad()
    def step(self, closure=None) -> None:  # noqa: ANN001 - the Optimizer signature
        for group in self.param_groups:
            b1, b2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if not p.grad.is_sparse:
                    raise ValueError("RowAdam takes sparse gradients (nn.Embedding(sparse=True))")
                g = p.grad.coalesce()
                rows, grad = g.indices()[0], g.values()  # (R,), (R, Dh)
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                state["step"] += 1
                m = state["exp_avg"].index_select(0, rows).mul_(b1).add_(grad, alpha=1 - b1)
                v = state["exp_avg_sq"].index_select(0, rows).mul_(b2).addcmul_(grad, grad, value=1 - b2)
                state["exp_avg"].index_copy_(0, rows, m)
                state["exp_avg_sq"].index_copy_(0, rows, v)
                t = state["step"]
                denom = (v / (1 - b2**t)).sqrt_().add_(group["eps"])
                p.index_add_(0, rows, m.div_(denom), alpha=-group["lr"] / (1 - b1**t))


def make_optimizers(
    model: BaselineLM, lr: float = 3e-3, weight_decay: float = 0.1, table_lr_mult: float = 5.0
) -> list[torch.optim.Optimizer]:
    tables, decay, no_decay = [], [], []
    for name, p in model.named_parameters():
        if name.endswith("table.weight"):
            tables.append(p)
        elif p.dim() >= 2 and not name.endswith(("conv", "b_res", "norm_h", "norm_k", "norm_conv")):
            decay.append(p)
        else:
            no_decay.append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    opts: list[torch.optim.Optimizer] = [torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95), fused=True)]
    if tables:
        opts.append(RowAdam(tables, lr=lr * table_lr_mult, betas=(0.9, 0.95)))
    for opt in opts:
        for g in opt.param_groups:
            g["base_lr"] = g["lr"]
    return opts


def compile_dense(model: BaselineLM) -> None:
    """Compile attention, MLP and the Engram read-out in place; lookups stay eager."""
    for block in model.blocks:
        block.attn.compile(dynamic=False)
        block.mlp.compile(dynamic=False)
        if block.engram is not None:
            block.engram.readout.compile(dynamic=False)


def train_step(model: BaselineLM, opts: list, x: torch.Tensor, y: torch.Tensor, bf16: bool) -> torch.Tensor:
    """One step of the training loop as `engram_core.train.train` ran it."""
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        loss = model.loss(x, y)
    loss.backward()
    torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.grad is not None and not p.grad.is_sparse], 1.0)
    for opt in opts:
        opt.step()
        opt.zero_grad(set_to_none=True)
    return loss.detach()
