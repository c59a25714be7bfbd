"""The short conv's tap order against nn.Conv1d's, and the converters between the two layouts."""

import pytest
import torch
import torch.nn.functional as F

from engram_core.engram import causal_dilated_conv, conv_weight_from_conv1d, conv_weight_to_conv1d


@pytest.mark.parametrize("dilation,K", [(3, 4), (1, 3), (2, 1)])
def test_converted_conv1d_weights_match_reference_conv(dilation, K):
    g = torch.Generator().manual_seed(7)
    C = 6
    x = torch.randn(2, 25, C, generator=g)  # (B, T, C)
    ref_w = torch.randn(C, 1, K, generator=g)  # nn.Conv1d(C, C, K, groups=C).weight layout
    # causal reference: pad (K-1)*dilation zeros on the left, then a plain depthwise Conv1d
    ref = F.conv1d(F.pad(x.transpose(1, 2), ((K - 1) * dilation, 0)), ref_w, dilation=dilation, groups=C)
    ours = causal_dilated_conv(x, conv_weight_from_conv1d(ref_w), dilation)
    torch.testing.assert_close(ours, ref.transpose(1, 2), atol=1e-5, rtol=1e-5)


def test_tap_order_by_hand():
    """Tap j multiplies x_{t - j*dilation}: with w = (1, 10, 100) and dilation 2 on x = 1, 2, ..., 6,
    y_5 = 1*x_5 + 10*x_3 + 100*x_1 = 6 + 40 + 200 = 246 (x_t = t + 1).
    nn.Conv1d's kernel is the reverse: (100, 10, 1)."""
    x = torch.arange(1.0, 7.0).view(1, 6, 1)
    w = torch.tensor([[1.0, 10.0, 100.0]])
    y = causal_dilated_conv(x, w, 2)
    assert y[0, :, 0].tolist() == [1.0, 2.0, 13.0, 24.0, 135.0, 246.0]
    assert conv_weight_to_conv1d(w).tolist() == [[[100.0, 10.0, 1.0]]]


def test_converters_round_trip_and_refuse_other_shapes():
    w = torch.randn(8, 4)
    assert torch.equal(conv_weight_from_conv1d(conv_weight_to_conv1d(w)), w)
    with pytest.raises(ValueError, match=r"\(C, 1, K\)"):
        conv_weight_from_conv1d(torch.randn(8, 2, 4))
    with pytest.raises(ValueError, match=r"\(C, K\)"):
        conv_weight_to_conv1d(torch.randn(8, 1, 4))
