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


def test_a_dense_frame_forgets_the_sums_and_the_next_frames_rebuild_them(monkeypatch):
    """After a dense pass the running sums are not recomputed (the pass computed the means); the next
    frame sums afresh and later frames update incrementally again, every frame equal to dense."""
    monkeypatch.setattr(global_, "INCREMENTAL_MIN_MAP", 0)
    monkeypatch.setattr(global_, "INCREMENTAL_MAX_SHARE", 1.0)
    full_sums = []
    real = global_._full_sums
    monkeypatch.setattr(global_, "_full_sums", lambda *a: full_sums.append(1) or real(*a))
    torch.manual_seed(0)
    net = PooledHead().eval()
    sm = fxsparse.transform(net)
    frames = moving_object_frames(1, 40, 48, 12, seed=3)
    frames[5] = torch.rand_like(frames[5])  # a cut: every pixel changes, a dense frame
    step = None
    for i, x in enumerate(frames):
        with torch.no_grad():
            expected = net(x)
        calls = len(full_sums)
        assert_close_scaled(sm(x), expected)
        step = step or next(s for s in sm._engine.steps if s.rule.name == "global_mean")
        if i == 5:
            assert sm.stats.dense and step.state["sum"] is None and len(full_sums) == calls
        if i == 7:  # frame 6 cuts back (dense again); frame 7 walks and rebuilds the sums
            assert not sm.stats.dense and step.state["sum"] is not None
