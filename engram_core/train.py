"""Training: the paper's recipe at laptop scale (§8, App. A).

Backbone: AdamW. Tables: Adam at 5x the backbone learning rate, no weight decay,
on sparse gradients (only rows read this step move). bf16 autocast where the CPU
computes bf16 natively, fp32 elsewhere (`precision.py`); everything after the
sparse lookups may be compiled as one graph (CALIBRATION.md, bench/README.md).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch

from .model import EngramLM
from .precision import choose_precision

SAMPLERS = ("epoch", "random")  # checkpoints trained before the sampler was recorded drew "random" windows


@dataclass(frozen=True)
class TrainConfig:
    tokens: int = 9_000_000  # training budget in tokens (batch_size * block_size per step)
    batch_size: int = 16  # sequences per step
    lr: float = 3e-3  # backbone peak learning rate
    table_lr_mult: float = 5.0  # tables learn 5x faster (paper App. A)
    weight_decay: float = 0.1  # backbone matrices only; tables and norms get none
    warmup_steps: int = 100  # linear warm-up
    final_lr_frac: float = 0.1  # cosine decay ends at this fraction of the peak
    eval_every: int = 250  # steps between validation passes
    eval_windows: int = 32  # windows per domain in periodic validation
    seed: int = 0  # data order and init
    precision: str = "auto"  # "bf16" autocast, "fp32", or "auto": bf16 only where the CPU has it natively
    compile: bool = True  # torch.compile the dense core
    sampler: str = "epoch"  # "epoch": every window once per pass, shuffled; "random": windows drawn with replacement

    def __post_init__(self) -> None:
        choose_precision(self.precision)  # one clear line for a bad value
        if self.sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {', '.join(SAMPLERS)}, got {self.sampler!r}")

    @property
    def bf16(self) -> bool:
        """Whether this run trains under bf16 autocast, on this machine."""
        return choose_precision(self.precision) == "bf16"

    def steps(self, block_size: int) -> int:
        return max(1, self.tokens // (self.batch_size * block_size))


def lr_factor(step: int, total: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    t = (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)
    return cfg.final_lr_frac + (1 - cfg.final_lr_frac) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))


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
                # subtle: coalesced rows are unique, so a gather-update-scatter is the same
                # sum as index_add_, which on CPU ran about 5 ms a table at the default batch
                step_rows = m.div_(denom).mul_(-group["lr"] / (1 - b1**t))
                p.index_copy_(0, rows, p.index_select(0, rows).add_(step_rows))


def make_optimizers(model: EngramLM, cfg: TrainConfig) -> list[torch.optim.Optimizer]:
    tables, decay, no_decay = [], [], []
    for name, p in model.named_parameters():
        if name.endswith("table.weight"):
            tables.append(p)
        elif p.dim() >= 2 and not name.endswith(("conv", "b_res", "norm_h", "norm_k", "norm_conv")):
            decay.append(p)
        else:
            no_decay.append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    opts: list[torch.optim.Optimizer] = [torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.95), fused=True)]
    if tables:
        opts.append(RowAdam(tables, lr=cfg.lr * cfg.table_lr_mult, betas=(0.9, 0.95)))
    for opt in opts:
        for g in opt.param_groups:
            g["base_lr"] = g["lr"]
    return opts


def vector_isa() -> str:
    """The SIMD instruction set torch.compile's CPU kernels use here ("none": scalar code).

    subtle: inductor decides this once per process by building and loading a probe
    library. In a process that imported torch with `MALLOC_MMAP_MAX_=0` (which
    `engram train` sets) that probe fails, every kernel is compiled scalar and a
    training step runs 2.5x slower with no error; then the CPU's flags are trusted.
    """
    from torch._inductor import cpu_vec_isa

    isa = cpu_vec_isa.pick_vec_isa()
    if not isa:
        # the probe failed; the CPU's own flags (/proc/cpuinfo, which inductor reads
        # first) say what it can run, so trust them instead of the probe
        import torch._inductor.config as inductor_config

        inductor_config.cpp.vec_isa_ok = True
        cpu_vec_isa.valid_vec_isa_list.cache_clear()
        todo = [cpu_vec_isa.VecISA]
        while todo:  # every ISA class memoises its own verdict
            cls = todo.pop()
            todo += cls.__subclasses__()
            for name in ("__bool__", "_VecISA__bool__impl"):
                getattr(getattr(cls, name, None), "cache_clear", lambda: None)()
        isa = cpu_vec_isa.pick_vec_isa()
    return str(isa) if isa else "none"


def compile_dense(model: EngramLM, mode: str = "sublayers") -> None:
    """Compile the dense parts in place; hashing and the sparse lookups stay eager.

    "sublayers" (the default): attention, MLP (each inside its mHC residual) and the
    Engram read-out, one graph each, and one for the head and the loss (the fp32
    log-softmax over the vocabulary fuses there). "blocks": one graph per block (read-out, both mHC
    sublayers and the residual sums between them) and one for the head and loss.
    "model": the whole dense part as one graph. subtle: at the default batch
    (16 x 256, bf16, AVX512-BF16) "blocks" measured 0.90x the steps per second of
    "sublayers" and compiled for 136 s against 13 s (bench/README.md), so the larger
    graphs are options, not the default.
    """
    vector_isa()  # before the first graph compiles: never scalar kernels by accident
    if mode == "sublayers":
        for block in model.blocks:
            block.attn.compile(dynamic=False)
            block.mlp.compile(dynamic=False)
            if block.engram is not None:
                block.engram.readout.compile(dynamic=False)
        model.head_loss = torch.compile(model.head_loss, dynamic=False)
    elif mode == "model":
        model.dense_loss = torch.compile(model.dense_loss, dynamic=False)
    elif mode == "blocks":
        for block in model.blocks:
            block.compile(dynamic=False)
        model.head_loss = torch.compile(model.head_loss, dynamic=False)
    else:
        raise ValueError(f"compile mode must be 'sublayers', 'blocks' or 'model', got {mode!r}")


def sample_batch(stream: np.ndarray, batch: int, T: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    starts = rng.integers(0, len(stream) - T - 1, size=batch)
    win = np.stack([stream[s : s + T + 1] for s in starts]).astype(np.int64)
    x = torch.from_numpy(win)
    return x[:, :-1], x[:, 1:]


class EpochWindows:
    """Training windows that cover the stream once per epoch before any repeats.

    Each epoch cuts the stream into windows of T+1 tokens at stride T, starting at a
    random phase in [0, T) so the cuts move between epochs, and visits them in a
    shuffled order. Drawing windows with replacement instead (`sample_batch`) sees
    about a third of what it has seen at least once a second time by 0.7 epochs,
    while half the corpus is still unseen.
    """

    def __init__(self, stream: np.ndarray, T: int, rng: np.random.Generator) -> None:
        if len(stream) < 2 * T + 1:
            raise ValueError(
                f"the training stream has {len(stream)} tokens; windows of {T + 1} need at least {2 * T + 1}"
            )
        self.stream, self.T, self.rng = stream, T, rng
        self.epoch, self.order, self.pos = 0, np.empty(0, dtype=np.int64), 0

    def _new_epoch(self) -> None:
        phase = int(self.rng.integers(0, self.T))
        n = (len(self.stream) - 1 - phase) // self.T
        self.order = phase + self.T * self.rng.permutation(n)
        self.pos = 0
        self.epoch += 1

    def starts(self, batch: int) -> np.ndarray:
        """The start offsets of the next `batch` windows (an epoch's tail continues into the next)."""
        out = []
        while len(out) < batch:
            if self.pos == len(self.order):
                self._new_epoch()
            take = self.order[self.pos : self.pos + batch - len(out)]
            self.pos += len(take)
            out.extend(take.tolist())
        return np.asarray(out, dtype=np.int64)

    def batch(self, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        win = np.stack([self.stream[s : s + self.T + 1] for s in self.starts(batch)]).astype(np.int64)
        x = torch.from_numpy(win)
        return x[:, :-1], x[:, 1:]


def eval_windows(stream: np.ndarray, T: int, max_windows: int | None) -> torch.Tensor:
    """Non-overlapping windows of T+1 tokens, evenly spread over the stream."""
    n = (len(stream) - 1) // T
    idx = np.arange(n) if max_windows is None or n <= max_windows else np.linspace(0, n - 1, max_windows).astype(int)
    return torch.from_numpy(np.stack([stream[i * T : i * T + T + 1] for i in idx]).astype(np.int64))


def evaluate(
    model: EngramLM,
    windows: torch.Tensor,
    bf16: bool | None = None,
    batch: int = 16,
    grad_mode: bool = False,
    **kw,
) -> float:
    """Mean next-token loss (nats/token) over the given windows.

    `bf16=None` picks bf16 autocast only where the CPU computes it natively. The
    model has no dropout, so train and eval modes compute the same thing;
    `grad_mode=True` keeps a compiled model on the graphs it trained with
    instead of recompiling for no-grad (about 25 s on 2 cores).
    """
    bf16 = choose_precision("auto") == "bf16" if bf16 is None else bf16
    total, count = 0.0, 0
    with torch.set_grad_enabled(grad_mode):
        for i in range(0, len(windows), batch):
            w = windows[i : i + batch]
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = model.loss(w[:, :-1], w[:, 1:], **kw)
            total += float(loss.detach()) * w[:, 1:].numel()
            count += w[:, 1:].numel()
    return total / count


def train_step(
    model: EngramLM,
    opts: list[torch.optim.Optimizer],
    x: torch.Tensor,
    y: torch.Tensor,
    bf16: bool,
    rows: dict[int, torch.Tensor] | None = None,
) -> torch.Tensor:
    """One optimisation step on a batch; returns the (detached) loss."""
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        loss = model.loss(x, y, rows=rows)
    loss.backward()
    torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.grad is not None and not p.grad.is_sparse], 1.0)
    for opt in opts:
        opt.step()
        opt.zero_grad(set_to_none=True)
    return loss.detach()


