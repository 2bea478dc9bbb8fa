"""Note [Fused conv epilogues]: ``ops.conv2d`` runs conv + residual + activation as one oneDNN call on large
outputs. The sparse paths apply PyTorch's activations to gathered rows, so the fused result must be
PyTorch's (bit for bit; hardswish to float rounding), or positions computed by different paths would
disagree."""

import pytest
import torch
import torch.nn.functional as F

from fxsparse import ops

pytestmark = pytest.mark.skipif(not ops._ONEDNN, reason="this torch build has no oneDNN fused conv")


def _unfused(x, w, b, padding, groups, act, residual):
    y = F.conv2d(x, w, b, 1, padding, 1, groups)
    if residual is not None:
        y = y + residual
    return ops.apply_activation(y, act)


@pytest.mark.parametrize("act", [None, ("relu",), ("hardtanh", 0.0, 6.0), ("leaky_relu", 0.1), ("hardswish",)])
@pytest.mark.parametrize("groups,k", [(1, 1), (1, 3), (16, 3)], ids=["1x1", "3x3", "depthwise"])
@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_conv_is_pytorchs_conv_then_add_then_activation_bit_for_bit(act, groups, k, residual, dtype):
    torch.manual_seed(0)
    cl = torch.channels_last
    x = torch.randn(1, 16, 160, 208, dtype=dtype).contiguous(memory_format=cl)  # above FUSE_MIN_OUTPUT
    w = torch.randn(16, 16 // groups, k, k, dtype=dtype).contiguous(memory_format=cl)
    b = torch.randn(16, dtype=dtype)
    r = torch.randn(1, 16, 160, 208, dtype=dtype).contiguous(memory_format=cl) if residual else None
    assert x.numel() >= ops.FUSE_MIN_OUTPUT
    with torch.inference_mode():
        fused = ops._onednn_conv(x, w, b, (1, 1), (k // 2, k // 2), (1, 1), groups, act, r)
        expected = _unfused(x, w, b, k // 2, groups, act, r)
        got = ops.conv2d(x, w, b, (1, 1), (k // 2,) * 4, (1, 1), groups, act, r)
    takes_fusion = (act is not None or residual) and (not residual or act in (None, ("relu",)))
    if dtype == torch.bfloat16:  # rounded once by oneDNN, twice by PyTorch: only the clamping activations
        takes_fusion = takes_fusion and not residual and act[0] in ("relu", "hardtanh")
    assert (fused is not None) == takes_fusion
    if act == ("hardswish",) and takes_fusion:  # oneDNN's formula: equal to float rounding
        scale = float(expected.abs().max())
        assert float((got - expected).abs().max()) <= 1e-6 * scale
    else:
        assert torch.equal(got, expected)


def test_small_outputs_and_autograd_keep_the_plain_conv():
    x = torch.randn(1, 8, 16, 16)
    w = torch.randn(8, 8, 3, 3, requires_grad=True)
    assert ops._onednn_conv(x, w.detach(), None, (1, 1), (1, 1), (1, 1), 1, ("relu",), None) is None  # small
    big = torch.randn(1, 8, 300, 300)
    with torch.enable_grad():
        assert ops._onednn_conv(big, w, None, (1, 1), (1, 1), (1, 1), 1, ("relu",), None) is None
        y = ops.conv2d(big, w, None, (1, 1), (1, 1, 1, 1), (1, 1), 1, ("relu",))
        y.sum().backward()  # the plain path keeps autograd working
    assert w.grad is not None
