"""Note [Direct outputs]: a model output that feeds nothing else and is upsampled from a small input is
computed straight into its NCHW mirror when it changes everywhere; its rows are rebuilt from the mirror
before a later frame updates part of it. Every frame still equals the dense model."""

import torch
import torch.nn.functional as F
from torch import nn

import fxsparse
from conftest import assert_close_scaled


class _Segmenter(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 6, 3, stride=2, padding=1)
        self.b = nn.Conv2d(6, 4, 3, stride=2, padding=1)

    def forward(self, x):
        y = self.b(torch.relu(self.a(x)))
        return F.interpolate(y, scale_factor=4, mode="bilinear", align_corners=False)


def _blob(x, y0, x0):
    x = x.clone()
    x[:, :, y0 : y0 + 3, x0 : x0 + 3] += 1.0
    return x


def test_direct_output_frames_and_the_partial_frames_after_them_equal_dense():
    torch.manual_seed(0)
    net = _Segmenter().eval()
    sm = fxsparse.transform(net)
    x = torch.rand(1, 3, 32, 40)
    rows_every_4 = x.clone()
    rows_every_4[:, :, ::4] += 1.0  # 25% of the pixels: a sparse frame whose cone is the whole output
    frames = [x, _blob(x, 4, 4), rows_every_4, _blob(rows_every_4, 20, 30), torch.rand(1, 3, 32, 40),
              None, None]
    frames[5] = frames[4]  # unchanged
    frames[6] = _blob(frames[4], 10, 2)
    seen = []
    for f in frames:
        with torch.no_grad():
            expected = net(f.clone())
        assert_close_scaled(sm(f), expected)
        engine = sm._engine
        (node,) = engine._direct
        seen.append((sm.stats.dense, node in engine._stale_rows))
    # the first frame (rows, like every cache), partial (rows), direct in a sparse frame, partial again (rows rebuilt
    # from the mirror first), dense frame (direct), unchanged (mirror kept), partial
    assert seen == [(True, False), (False, False), (False, True), (False, False), (True, True), (False, True),
                    (False, False)]


def test_an_output_that_feeds_on_a_large_input_is_not_direct():
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1)).eval()
    sm = fxsparse.transform(net)
    sm(torch.rand(1, 3, 16, 16))
    assert not sm._engine._direct


def test_a_direct_output_keeps_its_lowering_when_it_runs_the_rule():
    """With the dense switch off a direct output runs its own rule: its lowering must be untouched (a
    coverage label once overwrote it; found by the property test on a conv over a 1x1 resize)."""
    torch.manual_seed(0)

    class Head(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 2, 2, padding=2, bias=False)

        def forward(self, x):
            return self.conv(F.interpolate(x, size=(1, 1), mode="nearest"))

    net = Head().eval()
    sm = fxsparse.transform(net, dense_switch=2.0)
    x = torch.rand(1, 3, 4, 4)
    for f in (x, x + 0.5):
        with torch.no_grad():
            expected = net(f.clone())
        assert_close_scaled(sm(f), expected)
    assert sm._engine._direct
    assert "straight to the output" in str(sm.coverage())


def test_interpolate_into_writes_what_interpolate_returns(monkeypatch):
    """ops.interpolate_into on aten's kernels must give F.interpolate's values bit for bit, for every way of
    sizing (the native bilinear kernel, to float rounding: tests/test_native_kernels.py)."""
    from fxsparse import ops
    from fxsparse.kernels import native

    monkeypatch.setattr(native, "upsample_bilinear", lambda *args: False)
    torch.manual_seed(0)
    x = torch.randn(2, 5, 9, 12)
    for mode, align in (("bilinear", False), ("bilinear", True), ("bilinear", None), ("nearest", None)):
        for size, scale, recompute in (((36, 50), None, None), (None, 4, None), (None, 2.7, None), (None, 2.7, True),
                                       (None, (1.5, 3.1), False)):
            expected = F.interpolate(x, size=size, scale_factor=scale, mode=mode, align_corners=align,
                                     recompute_scale_factor=recompute)
            out = torch.full(expected.shape, float("nan"))
            assert ops.interpolate_into(out, x, size, scale, mode, align, recompute)
            assert torch.equal(out, expected), (mode, align, size, scale, recompute)
    assert not ops.interpolate_into(torch.empty(2, 5, 18, 24), x, None, 2, "bicubic", False, None)


def test_dense_frames_write_a_direct_output_into_the_same_mirror():
    """A fully changed frame recomputes the segmentation map in its existing mirror (a fresh map costs
    page faults on every frame), and the caller's copy is still the dense model's answer."""
    torch.manual_seed(0)
    net = _Segmenter().eval()
    sm = fxsparse.transform(net)
    frames = [torch.rand(1, 3, 32, 40) for _ in range(4)]
    pointers = []
    for f in frames:
        with torch.no_grad():
            expected = net(f.clone())
        out = sm(f)
        assert_close_scaled(out, expected)
        (node,) = sm._engine._direct
        mirror = sm._engine._mirrors[node]
        assert out.data_ptr() != mirror.data_ptr()  # the caller owns a copy
        pointers.append(mirror.data_ptr())
    assert sm.stats.dense and len(set(pointers)) == 1


def test_copy_outputs_false_hands_out_the_output_buffers_read_only():
    """transform(copy_outputs=False): no per-frame copy of the map; the buffer is the module's own, valid until
    the next call. (It is an inference tensor, but torch's in-place check raises only after the kernel has
    written: callers must not modify it, which the docs say.)"""
    torch.manual_seed(0)
    net = _Segmenter().eval()
    sm = fxsparse.transform(net, copy_outputs=False)
    x = torch.rand(1, 3, 32, 40)
    pointers = []
    for f in (x, _blob(x, 4, 4), _blob(x, 20, 30), torch.rand(1, 3, 32, 40)):
        out = sm(f)
        with torch.no_grad():
            assert_close_scaled(out, net(f.clone()))
        pointers.append(out.data_ptr())
        assert out.argmax(1).shape == (1, 32, 40)  # functional use works as on any tensor
    assert len(set(pointers)) == 1  # the same buffer, updated in place
    assert fxsparse.transform(net)(x).data_ptr() != sm(x).data_ptr()