def train(
    model: EngramLM,
    train_stream: np.ndarray,
    val_streams: dict[str, np.ndarray],
    cfg: TrainConfig,
    log: Callable[[dict], None] = lambda r: None,
    progress: Callable[[int, int, dict], None] = lambda i, n, r: None,
) -> list[dict]:
    """Train in place; returns the history of validation records."""
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    T = model.cfg.backbone.block_size
    steps = cfg.steps(T)
    opts = make_optimizers(model, cfg)
    if cfg.compile:
        compile_dense(model)
    val = {k: eval_windows(v, T, cfg.eval_windows) for k, v in val_streams.items()}
    history: list[dict] = []
    bf16 = cfg.bf16
    t0, seen, smooth = time.perf_counter(), 0, None
    windows = EpochWindows(train_stream, T, rng) if cfg.sampler == "epoch" else None
    model.train()
    for step in range(steps):
        f = lr_factor(step, steps, cfg)
        for opt in opts:
            for g in opt.param_groups:
                g["lr"] = g["base_lr"] * f
        x, y = windows.batch(cfg.batch_size) if windows else sample_batch(train_stream, cfg.batch_size, T, rng)
        try:
            loss = train_step(model, opts, x, y, bf16)
        except FloatingPointError as e:  # the mHC projection refuses non-finite maps
            raise FloatingPointError(f"training diverged at step {step + 1}: {e}") from e
        seen += x.numel()
        lv = float(loss.detach())
        if not math.isfinite(lv):
            raise FloatingPointError(f"training diverged at step {step + 1}: the loss is {lv}")
        smooth = lv if smooth is None else 0.98 * smooth + 0.02 * lv
        rec = {"step": step + 1, "tokens": seen, "loss": smooth, "elapsed_s": time.perf_counter() - t0}
        rec["tok_per_s"] = seen / rec["elapsed_s"]
        if (step + 1) % cfg.eval_every == 0 or step + 1 == steps:
            rec.update({f"val_{k}": evaluate(model, w, bf16, cfg.batch_size, grad_mode=True) for k, w in val.items()})
            history.append(rec)
            log(rec)
        progress(step + 1, steps, rec)
    return history


def config_json(cfg: TrainConfig) -> str:
    return json.dumps(asdict(cfg))
