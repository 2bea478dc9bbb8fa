"""Patch-and-replace mode: pasted regions equal the model on the same crops; the rest keeps its old output."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fxsparse
from fxsparse.patch import components, merge_boxes


class FullRes(nn.Module):
    """A per-pixel model with output at input resolution (stride-2 inside, upsampled back)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.enc = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.Conv2d(8, 8, 3, 1, 1), nn.ReLU())
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        y = self.head(self.enc(x))
        return {"out": F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)}


class Valid(nn.Module):
    """PNet-like: valid convs and a stride-2 pool; two output maps at about 1/2 resolution."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.c1, self.c2 = nn.Conv2d(3, 6, 3), nn.Conv2d(6, 6, 3)
        self.a, self.b = nn.Conv2d(6, 2, 1), nn.Conv2d(6, 4, 1)

    def forward(self, x):
        x = F.relu(self.c2(F.max_pool2d(F.relu(self.c1(x)), 2, 2, ceil_mode=True)))
        return self.b(x), torch.softmax(self.a(x), 1)


class Untraceable(nn.Module):
    """Data-dependent control flow: torch.fx cannot trace this; patch mode does not need to."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(2)
        self.conv = nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x):
        y = self.conv(x)
        if float(y.mean()) > 0:
            return torch.tanh(y)
        return torch.sigmoid(y)


def _leaves(y):
    return [y] if isinstance(y, torch.Tensor) else list(y.values()) if isinstance(y, dict) else list(y)


