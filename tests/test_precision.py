"""transform(dtype=torch.bfloat16): compute in bfloat16 for float32 callers, and the shape buckets
that keep oneDNN from compiling a kernel per frame (fxsparse/kernels/buckets.py)."""

import pytest
import torch
from torch import nn

import fxsparse
from conftest import moving_object_frames
from fxsparse.kernels.buckets import bucket, needs_buckets, pad_index

BF16_REL = 3e-2  # a few bfloat16 roundings (eps 2^-8) through a small net, relative to max |output|


def _rel_err(a, b):
    return float((a.float() - b.float()).abs().max() / b.float().abs().max())


def _net():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 16, 3, stride=2, padding=1, groups=16), nn.ReLU(),  # depthwise: taps lowering
        nn.Conv2d(16, 32, 1), nn.ReLU(),  # 1x1: gemm with identity taps
        nn.Conv2d(32, 8, 3, padding=2, dilation=2),
    ).eval()


def test_bucket_sizes_are_few_and_tight():
    sizes = [bucket(n) for n in range(1, 5000)]
    assert all(s >= n for n, s in zip(range(1, 5000), sizes))
    assert all(s <= max(16, 1.19 * n + 8) for n, s in zip(range(1, 5000), sizes))
    assert sizes == sorted(sizes)
    assert len(set(sizes)) <= 40  # a handful of shapes per octave, so oneDNN's cache keeps them all


def test_pad_index_repeats_a_real_row():
    idx = torch.tensor([[5, 6], [7, 8], [9, 1]])
    padded = pad_index(idx, 5)
    assert padded.tolist() == [[5, 6], [7, 8], [9, 1], [5, 6], [5, 6]]
    assert pad_index(idx, 2) is idx and pad_index(idx[:0], 4).shape[0] == 0


def test_only_jit_compiled_dtypes_are_padded():
    assert needs_buckets(torch.bfloat16) and not needs_buckets(torch.float32)


@pytest.mark.parametrize("dense_switch", [0.5, 2.0])  # 2.0: never dense, every changed row runs a gemm / taps
def test_bfloat16_stream_tracks_the_float32_model(dense_switch):
    net = _net()
    sm = fxsparse.transform(net, dtype=torch.bfloat16, dense_switch=dense_switch)
    frames = moving_object_frames(2, 40, 48, 6)
    for i, x in enumerate(frames):
        y = sm(x)
        assert y.dtype == torch.float32 and y.is_contiguous()
        with torch.no_grad():
            assert _rel_err(y, net(x)) < BF16_REL, f"frame {i}"
        if i:
            assert 0 < sm.stats.macs_executed < sm.stats.macs_dense  # the sparse path ran
    # the streamed result equals a fresh bfloat16 module's dense first frame on the last frame,
    # up to bfloat16 rounding: a wrong row or a stale cache would be off by O(1)
    fresh = fxsparse.transform(net, dtype=torch.bfloat16)(frames[-1])
    assert _rel_err(y, fresh) < BF16_REL
    again = sm(frames[-1])  # unchanged frame: the frozen output, still float32
    assert again.dtype == torch.float32 and torch.equal(again, y) and sm.stats.macs_executed == 0


def test_bfloat16_caches_and_weights():
    sm = fxsparse.transform(_net(), dtype=torch.bfloat16)
    sm(torch.rand(1, 3, 16, 16))
    caches = [v for v in sm._engine.values.values() if hasattr(v, "buf")]
    assert caches and all(c.buf.dtype == torch.bfloat16 for c in caches)
    assert {p.dtype for p in sm.graph_module.buffers()} == {torch.bfloat16}


def test_bfloat16_frames_accepted_as_is():
    sm = fxsparse.transform(_net(), dtype=torch.bfloat16)
    y = sm(torch.rand(1, 3, 16, 16, dtype=torch.bfloat16))
    assert y.dtype == torch.bfloat16


def test_dtype_errors():
    with pytest.raises(ValueError, match="floating-point"):
        fxsparse.transform(_net(), dtype=torch.int8)
    sm = fxsparse.transform(_net(), dtype=torch.bfloat16)
    with pytest.raises(fxsparse.InputTypeError, match="float32"):
        sm(torch.rand(1, 3, 16, 16, dtype=torch.float64))


def test_bfloat16_with_input_threshold_and_mask_clean_up():
    """The clean-up's blob filter runs in numpy, which has no bfloat16 (found on CDnet highway)."""
    pytest.importorskip("scipy")
    net = _net()
    sm = fxsparse.transform(net, dtype=torch.bfloat16, input_threshold=0.05, input_open=1, input_min_area=4,
                            input_dilate=1)
    for x in moving_object_frames(1, 40, 48, 4):
        y = sm(x)
        assert y.dtype == torch.float32 and bool(torch.isfinite(y).all())
    assert 0 < sm.stats.macs_executed < sm.stats.macs_dense


def test_warns_when_the_cpu_has_no_native_bfloat16(monkeypatch):
    import importlib

    transform_module = importlib.import_module("fxsparse.transform")  # the attribute is the function
    monkeypatch.setattr(transform_module, "_native_bfloat16", lambda: False)
    with pytest.warns(RuntimeWarning, match="emulated"):
        fxsparse.transform(_net(), dtype=torch.bfloat16)


def test_bfloat16_segmenter_head_with_sparse_and_direct_upsampling():
    """A bilinear upsample in bfloat16: its float32 tap weights must not leak into the bfloat16 cache (a
    small change runs its gathered taps; a change everywhere runs it straight into the output)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 6, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(6, 4, 3, stride=2, padding=1),
                        nn.Upsample(scale_factor=4, mode="bilinear", align_corners=False)).eval()
    sm = fxsparse.transform(net, dtype=torch.bfloat16)
    x = torch.rand(1, 3, 32, 40)
    every_4th_row = x.clone()
    every_4th_row[:, :, ::4] += 1.0
    small = every_4th_row.clone()
    small[:, :, 20:23, 30:33] += 1.0
    for f in (x, small, every_4th_row, small):
        out = sm(f)
        with torch.no_grad():
            assert out.dtype == torch.float32 and _rel_err(out, net(f)) < BF16_REL
