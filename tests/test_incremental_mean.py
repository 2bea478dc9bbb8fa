"""Note [Incremental mean]: the global mean is updated from the changed positions when that is cheaper than
summing afresh, and summed afresh otherwise; both give the dense model's mean."""

import torch
from torch import nn

import fxsparse
from conftest import assert_close_scaled, moving_object_frames
from fxsparse.rules import global_


class PooledHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).mean((2, 3)))


def test_the_cost_model_sums_small_maps_afresh_and_updates_large_maps_with_few_changes():
    assert not global_.incremental_pays([int(0.4 * 18 * 24)], 18 * 24, 1280)  # MobileNetV2's last pool, 40%
    assert not global_.incremental_pays([4], 18 * 24, 1280)  # a small map: the fixed cost alone loses
    assert global_.incremental_pays([int(0.01 * 144 * 192)], 144 * 192, 72)  # a large map, 1%
    assert not global_.incremental_pays([int(0.2 * 144 * 192)], 144 * 192, 72)
    assert not global_.incremental_pays([0, 0], 144 * 192, 72)


def test_incremental_updates_equal_dense_over_many_frames(monkeypatch):
    """Force the incremental path on a small net (it would sum afresh) and check every frame, long enough for
    float32 drift to show if the sums were not float64."""
    calls = []
    real = global_._stream_sums

    def counting(*args):
        calls.append(1)
        return real(*args)

    monkeypatch.setattr(global_, "INCREMENTAL_MIN_MAP", 0)
    monkeypatch.setattr(global_, "INCREMENTAL_MAX_SHARE", 1.0)
    monkeypatch.setattr(global_, "_stream_sums", counting)
    torch.manual_seed(0)
    net = PooledHead().eval()
    sm = fxsparse.transform(net)
    for x in moving_object_frames(2, 40, 48, 60, seed=2):
        with torch.no_grad():
            expected = net(x)
        assert_close_scaled(sm(x), expected)
    assert len(calls) > 50  # the old and new rows of (almost) every frame went through the update