def _check_pasted_equals_crops(runner, model, x, before, after):
    """Inside each inner box: the model's output on the crop; elsewhere: the previous output."""
    stride = runner._stride
    for s, regions in enumerate(runner.stats.regions):
        untouched = [torch.ones(t.shape[-2:], dtype=torch.bool) for t in _leaves(after)]
        for inner, crop in regions:
            with torch.no_grad():
                res = _leaves(model(x[s : s + 1, :, crop[0] : crop[1], crop[2] : crop[3]].clone()))
            for k, (a, r) in enumerate(zip(_leaves(after), res)):
                oy, ox = crop[0] // stride, crop[2] // stride
                gy0, gx0 = -(-inner[0] // stride), -(-inner[2] // stride)
                gy1 = min(-(-inner[1] // stride), a.shape[-2], oy + r.shape[-2])
                gx1 = min(-(-inner[3] // stride), a.shape[-1], ox + r.shape[-1])
                got = a[s, :, gy0:gy1, gx0:gx1]
                want = r[0, :, gy0 - oy : gy1 - oy, gx0 - ox : gx1 - ox]
                assert torch.allclose(got, want, atol=1e-6), (s, inner, crop)
                untouched[k][gy0:gy1, gx0:gx1] = False
        for k, (a, b) in enumerate(zip(_leaves(after), _leaves(before))):
            assert torch.equal(a[s][:, untouched[k]], b[s][:, untouched[k]]), "an unchanged region was modified"


@pytest.mark.parametrize("make", [FullRes, Valid, Untraceable], ids=["full-res", "valid-convs", "untraceable"])
def test_pasted_regions_equal_model_on_crops(make):
    model = make().eval()
    runner = fxsparse.PatchRunner(model, margin=8, dilate=1)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 3, 96, 128, generator=g)
    before = runner(x)
    for step in range(3):
        x = x.clone()
        x[0, :, 10 + step : 20 + step, 30:44] = torch.rand(3, 10, 14, generator=g)  # stream 0: one object
        x[2, :, 60:70, 5:12] = torch.rand(3, 10, 7, generator=g)  # stream 2: another; stream 1 unchanged
        x[2, :, 80:90, 100:120] = torch.rand(3, 10, 20, generator=g)
        after = runner(x)
        assert runner.stats.regions[1] == [] and runner.stats.crops >= 2
        assert 0 < runner.stats.processed_fraction < 1
        _check_pasted_equals_crops(runner, model, x, before, after)
        before = after


def test_unchanged_frame_runs_nothing_and_returns_previous_output():
    model = FullRes().eval()
    runner = fxsparse.PatchRunner(model)
    x = torch.rand(1, 3, 64, 64)
    y0 = runner(x)
    y1 = runner(x.clone())
    assert runner.stats.crops == 0 and runner.stats.pixels_processed == 0
    assert torch.equal(y0["out"], y1["out"])


def test_refresh_every_runs_dense():
    model = FullRes().eval()
    runner = fxsparse.PatchRunner(model, refresh_every=2)
    x = torch.rand(2, 3, 64, 64)
    runner(x)  # frame 0: dense
    runner(x)  # frame 1
    assert runner.stats.dense_streams == []
    runner(x)  # frame 2: refresh
    assert runner.stats.dense_streams == [0, 1]
    with torch.no_grad():
        assert torch.allclose(runner(x)["out"], model(x)["out"])


def test_large_change_runs_stream_dense_and_matches_model():
    model = FullRes().eval()
    runner = fxsparse.PatchRunner(model)
    runner(torch.rand(2, 3, 64, 64))
    x = torch.rand(2, 3, 64, 64)
    out = runner(x)
    assert runner.stats.dense_streams == [0, 1]
    with torch.no_grad():
        assert torch.allclose(out["out"], model(x)["out"])


def test_min_area_drops_small_changes_and_threshold_ignores_noise():
    model = FullRes().eval()
    runner = fxsparse.PatchRunner(model, min_area=10, threshold=0.05)
    x = torch.rand(1, 3, 128, 128)
    runner(x)
    x2 = x.clone()
    x2[0, :, 5, 5] += 0.5  # one pixel: below min_area
    x2 += 0.01  # noise below the threshold
    runner(x2)
    assert runner.stats.crops == 0
    x3 = x2.clone()
    x3[0, :, 30:40, 30:40] = 1.0
    runner(x3)
    assert runner.stats.crops == 1


def test_blend_feathers_seams():
    model = FullRes().eval()
    hard, soft = fxsparse.PatchRunner(model, margin=4), fxsparse.PatchRunner(model, margin=4, blend=3)
    x = torch.rand(1, 3, 64, 64)
    hard(x), soft(x)
    x2 = x.clone()
    x2[0, :, 20:30, 20:30] = 1.0
    a, b = hard(x2)["out"], soft(x2)["out"]
    inner = hard.stats.regions[0][0][0]
    assert not torch.equal(a, b)
    cy, cx = (inner[0] + inner[1]) // 2, (inner[2] + inner[3]) // 2
    assert torch.allclose(a[..., cy, cx], b[..., cy, cx])  # the middle is fully the new result


def test_bad_input_keeps_state():
    runner = fxsparse.PatchRunner(FullRes().eval())
    x = torch.rand(1, 3, 32, 32)
    y = runner(x)
    with pytest.raises(fxsparse.InputError, match="reset"):
        runner(torch.rand(1, 3, 40, 32))
    with pytest.raises(fxsparse.InputTypeError):
        runner(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(fxsparse.InputError, match="NaN"):
        runner(torch.full((1, 3, 32, 32), float("nan")))
    assert torch.equal(runner(x)["out"], y["out"])


def test_classifier_output_is_refused_with_a_hint():
    runner = fxsparse.PatchRunner(nn.Sequential(nn.Conv2d(3, 2, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten()))
    with pytest.raises(fxsparse.FxSparseError, match="transform"):
        runner(torch.rand(1, 3, 16, 16))


def test_components_and_merging():
    grid = torch.zeros(6, 6, dtype=torch.bool).numpy()
    grid[0, 0] = grid[1, 1] = True  # diagonal: one 8-connected component
    grid[4, 4] = True
    assert sorted(len(c) for c in components(grid)) == [1, 2]
    crop = lambda b: (max(0, b[0] - 2), b[1] + 2, max(0, b[2] - 2), b[3] + 2)
    merged = merge_boxes([(0, 4, 0, 4), (5, 8, 5, 8), (40, 44, 40, 44)], crop)
    assert len(merged) == 2  # the first two overlap once widened; the third stays apart


def test_outputs_are_ordinary_tensors():
    runner = fxsparse.PatchRunner(FullRes().eval())
    x = torch.rand(1, 3, 32, 32)
    runner(x)
    out = runner(x)["out"]
    assert not out.is_inference()
    out.add_(1.0)  # allowed outside inference mode
