"""Note [Packed conv weights]: inside a SparseModule, ``ops.conv2d`` runs large convs with weights reordered
once into oneDNN's layout. The result must be the plain conv's bit for bit, the pack must follow the weight
when it changes, and nothing outside fxsparse's own calls may use it."""

from unittest import mock

import pytest
import test_property
import torch
import torch.nn.functional as F
from torch import nn

import fxsparse
from conftest import assert_close_scaled, moving_object_frames
from fxsparse import ops
from fxsparse.packed_weights import packed_conv_weights, packed_weight

pytestmark = pytest.mark.skipif(not ops._ONEDNN, reason="this torch build has no oneDNN fused conv")

CL = torch.channels_last


def _plain(x, w, b, stride, padding, groups, act, residual):
    y = F.conv2d(x, w, b, stride, padding, 1, groups)
    if residual is not None:
        y = y + residual
    return ops.apply_activation(y, act)


@pytest.mark.parametrize("act", [None, ("relu",), ("hardtanh", 0.0, 6.0), ("leaky_relu", 0.1)])
@pytest.mark.parametrize("groups,k,stride", [(1, 1, 1), (1, 3, 1), (1, 3, 2), (32, 3, 1), (32, 5, 2)],
                         ids=["1x1", "3x3", "3x3s2", "depthwise", "depthwise5x5s2"])
@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_packed_conv_is_the_plain_conv_bit_for_bit(act, groups, k, stride, residual, dtype):
    torch.manual_seed(0)
    x = torch.randn(1, 32, 96, 120, dtype=dtype).contiguous(memory_format=CL)
    w = torch.randn(32, 32 // groups, k, k, dtype=dtype).contiguous(memory_format=CL)
    b = torch.randn(32, dtype=dtype)
    out_hw = ((96 + 2 * (k // 2) - k) // stride + 1, (120 + 2 * (k // 2) - k) // stride + 1)
    assert 32 * out_hw[0] * out_hw[1] >= ops.PACKED_MIN_OUTPUT
    r = torch.randn(1, 32, *out_hw, dtype=dtype).contiguous(memory_format=CL) if residual else None
    cache = {}
    with torch.inference_mode():
        expected = _plain(x, w, b, stride, k // 2, groups, act, r)
        with packed_conv_weights(cache):
            got = ops.conv2d(x, w, b, (stride, stride), (k // 2,) * 4, (1, 1), groups, act, r)
    fusable = not residual or act in (None, ("relu",))
    if dtype == torch.bfloat16:  # Note [Fused conv epilogues]: only the clamping activations, no residual
        fusable = not residual and act in (None, ("relu",), ("hardtanh", 0.0, 6.0))
    assert len(cache) == fusable  # a residual with another activation keeps PyTorch's conv, unpacked
    assert torch.equal(got, expected)


def test_small_outputs_and_calls_outside_the_context_use_the_plain_weight():
    w = torch.randn(8, 8, 3, 3)
    with torch.inference_mode():
        assert packed_weight(w, (1, 8, 64, 64), (1, 1), (1, 1), (1, 1), 1) is None  # no cache in effect
        cache = {}
        with packed_conv_weights(cache):
            ops.conv2d(torch.randn(1, 8, 16, 16).contiguous(memory_format=CL), w, None, (1, 1), (1,) * 4, (1, 1), 1)
            assert not cache  # 2048 output elements: F.conv2d's smaller fixed cost wins
            ops.conv2d(torch.randn(1, 8, 96, 96).contiguous(memory_format=CL), w, None, (1, 1), (1,) * 4, (1, 1), 1)
            assert len(cache) == 1
        ops.conv2d(torch.randn(1, 8, 96, 96).contiguous(memory_format=CL), w, None, (1, 1), (1,) * 4, (1, 1), 1)
        assert len(cache) == 1  # the context ended: the next call packed nothing


def test_a_weight_changed_in_place_is_packed_again():
    x = torch.randn(1, 16, 80, 80).contiguous(memory_format=CL)
    w = torch.randn(16, 16, 1, 1)
    cache = {}
    with packed_conv_weights(cache):
        with torch.inference_mode():
            before = ops.conv2d(x, w, None, (1, 1), (0,) * 4, (1, 1), 1, ("relu",))
        with torch.no_grad():
            w.mul_(-1.0)  # e.g. a user loading new weights into the module
        with torch.inference_mode():
            after = ops.conv2d(x, w, None, (1, 1), (0,) * 4, (1, 1), 1, ("relu",))
            expected = F.relu(F.conv2d(x, w))
    assert torch.equal(after, expected)
    assert not torch.equal(after, before)


class _MobileBlocks(nn.Module):
    """Depthwise-separable blocks with a residual, big enough that every conv's output is packed."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.ReLU6())
        self.dw = nn.Sequential(nn.Conv2d(16, 16, 3, 1, 1, groups=16), nn.BatchNorm2d(16), nn.ReLU6())
        self.pw = nn.Sequential(nn.Conv2d(16, 16, 1), nn.BatchNorm2d(16))
        self.head = nn.Conv2d(16, 16, 3, 1, 1)

    def forward(self, x):
        y = self.stem(x)
        return self.head(y + self.pw(self.dw(y)))


def test_sparse_module_packs_its_convs_and_equals_dense():
    torch.manual_seed(0)
    net = _MobileBlocks().eval()
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):  # not the identity: folding must be exercised
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    sm = fxsparse.transform(net)
    for x in moving_object_frames(1, 160, 192, 6):
        with torch.no_grad():
            expected = net(x)
        assert_close_scaled(sm(x), expected)
    shapes = {key[1] for key in sm._packed_weights}
    assert len(sm._packed_weights) >= 4 and (1, 16, 80, 96) in shapes  # the dense first frame's convs
    sm.reset()
    assert not sm._packed_weights  # a new frame size would pack anew


def test_random_networks_match_dense_with_every_conv_packed():
    """The property test of tests/test_property.py with every conv, crops included, on packed weights."""
    with mock.patch.object(ops, "PACKED_MIN_OUTPUT", 1):
        test_property.test_random_networks_match_dense_every_frame()
