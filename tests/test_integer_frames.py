"""Note [Integer frames]: uint8 frames fed straight to a model that converts them itself. Every output equals the
dense model's on the same uint8 frames; the change test, the threshold and the errors work in pixel units."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import fxsparse
from conftest import assert_close_scaled
from fxsparse import ops
from fxsparse.pixels import PixelNormalize, to_pixels
from netgen import RandomNet, layer_specs


def _net(head="plain"):
    torch.manual_seed(0)
    body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2, padding=1),
                         nn.ReLU(), nn.Conv2d(8, 4, 1))
    return nn.Sequential(PixelNormalize(), body).eval()


def _clip(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (1, 3, 24, 32), dtype=torch.uint8, generator=g)
    frames = [x]
    for i in range(1, n):
        f = frames[-1].clone()
        f[:, :, 2 + 3 * i : 6 + 3 * i, 4 : 9] = torch.randint(0, 256, (1, 3, 4, 5), dtype=torch.uint8, generator=g)
        frames.append(f)
    frames.append(frames[-1].clone())  # unchanged
    frames.append(torch.randint(0, 256, (1, 3, 24, 32), dtype=torch.uint8, generator=g))  # a new scene: dense frame
    frames.append(frames[-1].clone())
    frames[-1][:, :, 20:, 30:] = 0  # a corner after the dense frame
    return frames


def test_uint8_frames_equal_the_dense_model_every_frame():
    net = _net()
    sm = fxsparse.transform(net)
    seen = []
    for f in _clip():
        with torch.no_grad():
            expected = net(f)
        out = sm(f)
        assert out.dtype == torch.float32
        assert_close_scaled(out, expected)
        seen.append("dense" if sm.stats.dense else f"{sm.stats.changed_fraction[0]:.3f}")
    assert seen[0] == "dense" and seen[-3] == "0.000" and seen[-2] == "dense"
    assert 0 < float(seen[1]) < 0.1


def test_every_spelling_of_the_conversion_runs_sparsely():
    class Convert(nn.Module):
        def __init__(self, how):
            super().__init__()
            self.how = how

        def forward(self, x):
            if self.how == "float":
                return x.float() / 255
            if self.how == "to":
                return x.to(torch.float32) / 255
            if self.how == "to_kw":
                return x.to(dtype=torch.float32) / 255
            return x.type(torch.float32) / 255

    for how in ("float", "to", "to_kw", "type"):
        net = nn.Sequential(Convert(how), nn.Conv2d(3, 4, 3, padding=1)).eval()
        sm = fxsparse.transform(net)
        frames = _clip(3)
        for f in frames:
            with torch.no_grad():
                assert_close_scaled(sm(f), net(f), how)
        casts = [n for n in sm.graph_module.graph.nodes if n.target is ops.cast]
        assert len(casts) == 1 and "fall back" not in str(sm.coverage()).split("nodes run sparsely")[0], how
        assert sm.coverage().entries[1].rule == "cast", how


def test_a_change_wraps_no_uint8_difference():
    """|x - ref| of uint8 pixels is computed as max - min: 3 - 250 must be a change of 247, not 9."""
    net = _net()
    sm = fxsparse.transform(net, input_threshold=100)
    x = torch.full((1, 3, 16, 16), 250, dtype=torch.uint8)
    sm(x)
    y = x.clone()
    y[:, :, 5, 5] = 3
    sm(y)
    assert sm.stats.changed_fraction[0] == pytest.approx(1 / 256)


def test_the_input_threshold_is_in_pixel_units():
    net = _net()
    sm = fxsparse.transform(net, input_threshold=4)
    x = torch.full((1, 3, 16, 16), 100, dtype=torch.uint8)
    sm(x)
    small = x.clone()
    small[:, 1, 3:5, 3:5] += 4  # not above the threshold
    sm(small)
    assert sm.stats.changed_fraction[0] == 0.0
    big = small.clone()
    big[:, 0, 8, 8] += 5
    out = sm(big)
    assert sm.stats.changed_fraction[0] == pytest.approx(1 / 256)
    reference = x.clone()
    reference[:, 0, 8, 8] += 5  # the held frame: the small change was never taken
    with torch.no_grad():
        assert_close_scaled(out, net(reference))


def test_integer_frames_need_a_model_that_converts_them():
    net = nn.Sequential(nn.Conv2d(3, 4, 3)).eval()
    sm = fxsparse.transform(net)
    with pytest.raises(fxsparse.InputTypeError, match="PixelNormalize"):
        sm(torch.zeros(1, 3, 8, 8, dtype=torch.uint8))
    assert sm._engine is None


def test_switching_between_integer_and_float_frames_is_refused_without_a_reset():
    net = _net()
    sm = fxsparse.transform(net)
    f = _clip(2)[0]
    sm(f)
    with pytest.raises(fxsparse.InputTypeError, match="reset"):
        sm(f.float())
    with pytest.raises(fxsparse.InputTypeError, match="reset"):
        sm(f.to(torch.int16))
    sm.reset()
    with pytest.raises(fxsparse.InputTypeError, match="floating-point or integer"):
        sm(torch.zeros(1, 3, 8, 8, dtype=torch.bool))


def test_bfloat16_compute_takes_uint8_frames():
    net = _net()
    sm = fxsparse.transform(net, dtype=torch.bfloat16)
    for f in _clip(4):
        out = sm(f)
        assert out.dtype == torch.float32
        with torch.no_grad():
            torch.testing.assert_close(out, net(f), rtol=0.05, atol=0.05)


def test_streams_of_uint8_frames_keep_their_own_reference():
    net = _net()
    sm = fxsparse.transform(net)
    a, b = _clip(5, seed=1), _clip(5, seed=2)
    for fa, fb in zip(a, b):
        x = torch.cat([fa, fb])
        with torch.no_grad():
            assert_close_scaled(sm(x), net(x))


@given(st.data())
def test_random_networks_on_uint8_frames_match_dense(data):
    h = data.draw(st.integers(3, 20), label="height")
    w = data.draw(st.integers(3, 20), label="width")
    specs, *_ = data.draw(layer_specs(3, h, w, data.draw(st.integers(1, 5), label="depth")), label="specs")
    torch.manual_seed(data.draw(st.integers(0, 2**16), label="seed"))
    net = nn.Sequential(PixelNormalize(), RandomNet(specs, 3, "plain")).eval()
    sm = fxsparse.transform(net, dense_switch=data.draw(st.sampled_from([0.6, 2.0]), label="dense_switch"))
    x = to_pixels(torch.rand(1, 3, h, w))
    for frame in range(4):
        if frame:
            x = x.clone()
            y0, x0 = data.draw(st.integers(0, h - 1)), data.draw(st.integers(0, w - 1))
            x[:, :, y0 : y0 + 2, x0 : x0 + 3] = to_pixels(torch.rand(1, 3, 1, 1))
        with torch.no_grad():
            expected = net(x)
        assert_close_scaled(sm(x), expected, f"frame {frame}")


def test_pixel_normalize_is_the_textbook_normalization():
    x = torch.randint(0, 256, (2, 3, 5, 7), dtype=torch.uint8)
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
    expected = (x.double() / 255 - torch.tensor(mean, dtype=torch.float64).view(1, 3, 1, 1)) / torch.tensor(
        std, dtype=torch.float64).view(1, 3, 1, 1)
    torch.testing.assert_close(PixelNormalize(mean, std)(x).double(), expected, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="one value per channel"):
        PixelNormalize((0.5,), (0.2, 0.3))
