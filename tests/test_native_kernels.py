"""The C kernels (fxsparse/kernels/native.py). Note [Native depthwise] and Note [Native conv]: the conv
kernels read and write the caches in place; they must equal PyTorch's conv (bias, residual and activation
included) at the changed positions of the box they are given, touch nothing else, decline what they cannot
run, and fxsparse must stay exact with them and without them. Note [Native mask footprint]: a window's
footprint on a 0/1 mask equals max pooling of the zero-padded mask inside the box. Note [Native input
difference]: the input mask and the largest difference equal PyTorch's, NaN and inf included. Note [Native
bilinear upsample]: F.interpolate's values to float rounding, for every layout and way of sizing."""

import os
import subprocess
import sys
import textwrap
from unittest import mock

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import fxsparse
from conftest import assert_close_scaled, moving_object_frames
from fxsparse import ops
from fxsparse.kernels import native
from fxsparse.rules.masks import box_of

needs_native = pytest.mark.skipif(not native.available(), reason=f"native kernels: {native.status()}")

ACTS = [None, ("relu",), ("hardtanh", 0.0, 6.0), ("hardswish",)]


def _rows(x):  # [B, C, H, W] -> channels-last rows [B * H * W, C]
    return x.permute(0, 2, 3, 1).reshape(-1, x.shape[1]).contiguous()


def _case(c, k, stride, dilation, bias, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, c, 13, 17, generator=g)
    w = torch.randn(c, 1, k, k, generator=g)
    b = torch.randn(c, generator=g) if bias else None
    pad = dilation * (k - 1) // 2
    return x, w, b, pad


def _draw_geometry(data, h, w, kh, kw):
    """Strides, dilations, asymmetric padding (top, bottom, left, right) and the output size (may be empty)."""
    sh, sw = data.draw(st.integers(1, 2)), data.draw(st.integers(1, 2))
    dh, dw = data.draw(st.integers(1, 2)), data.draw(st.integers(1, 2))
    pt, pb = data.draw(st.integers(0, dh * (kh - 1))), data.draw(st.integers(0, dh * (kh - 1)))
    pl, pr = data.draw(st.integers(0, dw * (kw - 1))), data.draw(st.integers(0, dw * (kw - 1)))
    ho, wo = (h + pt + pb - dh * (kh - 1) - 1) // sh + 1, (w + pl + pr - dw * (kw - 1) - 1) // sw + 1
    return (sh, sw), (dh, dw), (pt, pb, pl, pr), (ho, wo)


def _draw_box(data, ho, wo):
    y0, x0 = data.draw(st.integers(0, ho - 1)), data.draw(st.integers(0, wo - 1))
    return y0, data.draw(st.integers(y0 + 1, ho)), x0, data.draw(st.integers(x0 + 1, wo))


def _assert_written_exactly_there(out, expected, mask, box):
    """``out`` (rows, filled with 7 before) equals ``expected`` at the changed positions inside ``box``, and
    nothing else was written."""
    written = torch.zeros_like(mask, dtype=torch.bool)
    written[:, :, box[0]:box[1], box[2]:box[3]] = mask[:, :, box[0]:box[1], box[2]:box[3]] > 0
    written = written.view(-1)
    torch.testing.assert_close(out[written], expected[written], rtol=1e-5, atol=1e-5)
    assert (out[~written] == 7.0).all()


@needs_native
@pytest.mark.parametrize("c", [1, 16, 24, 64, 100])  # the kernel's channel blocks: 32, 16, then one by one
@pytest.mark.parametrize("k,stride,dilation", [(3, 1, 1), (3, 2, 1), (5, 1, 1), (5, 2, 1), (3, 1, 2)])
@pytest.mark.parametrize("act", ACTS, ids=["none", "relu", "relu6", "hardswish"])
def test_depthwise_equals_pytorchs_conv_on_a_changed_box_and_leaves_the_rest(c, k, stride, dilation, act):
    x, w, b, pad = _case(c, k, stride, dilation, bias=c != 24)
    expected = ops.apply_activation(F.conv2d(x, w, b, stride, pad, dilation, c), act)
    ho, wo = expected.shape[2:]
    sentinel = torch.full((2 * ho * wo, c), 7.0)
    out = sentinel.clone()
    box = (1, ho - 1, 0, wo - 2)  # touches the left edge, stays off the others
    y0, y1, x0, x1 = box
    mask = torch.ones(2, 1, ho, wo)  # changed everywhere: the box alone limits the work
    taps = w.flatten(1).t().contiguous()
    assert native.depthwise_masked(_rows(x), out, taps, b, mask, (13, 17), (k, k), (stride, stride), (pad, pad),
                                   (dilation, dilation), box, 2 * ho * wo, act)
    got = out.view(2, ho, wo, c).permute(0, 3, 1, 2)
    torch.testing.assert_close(got[:, :, y0:y1, x0:x1], expected[:, :, y0:y1, x0:x1], rtol=1e-5, atol=1e-5)
    inside = torch.zeros(2, ho, wo, dtype=torch.bool)
    inside[:, y0:y1, x0:x1] = True
    assert torch.equal(out[~inside.view(-1)], sentinel[~inside.view(-1)])


