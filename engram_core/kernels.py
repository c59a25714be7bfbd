"""The short conv's taps gradient as a torch custom op with a hand-written backward.

It computes exactly the gradient autograd would (`engram.causal_dilated_conv`); it
exists because of how torch.compile lowers that gradient on CPU (bench/README.md):
a reduction over every (batch, time) position into a (channels, taps) matrix, which,
fused into the read-out's backward kernel, ran at a fraction of memory speed (about
17 ms of a 57 ms read-out fwd+bwd at the default batch), while the same reductions as
separate ATen calls take about 1.5 ms a tap. A custom op is opaque to torch.compile:
the compiled graph calls it as it would a matmul, without a graph break.
(Sinkhorn's unrolled steps were tried the same way and measured slower as eager
ATen calls than compiled inline, so they stay inline.)
"""

from __future__ import annotations

import torch


@torch.library.custom_op("engram::conv_taps_grad_tap", mutates_args=())
def conv_taps_grad_tap(y: torch.Tensor, x: torch.Tensor, w: torch.Tensor, dilation: int) -> torch.Tensor:
    """Identity on y (a copy) whose backward adds the gradient of the conv taps w.

    y must be `causal_dilated_conv(x, w.detach(), dilation)`: the gradient of x flows
    through that (compiled) expression, the taps' gradient through this op.
    """
    return y.clone()


@conv_taps_grad_tap.register_fake
def _(y, x, w, dilation):  # noqa: ANN001, ANN202 - the fake kernel mirrors the op
    return torch.empty_like(y)


@torch.library.custom_op("engram::conv_taps_grad", mutates_args=())
def conv_taps_grad(g: torch.Tensor, x: torch.Tensor, w: torch.Tensor, dilation: int) -> torch.Tensor:
    """d loss / d w[c, j] = sum over (b, t) of g[b, t, c] * x[b, t - j*dilation, c], in fp32."""
    T, C = x.shape[1], x.shape[2]
    acc = torch.promote_types(x.dtype, torch.float32)  # fp32, or fp64 for an fp64 model
    gw = torch.zeros(w.shape, dtype=acc, device=w.device)
    for j in range(w.shape[1]):
        s = j * dilation
        if s < T:
            gw[:, j] = (g[:, s:] * x[:, : T - s]).reshape(-1, C).sum(0, dtype=acc)
    return gw.to(w.dtype)


@conv_taps_grad.register_fake
def _(g, x, w, dilation):  # noqa: ANN001, ANN202
    return torch.empty_like(w)


def _tap_setup(ctx, inputs, output) -> None:  # noqa: ANN001
    _y, x, w, dilation = inputs
    ctx.save_for_backward(x, w)
    ctx.dilation = dilation


def _tap_backward(ctx, g):  # noqa: ANN001, ANN202
    x, w = ctx.saved_tensors
    return g, None, conv_taps_grad(g.contiguous(), x, w, ctx.dilation), None


conv_taps_grad_tap.register_autograd(_tap_backward, setup_context=_tap_setup)
