"""Note [Dense frames]: a frame where more than ``dense_switch`` of every stream changed runs the graph once
and refills every cache."""

import dataclasses

import pytest
import torch
from torch import nn

import fxsparse
from conftest import assert_close_scaled, moving_object_frames


class SqueezeExcite(nn.Module):
    """A global mean (running sums that a dense frame must refresh) added back onto the map."""

    def __init__(self, c):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(3, c, 3, padding=1), nn.ReLU(), nn.Conv2d(c, c, 1), nn.ReLU())
        self.fc = nn.Conv2d(c, 2, 1)
        self.head = nn.Conv2d(c, 2, 3, padding=1)

    def forward(self, x):
        y = self.conv(x)
        return self.head(y) + self.fc(y.mean((2, 3), keepdim=True))  # linear in the mean: no saturation


def _frames():
    moving = moving_object_frames(2, 24, 32, 6, seed=1)
    cut = [torch.rand(2, 3, 24, 32) + 2.0]  # every pixel of both streams differs from the last frame
    return moving[:3] + cut + [cut[0].clone() for _ in range(1)] + moving[3:]


@pytest.mark.parametrize("fuse_chains", [False, True])
def test_cut_runs_one_dense_pass_and_later_frames_stay_exact(fuse_chains):
    torch.manual_seed(0)
    net = SqueezeExcite(6).eval()
    sm = fxsparse.transform(net, fuse_chains=fuse_chains)
    kinds = []
    for x in _frames():
        with torch.no_grad():
            expected = net(x)
        assert_close_scaled(sm(x), expected)
        kinds.append("dense" if sm.stats.dense else "unchanged" if sm.stats.macs_executed == 0 else "sparse")
    # first frame, sparse, the cut as one dense pass, the repeated cut unchanged, the cut back (every
    # pixel again) dense, then sparse: the global mean's running sums were refreshed by the dense
    # passes, or the sparse frames after them would be off
    assert kinds == ["dense", "sparse", "sparse", "dense", "unchanged", "dense", "sparse", "sparse"]


def test_dense_frame_reports_what_it_ran():
    sm = fxsparse.transform(SqueezeExcite(4).eval())
    x = torch.rand(1, 3, 16, 16)
    sm(x)
    sm(x + 1.0)
    st = sm.stats
    assert st.dense and st.macs_executed == st.macs_cone == st.macs_dense > 0
    assert sm.change_masks() == {}  # no per-layer masks were propagated


def test_with_an_input_threshold_the_dense_pass_sees_the_reference_frame():
    torch.manual_seed(0)
    net = SqueezeExcite(4).eval()
    sm = fxsparse.transform(net, input_threshold=0.5)
    x = torch.rand(1, 3, 16, 16)
    sm(x)
    y = x + 0.6  # every pixel moves past the threshold: the reference becomes y
    with torch.no_grad():
        assert_close_scaled(sm(y), net(y))
    z = y + 0.1  # below the threshold: the output stays the model on y
    with torch.no_grad():
        assert_close_scaled(sm(z), net(y))


def test_layer_thresholds_keep_the_per_layer_path():
    """A gate must compare with what it last let through; a dense refill would bypass it."""
    sm = fxsparse.transform(SqueezeExcite(4).eval(), threshold=0.05)
    x = torch.rand(1, 3, 16, 16)
    sm(x)
    sm(x + 1.0)
    assert not sm.stats.dense


def test_an_interrupted_dense_frame_starts_the_streams_over():
    """The dense pass releases the caches first; if it is interrupted, the next frame must not use them."""
    torch.manual_seed(0)
    net = SqueezeExcite(4).eval()
    sm = fxsparse.transform(net)
    x = torch.rand(1, 3, 16, 16)
    sm(x)

    def interrupted():
        raise KeyboardInterrupt

    sm._engine._all_values_module = interrupted
    with pytest.raises(KeyboardInterrupt):
        sm(x + 1.0)
    y = x + 2.0
    with torch.no_grad():
        assert_close_scaled(sm(y), net(y))
    assert sm.stats.dense


@pytest.mark.parametrize("threshold", [0.0, 0.3])
def test_a_mostly_changed_frame_runs_dense_and_the_next_sparse_frames_stay_exact(threshold):
    torch.manual_seed(0)
    net = SqueezeExcite(4).eval()
    sm = fxsparse.transform(net, input_threshold=threshold)  # dense_switch 0.5
    x = torch.rand(2, 3, 16, 16)
    sm(x)
    ref = x.clone()
    kinds, shares = [], []
    for rows in (12, 4, 9, 2):  # 75%, 25%, 56%, 12.5% of each stream's pixels change
        x = x.clone()
        x[:, :, :rows] += 0.5 + torch.rand(2, 3, rows, 16)
        changed = (x - ref).abs().amax(1, keepdim=True) > threshold
        ref = torch.where(changed, x, ref)
        with torch.no_grad():
            assert_close_scaled(sm(x), net(ref.clone()))
        kinds.append(sm.stats.dense)
        shares.append(sm.stats.changed_fraction)
    assert kinds == [True, False, True, False]
    assert shares[0] == [0.75, 0.75] and shares[2] == [0.5625, 0.5625]  # the real shares, not 1.0


def test_one_stream_below_the_switch_keeps_the_per_layer_path():
    sm = fxsparse.transform(SqueezeExcite(4).eval())
    x = torch.rand(2, 3, 16, 16)
    sm(x)
    y = x.clone()
    y[0] += 1.0  # stream 0 fully changed, stream 1 not at all
    sm(y)
    assert not sm.stats.dense


def test_an_interrupted_sparse_frame_starts_the_streams_over():
    """A layer walk stopped half way (an error, Ctrl-C) leaves the reference and the early layers on the new
    frame and the later ones on the old: the next frame must start over, not compute against that mix."""
    torch.manual_seed(0)
    net = SqueezeExcite(4).eval()
    sm = fxsparse.transform(net)
    frames = moving_object_frames(1, 24, 32, 4, seed=5)
    sm(frames[0])
    step = sm._engine.steps[0]  # the first conv: the layers after it would keep the last frame
    real = step.rule
    failures = [RuntimeError("interrupted")]

    def interrupted_once(step, ctx, mask):
        if failures:
            raise failures.pop()
        return real.execute(step, ctx, mask)

    step.rule = dataclasses.replace(real, execute=interrupted_once)
    with pytest.raises(RuntimeError, match="interrupted"):
        sm(frames[1])
    for x in frames[2:]:
        with torch.no_grad():
            assert_close_scaled(sm(x), net(x))