@needs_native
@pytest.mark.parametrize("stride", [1, 2])
def test_depthwise_runs_of_every_length_with_gaps(stride):
    """Runs of 1-7 changed neighbours, one unchanged position between them: four at a time only where four
    neighbours changed, nothing written in the gaps."""
    x, w, b, _ = _case(20, 3, stride, 1, bias=True)
    x = torch.randn(2, 20, 9, 80, generator=torch.Generator().manual_seed(3))
    expected = _rows(F.conv2d(x, w, b, stride, 1, 1, 20))
    ho, wo = (9 - 1) // stride + 1, (80 - 1) // stride + 1
    mask, col = torch.zeros(2, 1, ho, wo), 1
    for run in range(1, 8):
        mask[:, :, 1, col:col + run] = 1.0
        col += run + 1
    out = torch.full_like(expected, 7.0)
    assert native.depthwise_masked(_rows(x), out, w.flatten(1).t().contiguous(), b, mask, (9, 80), (3, 3),
                                   (stride, stride), (1, 1), (1, 1), (0, ho, 0, wo), int(mask.sum()), None)
    changed = mask.view(-1) > 0
    torch.testing.assert_close(out[changed], expected[changed], rtol=1e-5, atol=1e-5)
    assert (out[~changed] == 7.0).all()


@needs_native
@given(st.data())
def test_depthwise_equals_pytorchs_conv_at_the_masks_positions_in_the_box(data):
    """Any channel count (vector blocks of 32 and 16, then one by one), kernel, stride, dilation and
    asymmetric padding; changed positions in runs of neighbours (computed four at a time) and alone, at the
    borders too; exactly the changed positions inside the box are written."""
    b, c = data.draw(st.integers(1, 2)), data.draw(st.integers(1, 50))
    h, w = data.draw(st.integers(1, 14)), data.draw(st.integers(1, 14))
    kh, kw = data.draw(st.integers(1, 5)), data.draw(st.integers(1, 5))
    (sh, sw), (dh, dw), (pt, pb, pl, pr), (ho, wo) = _draw_geometry(data, h, w, kh, kw)
    if ho < 1 or wo < 1:
        return
    act = data.draw(st.sampled_from(ACTS))
    g = torch.Generator().manual_seed(data.draw(st.integers(0, 2**16)))
    x, wt = torch.randn(b, c, h, w, generator=g), torch.randn(c, 1, kh, kw, generator=g)
    bias = torch.randn(c, generator=g) if data.draw(st.booleans()) else None
    expected = _rows(ops.apply_activation(F.conv2d(F.pad(x, (pl, pr, pt, pb)), wt, bias, (sh, sw), 0, (dh, dw), c), act))
    # runs of 1-9 changed neighbours from random starts (they may wrap into the next row)
    mask = torch.zeros(b * ho * wo)
    for start in data.draw(st.lists(st.integers(0, b * ho * wo - 1), min_size=1, max_size=6)):
        mask[start:start + data.draw(st.integers(1, 9))] = 1.0
    mask = mask.view(b, 1, ho, wo)
    box = _draw_box(data, ho, wo)
    out = torch.full_like(expected, 7.0)
    assert native.depthwise_masked(_rows(x), out, wt.flatten(1).t().contiguous(), bias, mask, (h, w), (kh, kw),
                                   (sh, sw), (pt, pl), (dh, dw), box, int(mask.sum()), act)
    _assert_written_exactly_there(out, expected, mask, box)


@needs_native
@given(st.data())
def test_conv_equals_pytorchs_conv_at_the_masks_positions_in_the_box(data):
    """Note [Native conv]: any input and output channel counts (output blocks of 64, 32, 16 and 8 channels,
    then one by one; positions eight, four and one at a time), kernel, stride, dilation and asymmetric
    padding, with or without bias, residual and activation, several streams; exactly the changed positions
    inside the box are written."""
    b, h, w = data.draw(st.integers(1, 2)), data.draw(st.integers(1, 12)), data.draw(st.integers(1, 12))
    c, n = data.draw(st.integers(1, 20)), data.draw(st.sampled_from([1, 7, 8, 16, 24, 33, 64, 72, 100, 136]))
    kh, kw = data.draw(st.sampled_from([(1, 1), (3, 3), (1, 3), (5, 2)]))
    (sh, sw), (dh, dw), (pt, pb, pl, pr), (ho, wo) = _draw_geometry(data, h, w, kh, kw)
    if ho < 1 or wo < 1:
        return
    g = torch.Generator().manual_seed(data.draw(st.integers(0, 2**16)))
    x, wt = torch.randn(b, c, h, w, generator=g), torch.randn(n, c, kh, kw, generator=g)
    bias = torch.randn(n, generator=g) if data.draw(st.booleans()) else None
    residual = torch.randn(b * ho * wo, n, generator=g) if data.draw(st.booleans()) else None
    act = data.draw(st.sampled_from(ACTS))
    expected = _rows(F.conv2d(F.pad(x, (pl, pr, pt, pb)), wt, bias, (sh, sw), 0, (dh, dw)))
    expected = ops.apply_activation(expected + (0 if residual is None else residual), act)
    mask = (torch.rand(b, 1, ho, wo, generator=g) < data.draw(st.sampled_from([0.1, 0.5, 1.0]))).float()
    box = _draw_box(data, ho, wo)
    out = torch.full((b * ho * wo, n), 7.0)
    weight_t = wt.permute(2, 3, 1, 0).reshape(-1, n).contiguous()  # as window.py lays it out
    assert native.conv_masked(_rows(x), out, native.conv_panels(weight_t), n, bias, residual, mask, (h, w), (kh, kw),
                              (sh, sw), (pt, pl), (dh, dw), box, int(mask.sum()), act)
    _assert_written_exactly_there(out, expected, mask, box)


