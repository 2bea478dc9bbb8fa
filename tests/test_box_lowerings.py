"""Lowerings that compute a whole changed box: depthwise convs (dense conv on the box, else gathered
taps, else the whole layer; Note [Depthwise on the box]) and 1x1 convs (one GEMM over the box's rows read
in place, Note [Pointwise GEMM on the box]). Every path gives the dense model's output. These are the
PyTorch paths, taken where the native kernels are not (no C compiler, bfloat16): the kernels are switched off
here and tested in test_native_kernels.py."""

from unittest import mock

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fxsparse
from conftest import assert_close_scaled
from fxsparse.kernels import native
from fxsparse.kernels.buckets import bucket_span


@pytest.fixture(autouse=True)
def _without_native_kernels():
    with mock.patch.object(native, "available", lambda: False):
        yield


def _net(stride=1, dilation=1, residual=False):
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.pw = nn.Conv2d(3, 8, 1)
            self.dw = nn.Conv2d(8, 8, 3, stride, padding=dilation, dilation=dilation, groups=8)
            self.bn = nn.BatchNorm2d(8)

        def forward(self, x):
            h = self.pw(x)
            y = torch.relu(self.bn(self.dw(h)))
            return y + h if residual else y

    torch.manual_seed(0)
    net = Block().eval()
    net.bn.running_mean.uniform_(-1, 1)
    net.bn.running_var.uniform_(0.5, 2)
    return net


def _macs_of(sm, name_part):
    return next(layer for layer in sm.stats.layers if name_part in layer.name)


@pytest.mark.parametrize("stride,dilation,residual", [(1, 1, False), (2, 1, False), (1, 2, False), (1, 1, True)])
def test_a_tight_change_runs_on_its_box_and_equals_dense(stride, dilation, residual):
    net = _net(stride, dilation, residual and stride == 1)
    sm = fxsparse.transform(net)
    x = torch.rand(1, 3, 40, 48)
    sm(x)
    for y0, x0 in [(10, 12), (0, 0), (33, 41)]:  # inside, and touching the borders (zero padding)
        x = x.clone()
        x[:, :, y0 : y0 + 7, x0 : x0 + 7] = torch.rand(3, 7, 7)
        with torch.no_grad():
            expected = net(x.clone())
        assert_close_scaled(sm(x), expected)
        dw = _macs_of(sm, "dw")
        # the box (grown to a bucket size) is computed, not just the changed positions: at least the
        # cone (more inside the image, where 9 rows grow to 12), less than the whole layer
        assert dw.macs_cone <= dw.macs_executed < dw.macs_dense
        if (y0, x0) == (10, 12) and stride == 1:
            assert dw.macs_executed > dw.macs_cone


def test_scattered_changes_gather_taps_and_equal_dense():
    net = _net()
    sm = fxsparse.transform(net)
    x = torch.rand(1, 3, 40, 48)
    sm(x)
    x = x.clone()
    x[:, :, 1, 1] += 1.0
    x[:, :, 38, 46] += 1.0  # two pixels in opposite corners: the box is the whole map, 18 positions change
    with torch.no_grad():
        expected = net(x.clone())
    assert_close_scaled(sm(x), expected)
    dw = _macs_of(sm, "dw")
    assert dw.macs_executed == dw.macs_cone  # taps: exactly the changed positions


def test_several_streams_share_one_box_conv_and_equal_dense():
    net = _net()
    sm = fxsparse.transform(net)
    x = torch.rand(3, 3, 40, 48)
    sm(x)
    for full_stream in (False, True):
        x = x.clone()
        x[0, :, 10:16, 10:16] = torch.rand(3, 6, 6)
        x[2, :, 12:18, 14:20] = torch.rand(3, 6, 6)
        if full_stream:
            x[1] = torch.rand(3, 40, 48)  # the union box is the whole map: this stream runs its dense op
        with torch.no_grad():
            expected = net(x.clone())
        assert_close_scaled(sm(x), expected)
        dw = _macs_of(sm, "dw")
        assert dw.macs_cone <= dw.macs_executed < dw.macs_dense


def test_bucket_span_grows_to_a_few_sizes_inside_the_map():
    for limit in (5, 18, 36, 288):
        seen = set()
        for lo in range(limit):
            for hi in range(lo + 1, limit + 1):
                a, b = bucket_span(lo, hi, limit)
                assert 0 <= a <= lo and hi <= b <= limit  # contains the span, stays inside
                seen.add(b - a)
        assert len(seen) <= 24  # few shapes, so oneDNN's compiled kernels repeat


class _Pointwise(nn.Module):
    def __init__(self, bias: bool, act=torch.relu):
        super().__init__()
        self.a = nn.Conv2d(3, 6, 1, bias=bias)
        self.b = nn.Conv2d(6, 6, 1, bias=bias)
        self.act = act

    def forward(self, x):
        h = torch.relu(self.a(x))
        return self.act(self.b(h) + h)  # a fused residual and activation


@pytest.mark.parametrize("bias,act", [(True, torch.relu), (False, torch.relu), (True, F.gelu)])
@pytest.mark.parametrize("streams", [1, 2])
def test_pointwise_convs_on_whole_rows_boxes_and_scattered_positions_equal_dense(bias, act, streams):
    """gelu has no in-place form: the in-place GEMM must still store the activated rows (found by the
    property test)."""
    torch.manual_seed(0)
    net = _Pointwise(bias, act).eval()
    sm = fxsparse.transform(net)
    x = torch.rand(streams, 3, 20, 24)
    sm(x)
    for change in ("rows", "box", "pixels"):
        x = x.clone()
        if change == "rows":  # whole rows: the GEMM reads and writes the cache in place
            x[:, :, 5:9, :] = torch.rand(streams, 3, 4, 24)
        elif change == "box":
            x[:, :, 3:9, 10:20] = torch.rand(streams, 3, 6, 10)
        else:
            x[:, :, 2, 3] += 1.0
            x[:, :, 17, 21] += 1.0
        with torch.no_grad():
            expected = net(x.clone())
        assert_close_scaled(sm(x), expected, change)
        b = _macs_of(sm, "b")
        if change == "pixels":
            assert b.macs_executed == b.macs_cone
        else:  # the box, in every stream: here exactly the changed positions
            assert b.macs_executed == b.macs_cone


def test_squeeze_excite_vectors_take_one_in_place_gemm(monkeypatch):
    """Note [Vector GEMM]: the 1x1 convs on a pooled [B, C, 1, 1] vector run as one GEMM over the streams'
    rows, in place; with two streams and only one changing, both stay exact."""
    from fxsparse.rules import window

    calls = []
    real = window._pointwise_gemm_on_box
    monkeypatch.setattr(window, "_pointwise_gemm_on_box",
                        lambda step, ctx, box: (calls.append(step.name), real(step, ctx, box)))

    class SE(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1)
            self.fc1, self.fc2 = nn.Conv2d(8, 4, 1), nn.Conv2d(4, 8, 1)

        def forward(self, x):
            y = torch.relu(self.conv(x))
            s = F.hardsigmoid(self.fc2(torch.relu(self.fc1(y.mean((2, 3), keepdim=True)))))
            return y * s

    torch.manual_seed(0)
    net = SE().eval()
    sm = fxsparse.transform(net, dense_tail=False)  # walked layer by layer (a dense tail runs them as one graph)
    x = torch.rand(2, 3, 20, 24)
    sm(x)
    for i in range(3):
        x = x.clone()
        x[1, :, 4 + i, 5] += 1.0  # only stream 1 changes
        with torch.no_grad():
            assert_close_scaled(sm(x), net(x))
    assert sorted(set(calls)) == ["fc1", "fc2"] and len(calls) == 6


@pytest.mark.parametrize("k,stride", [(3, 2), (7, 2), (3, 1)])
def test_a_stem_conv_on_the_frame_runs_on_the_box(monkeypatch, k, stride):
    """Note [Stems on the box]: a conv reading the 3-channel frame runs as a dense conv on a compact changed
    box (also at the image border), and equals dense."""
    from fxsparse.rules import window

    calls = []
    real = window._conv_on_box
    monkeypatch.setattr(window, "_conv_on_box", lambda step, ctx, box: (calls.append(box), real(step, ctx, box)))
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, k, stride, k // 2), nn.ReLU6()).eval()
    sm = fxsparse.transform(net)
    x = torch.rand(1, 3, 64, 80)
    sm(x)
    for y0, x0 in ((20, 30), (0, 0), (60, 76)):
        x = x.clone()
        x[:, :, y0 : y0 + 4, x0 : x0 + 4] += 1.0
        with torch.no_grad():
            assert_close_scaled(sm(x), net(x))
    assert len(calls) == 3