@needs_native
@pytest.mark.parametrize("kernel", [1, 3])
def test_conv_and_depthwise_on_their_threads_equal_pytorchs_conv(kernel):
    """Enough work (above ~0.2 M multiply-adds) that the kernels split the box's rows among OpenMP threads;
    two streams, a residual, half the positions changed."""
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 64, 40, 48, generator=g)
    mask = (torch.rand(2, 1, 40, 48, generator=g) < 0.5).float()
    changed = mask.view(-1) > 0
    wt, bias = torch.randn(96, 64, kernel, kernel, generator=g), torch.randn(96, generator=g)
    residual = torch.randn(2 * 40 * 48, 96, generator=g)
    expected = ops.apply_activation(_rows(F.conv2d(x, wt, bias, 1, kernel // 2)) + residual, ("relu",))
    out = torch.full_like(expected, 7.0)
    panels = native.conv_panels(wt.permute(2, 3, 1, 0).reshape(-1, 96).contiguous())
    assert native.conv_masked(_rows(x), out, panels, 96, bias, residual, mask, (40, 48), (kernel, kernel), (1, 1),
                              (kernel // 2, kernel // 2), (1, 1), (0, 40, 0, 48), int(mask.sum()), ("relu",))
    torch.testing.assert_close(out[changed], expected[changed], rtol=1e-4, atol=1e-4)
    assert (out[~changed] == 7.0).all()
    dw = torch.randn(64, 1, 3, 3, generator=g)
    expected = _rows(F.conv2d(x, dw, None, 1, 1, 1, 64))
    out = torch.full_like(expected, 7.0)
    assert native.depthwise_masked(_rows(x), out, dw.flatten(1).t().contiguous(), None, mask, (40, 48), (3, 3), (1, 1),
                                   (1, 1), (1, 1), (0, 40, 0, 48), int(mask.sum()), None)
    torch.testing.assert_close(out[changed], expected[changed], rtol=1e-5, atol=1e-5)
    assert (out[~changed] == 7.0).all()


def test_conv_panels_hold_each_block_of_64_output_channels_whole():
    weight_t = torch.arange(3 * 150, dtype=torch.float32).view(3, 150)
    panels = native.conv_panels(weight_t)
    assert torch.equal(panels[:192].view(3, 64), weight_t[:, :64])
    assert torch.equal(panels[192:384].view(3, 64), weight_t[:, 64:128])
    assert torch.equal(panels[384:].view(3, 22), weight_t[:, 128:])


@needs_native
def test_conv_declines_what_it_cannot_run_untouched():
    x, panels, mask = torch.randn(20, 8), native.conv_panels(torch.randn(8, 16)), torch.ones(1, 1, 4, 5)
    out = torch.zeros(20, 16)
    geometry = ((4, 5), (1, 1), (1, 1), (0, 0), (1, 1), (0, 4, 0, 5), 20)
    assert not native.conv_masked(x, out, panels, 16, None, None, mask, *geometry, ("sigmoid",))
    assert not native.conv_masked(x.bfloat16(), out.bfloat16(), panels.bfloat16(), 16, None, None, mask, *geometry, None)
    assert not native.conv_masked(x, out, panels, 16, None, None, mask.bool(), *geometry, None)
    assert not native.conv_masked(x, out, panels, 16, None, torch.zeros(20, 8), mask, *geometry, None)  # residual shape
    assert not native.conv_masked(x, out, panels[:-1], 16, None, None, mask, *geometry, None)  # not the weight's size
    assert not out.any()


@needs_native
def test_what_the_depthwise_kernel_cannot_run_is_declined_untouched():
    x, w, b, pad = _case(16, 3, 1, 1, bias=True)
    taps, inp, mask = w.flatten(1).t().contiguous(), _rows(x), torch.ones(2, 1, 13, 17)
    out = torch.zeros(2 * 13 * 17, 16)
    args = ((13, 17), (3, 3), (1, 1), (1, 1), (1, 1), (0, 13, 0, 17), 2 * 13 * 17)
    assert not native.depthwise_masked(inp, out, taps, b, mask, *args, ("sigmoid",))  # no native form: PyTorch's
    assert not native.depthwise_masked(inp.bfloat16(), out.bfloat16(), taps.bfloat16(), b.bfloat16(), mask, *args, None)
    assert not native.depthwise_masked(inp, out, taps.t(), b, mask, *args, None)  # not contiguous
    assert not native.depthwise_masked(inp, out, taps, b, mask.bool(), *args, None)
    assert not out.any()


class _Blocks(nn.Module):
    """MobileNetV2-like blocks (expand, depthwise with relu6, project + residual) and a 5x5 hardswish one."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, 1, 1)
        self.expand = nn.Sequential(nn.Conv2d(16, 96, 1), nn.BatchNorm2d(96), nn.ReLU6())
        self.dw = nn.Sequential(nn.Conv2d(96, 96, 3, 1, 1, groups=96), nn.BatchNorm2d(96), nn.ReLU6())
        self.project = nn.Sequential(nn.Conv2d(96, 16, 1), nn.BatchNorm2d(16))
        self.dw5 = nn.Sequential(nn.Conv2d(16, 16, 5, 2, 2, groups=16), nn.Hardswish())
        self.head = nn.Conv2d(16, 8, 1)

    def forward(self, x):
        y = self.stem(x)
        y = y + self.project(self.dw(self.expand(y)))
        return self.head(self.dw5(y))


@needs_native
def test_sparse_module_uses_the_kernel_and_equals_dense():
    torch.manual_seed(0)
    net = _Blocks().eval()
    ran = []

    def spy(fn):
        def call(*args):
            ran.append((fn.__name__, fn(*args)))
            return ran[-1][1]
        return call

    with mock.patch.object(native, "depthwise_masked", spy(native.depthwise_masked)), \
            mock.patch.object(native, "conv_masked", spy(native.conv_masked)):
        sm = fxsparse.transform(net)
        frames = moving_object_frames(1, 64, 80, 5)
        scattered = frames[-1].clone()
        for y, x in ((2, 3), (60, 75), (5, 70), (58, 4)):  # changes far apart: positions one at a time
            scattered[:, :, y, x] += 1.0
        for x in frames + [scattered]:
            with torch.no_grad():
                expected = net(x)
            assert_close_scaled(sm(x), expected)
    assert ("depthwise_masked", True) in ran
    assert ("conv_masked", True) in ran  # the stem, the expand, project (with its residual) and head 1x1 convs


@needs_native
def test_coverage_names_the_native_lowerings_and_their_switches():
    sm = fxsparse.transform(_Blocks().eval())
    sm(torch.rand(1, 3, 32, 32))
    lowering = {e.name: e.lowering for e in sm.coverage().entries}
    assert lowering["dw.0"] == "native depthwise at the changed positions, never dense"
    assert lowering["expand.0"] == "native 1x1 at the changed positions, dense above 90%"
    assert lowering["stem"] == "native 3x3 at the changed positions, dense above 90%"


@needs_native
def test_native_conv_weight_limits_for_1x1_and_for_convs_with_taps():
    """1x1 convs run natively up to 2^19 weights, convs with taps up to 2^20 (their GEMM path gathers K x Cin
    values per position); beyond, the GEMM lowering."""
    net = nn.Sequential(nn.Conv2d(3, 256, 1), nn.Conv2d(256, 256, 3, padding=1),  # 589,824 weights: native
                        nn.Conv2d(256, 2048, 1), nn.Conv2d(2048, 256, 1),  # 2^19 weights each: native
                        nn.Conv2d(256, 4096, 1),  # 2^20 weights, 1x1: GEMM
                        nn.Conv2d(4096, 32, 3, padding=1))  # 1,179,648 weights with taps: GEMM
    sm = fxsparse.transform(net.eval())
    sm(torch.rand(1, 3, 6, 6))
    lowering = {e.name: e.lowering for e in sm.coverage().entries}
    assert lowering["1"].startswith("native 3x3") and lowering["2"].startswith("native 1x1")
    assert lowering["3"].startswith("native 1x1")
    assert not lowering["4"].startswith("native") and not lowering["5"].startswith("native")


def test_without_a_compiler_or_switched_off_fxsparse_keeps_the_onednn_path(tmp_path):
    """In fresh processes: the kernels are built on first use, so their state is per process. A compiler
    without OpenMP still builds them (one thread)."""
    script = textwrap.dedent("""
        import torch, fxsparse
        from fxsparse.kernels import native
        from torch import nn
        net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.ReLU6())
        sm = fxsparse.transform(net.eval())
        x = torch.rand(1, 3, 32, 32)
        sm(x)
        x[:, :, 10:14, 10:14] = 1.0
        with torch.no_grad():
            err = float((sm(x) - net(x)).abs().max())
        print(native.status(), "|", err)
    """)
    no_openmp = tmp_path / "cc-without-openmp"  # a compiler that rejects -fopenmp: single-threaded kernels
    no_openmp.write_text('#!/bin/sh\nfor a in "$@"; do [ "$a" = -fopenmp ] && exit 1; done\nexec cc "$@"\n')
    no_openmp.chmod(0o755)
    cases = [({"FXSPARSE_NATIVE": "0"}, "off (FXSPARSE_NATIVE=0)"),
             ({"CC": "/bin/false", "FXSPARSE_CACHE": str(tmp_path / "a")}, "unavailable: /bin/false failed")]
    if native.available():  # a C compiler is here
        cases.append(({"CC": str(no_openmp), "FXSPARSE_CACHE": str(tmp_path / "b")}, "loaded"))
    for env, expected in cases:
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                              env={**os.environ, **env}, timeout=120)
        assert done.returncode == 0, done.stderr
        status, err = done.stdout.strip().rsplit("|", 1)
        assert status.strip().startswith(expected) and float(err) < 1e-5


@needs_native
@given(st.data())
def test_mask_footprint_is_max_pooling_of_the_zero_padded_mask(data):
    b, h, w = data.draw(st.integers(1, 2)), data.draw(st.integers(1, 20)), data.draw(st.integers(1, 20))
    kh, kw = data.draw(st.integers(1, 5)), data.draw(st.integers(1, 5))
    sh, sw = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 3))
    dh, dw = data.draw(st.integers(1, 2)), data.draw(st.integers(1, 2))
    pt, pl = data.draw(st.integers(0, dh * (kh - 1))), data.draw(st.integers(0, dw * (kw - 1)))
    ho, wo = (h + 2 * pt - dh * (kh - 1) - 1) // sh + 1, (w + 2 * pl - dw * (kw - 1) - 1) // sw + 1
    if ho < 1 or wo < 1:
        return
    g = torch.Generator().manual_seed(data.draw(st.integers(0, 2**16)))
    mask = (torch.rand(b, 1, h, w, generator=g) > data.draw(st.sampled_from([0.5, 0.95]))).float()
    expected = F.max_pool2d(F.pad(mask, (pl, pl, pt, pt)), (kh, kw), (sh, sw), 0, (dh, dw))
    oy0, ox0 = data.draw(st.integers(0, ho - 1)), data.draw(st.integers(0, wo - 1))
    box = (oy0, data.draw(st.integers(oy0 + 1, ho)), ox0, data.draw(st.integers(ox0 + 1, wo)))
    out = torch.full((b, 1, ho, wo), 7.0)
    counts = torch.full((b,), -1, dtype=torch.int64)
    assert native.window_max(mask, out, (kh, kw), (sh, sw), (pt, pl), (dh, dw), box, counts)
    y0, y1, x0, x1 = box
    assert torch.equal(out[:, :, y0:y1, x0:x1], expected[:, :, y0:y1, x0:x1])
    assert counts.tolist() == (expected[:, :, y0:y1, x0:x1] > 0).flatten(1).sum(1).tolist()
    out[:, :, y0:y1, x0:x1] = 7.0
    assert (out == 7.0).all()  # nothing outside the box


@needs_native
@pytest.mark.parametrize("kernel,stride", [(3, 2), (5, 1)])
def test_mask_footprint_of_a_large_box_on_both_cores(kernel, stride):
    """A box large enough that the footprint's rows are shared among the threads: the same mask and counts as
    max pooling."""
    g = torch.Generator().manual_seed(kernel)
    mask = (torch.rand(2, 1, 360, 640, generator=g) > 0.97).float()
    pad = kernel // 2
    expected = F.max_pool2d(F.pad(mask, (pad, pad, pad, pad)), kernel, stride)
    out, counts = torch.full_like(expected, 7.0), torch.zeros(2, dtype=torch.int64)
    box = (0, expected.shape[2], 0, expected.shape[3])
    assert native.window_max(mask, out, (kernel, kernel), (stride, stride), (pad, pad), (1, 1), box, counts)
    assert torch.equal(out, expected) and counts.tolist() == (expected > 0).flatten(1).sum(1).tolist()


@pytest.mark.parametrize("use_native", [True, False])
@given(st.data())
def test_footprint_into_a_stale_buffer_equals_a_fresh_one(use_native, data):
    """A footprint written into last frame's mask buffer (ones left in a stale box, zero elsewhere) equals the
    footprint in a zeroed buffer: the stale box is cleared in the same pass (natively) or before it, and the box
    and counts are the footprint's own."""
    from fxsparse.rules.masks import box_of, window_footprint

    if use_native and not native.available():
        return
    h, w = data.draw(st.integers(4, 24)), data.draw(st.integers(4, 24))
    k, s = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 2))
    ho, wo = (h + 2 * (k // 2) - k) // s + 1, (w + 2 * (k // 2) - k) // s + 1
    mask = torch.zeros(2, 1, h, w)
    y, x = data.draw(st.integers(0, h - 1)), data.draw(st.integers(0, w - 1))
    mask[data.draw(st.integers(0, 1)), 0, y : y + data.draw(st.integers(1, 5)), x : x + data.draw(st.integers(1, 5))] = 1
    stale_y, stale_x = data.draw(st.integers(0, ho - 1)), data.draw(st.integers(0, wo - 1))
    stale = (stale_y, data.draw(st.integers(stale_y + 1, ho)), stale_x, data.draw(st.integers(stale_x + 1, wo)))
    geometry = ((k, k), (s, s), (k // 2, k // 2), (1, 1))
    fresh, used = torch.zeros(2, 1, ho, wo), torch.zeros(2, 1, ho, wo)
    used[:, :, stale[0] : stale[1], stale[2] : stale[3]] = 1.0
    with mock.patch.object(native, "window_max", native.window_max if use_native else lambda *a: False):
        counts_fresh, counts_used = [], []
        box_fresh = window_footprint(mask, box_of(mask), fresh, *geometry, counts=counts_fresh)
        box_used = window_footprint(mask, box_of(mask), used, *geometry, counts=counts_used, stale=stale)
    assert torch.equal(used, fresh)
    assert box_used == box_fresh and counts_used == counts_fresh


@needs_native
@pytest.mark.parametrize("channels", [1, 3, 4])
@pytest.mark.parametrize("threshold", [0.0, 0.1])
def test_input_difference_is_pytorchs(channels, threshold):
    g = torch.Generator().manual_seed(channels)
    ref = torch.rand(2, channels, 70, 90, generator=g)  # more than one 4096-pixel chunk per stream
    x = ref.clone()
    x[0, :, 10:20, 30:50] += torch.rand(channels, 10, 20, generator=g) * 0.3
    x[1, -1, 60:, :7] -= 0.05
    diff = (x - ref).abs().amax(1, keepdim=True)
    mask, largest, counts, box = native.input_difference(x, ref, threshold)
    assert box == box_of(mask)
    assert torch.equal(mask, (diff > threshold).float()) and largest == float(diff.max())
    assert counts == mask.flatten(1).sum(1).int().tolist()
    assert native.input_difference(ref.clone(), ref, 0.0)[1] == 0.0
    for bad in (float("nan"), float("inf")):
        y = x.clone()
        y[1, 0, 69, 89] = bad  # the last pixel of the last stream
        assert float(native.input_difference(y, ref, threshold)[1]) != float(diff.max())
        assert not torch.isfinite(torch.tensor(native.input_difference(y, ref, threshold)[1]))
    assert native.input_difference(x.double(), ref.double(), 0.0) is None  # float32 only: PyTorch's path


@needs_native
@pytest.mark.parametrize("dtype", [torch.float32, torch.uint8])
def test_input_difference_box_spans_every_stream_and_rows_wider_than_a_piece(dtype):
    """The one-pass difference's box covers the changes of all streams, in rows processed in pieces of 4096
    pixels (the second piece's columns count from the row's start); no change: None."""
    ref = torch.zeros(3, 2, 5, 9000, dtype=dtype)
    assert native.input_difference(ref.clone(), ref, 0.0)[3] is None
    x = ref.clone()
    x[0, 1, 3, 8100] = 9  # in the third piece of row 3
    x[2, 0, 1, 4095:4097] = 9  # straddling the first two pieces of row 1
    mask, _, counts, box = native.input_difference(x, ref, 0.0)
    assert box == (1, 4, 4095, 8101) and counts == [1, 0, 2]
    rows, cols = mask.amax((0, 1, 3)).nonzero(), mask.amax((0, 1, 2)).nonzero()
    assert box == (int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1)


@needs_native
def test_frames_alternating_changed_and_unchanged_equal_dense():
    """A changed frame, then the same frame again (the one-pass difference finds nothing), then a bitwise
    repeat (tested with torch.equal first): each equals the dense model."""
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 3, padding=1)).eval()
    sm = fxsparse.transform(net)
    frames = moving_object_frames(1, 40, 48, 4)
    for x in [frames[0], frames[1], frames[1].clone(), frames[1], frames[2], frames[2]]:
        with torch.no_grad():
            expected = net(x)
        assert_close_scaled(sm(x), expected)
    assert sm.stats.macs_executed == 0  # the repeated frame changed nothing


@needs_native
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.uint8])
def test_reference_update_copies_the_masked_pixels_in_the_box_into_both_copies(dtype):
    g = torch.Generator().manual_seed(4)
    x = (torch.rand(2, 3, 20, 30, generator=g) * 255).to(dtype)
    ref = (torch.rand(2, 3, 20, 30, generator=g) * 255).to(dtype)
    rows = _rows(ref)
    mask = (torch.rand(2, 1, 20, 30, generator=g) < 0.3).float()
    box = (2, 17, 5, 26)
    inside = torch.zeros_like(mask, dtype=torch.bool)
    inside[:, :, 2:17, 5:26] = True
    expected = torch.where((mask > 0) & inside, x, ref)
    assert native.update_reference(x, ref, rows, mask, box)
    assert torch.equal(ref, expected) and torch.equal(rows, _rows(expected))
    assert not native.update_reference(x.transpose(2, 3), ref, rows, mask, box)  # not the reference's layout


@needs_native
@pytest.mark.parametrize("dtype", [torch.float32, torch.uint8])
def test_frames_equal_finds_one_changed_byte_anywhere(dtype):
    ref = (torch.rand(2, 3, 200, 300) * 255).to(dtype)  # 1.4 MB as float32: several chunks
    assert native.frames_equal(ref.clone(), ref)
    for at in (0, ref.numel() // 2, ref.numel() - 1):
        x = ref.clone()
        x.view(-1)[at] += 1
        assert native.frames_equal(x, ref) is False
    assert native.frames_equal(ref.t() if ref.dim() == 2 else ref.transpose(2, 3), ref) is None  # not the same layout
    neg_zero = torch.zeros(4) * -1.0  # -0.0 == 0.0, but not the same bits: exact mode recomputes
    assert dtype != torch.float32 or native.frames_equal(neg_zero, torch.zeros(4)) is False


@needs_native
@pytest.mark.parametrize("threshold", [0.0, 5.0])
def test_uint8_input_difference_is_max_minus_min(threshold):
    g = torch.Generator().manual_seed(4)
    ref = torch.randint(0, 256, (2, 3, 70, 90), generator=g, dtype=torch.uint8)
    x = ref.clone()
    x[0, :, 5:15, 5:25] = torch.randint(0, 256, (3, 10, 20), generator=g, dtype=torch.uint8)  # either direction
    x[1, 2, 60:, :7] = ref[1, 2, 60:, :7] // 2  # below the reference only: x - ref would wrap around
    diff = (torch.maximum(x, ref) - torch.minimum(x, ref)).amax(1, keepdim=True)
    mask, largest, counts, box = native.input_difference(x, ref, threshold)
    assert box == box_of(mask)
    assert torch.equal(mask, (diff > threshold).float()) and largest == float(diff.max())
    assert counts == mask.flatten(1).sum(1).int().tolist()
    assert native.input_difference(ref.clone(), ref, 0.0)[1] == 0.0


@needs_native
def test_counted_footprints_are_the_masks_counts():
    """The engine takes a window's per-stream counts from the native footprint (no sum over the mask):
    they must be the mask's own."""
    net = _Blocks().eval()
    sm = fxsparse.transform(net)
    for x in moving_object_frames(2, 64, 80, 4):
        sm(x)
        engine = sm._engine
        for step in engine.steps:
            mask = engine.masks.get(step.node)
            if isinstance(mask, torch.Tensor) and mask.dim() == 4 and step.node in engine._counts:
                assert engine._counts[step.node] == mask.flatten(1).sum(1).int().tolist(), step.name


def _clean_both(mask, open_radius, min_area, dilate):
    from fxsparse.input_policy import InputPolicy

    expected = InputPolicy(open=open_radius, min_area=min_area, dilate=dilate).apply_torch(mask)
    got, counts, box = native.clean_mask(mask, open_radius, min_area, dilate)
    rows, cols = expected.amax((0, 1, 3)).nonzero(), expected.amax((0, 1, 2)).nonzero()
    assert box == (None if len(rows) == 0 else (int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1))
    return got, counts, expected


@needs_native
@given(st.data())
def test_native_clean_up_is_the_pytorch_and_scipy_clean_up(data):
    """Note [Native mask clean-up]: opening, minimum blob area (8-connected) and dilation equal the PyTorch /
    scipy path bit for bit, on masks from empty to full, with radii larger than the frame; counts are the
    cleaned mask's."""
    b, h, w = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 40)), data.draw(st.integers(1, 40))
    density = data.draw(st.sampled_from([0.0, 0.05, 0.3, 0.7, 1.0]))
    g = torch.Generator().manual_seed(data.draw(st.integers(0, 2**16)))
    mask = (torch.rand(b, 1, h, w, generator=g) < density).float()
    for _ in range(data.draw(st.integers(0, 3))):  # blobs among the specks
        s, y, x = data.draw(st.integers(0, b - 1)), data.draw(st.integers(0, h - 1)), data.draw(st.integers(0, w - 1))
        mask[s, 0, y : y + data.draw(st.integers(1, 12)), x : x + data.draw(st.integers(1, 12))] = 1
    open_radius, dilate = data.draw(st.integers(0, 3)), data.draw(st.integers(0, 3))
    min_area = data.draw(st.sampled_from([0, 1, 2, 5, 30, 10_000]))
    got, counts, expected = _clean_both(mask, open_radius, min_area, dilate)
    assert torch.equal(got, expected)
    assert counts == expected.flatten(1).sum(1).int().tolist()


@needs_native
def test_native_blob_sizes_join_runs_at_corners_and_across_many_runs():
    """Blobs whose rows meet only diagonally are one blob (8-connectivity); a checkerboard (the most runs a
    mask can have) is one blob; a U shape joins two runs late (the older run must stay the root)."""
    mask = torch.zeros(2, 1, 24, 30)
    for i in range(6):  # a diagonal line of 6 single pixels: one blob of 6
        mask[0, 0, 2 + i, 3 + i] = 1
    mask[0, 0, 15:20, 5] = mask[0, 0, 15:20, 9] = 1  # a U: two arms joined by the bottom row
    mask[0, 0, 20, 5:10] = 1
    mask[1] = (torch.arange(24)[:, None] + torch.arange(30)[None, :]) % 2 == 0  # checkerboard
    for min_area in (6, 7, 15, 16, 360, 361):
        got, counts, expected = _clean_both(mask, 0, min_area, 0)
        assert torch.equal(got, expected), min_area
    assert _clean_both(mask, 0, 6, 0)[0][0, 0, 2:8].sum() == 6  # the diagonal is kept whole at 6
    assert _clean_both(mask, 0, 361, 0)[1][1] == 0 and _clean_both(mask, 0, 360, 0)[1][1] == 360


@needs_native
def test_input_policy_cleans_natively_with_counts_and_stays_exact():
    """With the policy the engine takes the cleaned mask's counts from the kernel, and every frame's output is
    the same as with the PyTorch / scipy clean-up (whose outputs test_thresholds.py checks against dense)."""
    from fxsparse.input_policy import InputPolicy

    net = _Blocks().eval()
    frames = moving_object_frames(2, 64, 80, 5)
    outs = {}
    for use_native in (True, False):
        sm = fxsparse.transform(net, input_threshold=0.05, input_open=1, input_min_area=8, input_dilate=1)
        with mock.patch.object(native, "clean_mask", native.clean_mask if use_native else lambda *a: None):
            outs[use_native] = [sm(x) for x in frames]
            assert (sm._engine.input_counts is not None) == use_native  # the last frame has changes
        with torch.no_grad():
            assert torch.equal(outs[use_native][-1], sm(frames[-1]))  # unchanged: same output
    for a, b in zip(outs[True], outs[False]):
        assert torch.equal(a, b)
    assert InputPolicy(open=1).clean(torch.zeros(1, 1, 4, 4))[1] == [0]


@needs_native
@given(st.data())
def test_native_mask_box_is_the_bounding_box_of_every_streams_changes(data):
    """Note [Native mask box]: the box over every stream equals the one from PyTorch's reductions (empty: None)."""
    b, h, w = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 30)), data.draw(st.integers(1, 30))
    g = torch.Generator().manual_seed(data.draw(st.integers(0, 2**16)))
    mask = (torch.rand(b, 1, h, w, generator=g) < data.draw(st.sampled_from([0.0, 0.002, 0.05, 1.0]))).float()
    rows, cols = mask.amax((0, 1, 3)).nonzero(), mask.amax((0, 1, 2)).nonzero()
    expected = None if len(rows) == 0 else (int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1)
    assert native.mask_box(mask) == expected
    assert native.mask_box(mask.bool()) is False  # not a float mask: the caller's PyTorch path


@needs_native
@given(st.data())
def test_native_bilinear_upsample_equals_interpolate(data):
    """ops.interpolate_into's bilinear float32 path (native): F.interpolate's values to float rounding, sized by
    output size or scale factor (with and without recompute), align_corners either way, for NCHW, channels-last
    and strided inputs, shrinking as well as growing."""
    b, c = data.draw(st.integers(1, 2)), data.draw(st.integers(1, 4))
    hi, wi = data.draw(st.integers(1, 12)), data.draw(st.integers(1, 12))
    g = torch.Generator().manual_seed(data.draw(st.integers(0, 2**16)))
    x = torch.randn(b, c, hi, wi + 3, generator=g)
    layout = data.draw(st.sampled_from(["nchw", "channels_last", "strided"]))
    x = x[..., :wi] if layout == "strided" else x[..., :wi].contiguous()
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    align = data.draw(st.sampled_from([False, True, None]))
    if data.draw(st.booleans()):
        size, scale, recompute = (data.draw(st.integers(1, 40)), data.draw(st.integers(1, 40))), None, None
    else:
        size = None
        scale = (data.draw(st.floats(0.5, 4.0)), data.draw(st.floats(0.5, 4.0)))
        if int(hi * scale[0]) < 1 or int(wi * scale[1]) < 1:
            scale = (2.0, 2.0)  # F.interpolate refuses an empty output
        recompute = data.draw(st.sampled_from([None, True]))
    expected = F.interpolate(x, size=size, scale_factor=scale, mode="bilinear", align_corners=align,
                             recompute_scale_factor=recompute)
    out = torch.full(expected.shape, float("nan"))
    assert ops.interpolate_into(out, x, size, scale, "bilinear", align, recompute)
    torch.testing.assert_close(out, expected, rtol=0, atol=4e-7 * max(1.0, float(x.abs().max())))


@needs_native
def test_native_bilinear_upsample_declines_what_it_cannot_run():
    x, out = torch.randn(1, 2, 4, 4), torch.empty(1, 2, 8, 8)
    assert native.upsample_bilinear(x, out, False, (None, None))
    assert not native.upsample_bilinear(x.double(), out, False, (None, None))
    assert not native.upsample_bilinear(x, out.double(), False, (None, None))
    assert not native.upsample_bilinear(x, torch.empty(1, 2, 8, 16)[..., ::2], False, (None, None))  # strided out
    assert not native.upsample_bilinear(x, torch.empty(1, 3, 8, 8), False, (None, None))  # channels differ
    assert not native.upsample_bilinear(x[:, :, :0], torch.empty(1, 2, 0, 8), False, (None, None))  # empty
