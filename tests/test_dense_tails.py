"""Note [Dense tails]: the nodes downstream of a global mean run as one dense graph on the streams whose
inputs to it changed; only what is read from outside the tail is cached. Every frame (partial, one stream,
unchanged, fully changed, and a change the mean never sees) must equal the dense model and the layer-by-layer
walk (``dense_tail=False``), with the same cone."""

import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import fxsparse
from conftest import assert_close_scaled, with_blob
from netgen import RandomNet, SqueezeExciteNet, layer_specs


def _pair(net, **options):
    return fxsparse.transform(net, **options), fxsparse.transform(net, dense_tail=False, **options)


def test_a_dense_tail_equals_dense_and_the_walk_on_every_kind_of_frame():
    torch.manual_seed(0)
    net = SqueezeExciteNet().eval()
    tailed, walked = _pair(net)
    x = torch.rand(2, 3, 24, 32)
    frames = [x, with_blob(x, 1, 4, 5), with_blob(with_blob(x, 1, 12, 5), 0, 10, 20)]  # stream 1 alone, then both
    frames += [frames[-1], 1.0 - frames[-1], with_blob(1.0 - frames[-1], 0, 2, 2)]  # unchanged, full, partial after it
    for i, f in enumerate(frames):
        with torch.no_grad():
            expected = net(f)
            out, walk = tailed(f), walked(f)
        assert_close_scaled(out, expected, f"frame {i}")
        assert_close_scaled(walk, expected, f"frame {i}, walk")
        assert tailed.stats.macs_cone == walked.stats.macs_cone, i
        assert tailed.stats.dense == walked.stats.dense, i
    tail = tailed._engine.tail
    assert tail is not None and tail.root == "mean" and [s.op for s in tail.after] == ["interpolate"]
    assert all(tailed._engine.values[s.node] is None for s in tail.steps if s.node not in tail.kept)
    assert tailed.stats.cache_bytes < walked.stats.cache_bytes


def test_a_change_the_mean_never_sees_still_runs_the_tail():
    """A 1x1 conv with stride 2 skips odd pixels: a change there leaves the pooled scale as it was, while the
    full-resolution branch it multiplies changed. The tail runs anyway (the walk would recompute less): the
    same output, and stats count the tail as changed."""

    class Skipping(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.p, self.fc = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(3, 4, 1, stride=2), nn.Conv2d(4, 4, 1)

        def forward(self, x):
            s = torch.sigmoid(self.fc(self.p(x).mean((2, 3), keepdim=True)))
            return self.a(x) * F.interpolate(s, size=x.shape[2:], mode="nearest")

    torch.manual_seed(0)
    net = Skipping().eval()
    tailed, walked = _pair(net)
    x = torch.rand(1, 3, 16, 16)
    tailed(x), walked(x)
    x = x.clone()
    x[0, :, 5, 7] += 1.0  # odd row and column: the strided 1x1 conv does not read it
    with torch.no_grad():
        expected = net(x)
        assert_close_scaled(tailed(x), expected)
        assert_close_scaled(walked(x), expected)
    assert tailed._engine.tail is not None
    assert walked.stats.macs_cone < tailed.stats.macs_cone == tailed.stats.macs_executed


def test_no_tail_for_pooled_heads_or_gated_vectors():
    class Classifier(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.fc = nn.Conv2d(3, 8, 3, padding=1), nn.Linear(8, 4)

        def forward(self, x):
            return self.fc(torch.flatten(F.adaptive_avg_pool2d(torch.relu(self.conv(x)), 1), 1))

    x = torch.rand(1, 3, 16, 16)
    for net, options in ((Classifier().eval(), {}), (SqueezeExciteNet().eval(), {"threshold": {"global": 0.05}})):
        sm = fxsparse.transform(net, **options)
        sm(x)
        assert sm._engine.tail is None, options  # a pooled head is cheap in the walk; a gate must see its input
    sm = fxsparse.transform(SqueezeExciteNet().eval(), dense_tail=False)
    sm(x)
    assert sm._engine.tail is None


def test_coverage_and_change_masks_name_the_tail():
    torch.manual_seed(0)
    net = SqueezeExciteNet().eval()
    sm = fxsparse.transform(net)
    x = torch.rand(2, 3, 24, 32)
    sm(x)
    sm(with_blob(x, 1, 4, 5))
    tail_names = {s.name for s in sm._engine.tail.steps}
    assert "fc3" in tail_names and "head" in tail_names and "stem" not in tail_names
    report = str(sm.coverage())
    assert report.count("dense tail after mean") == len(tail_names)
    masks = sm.change_masks()
    for name in tail_names:
        assert float(masks[name][0].max()) == 0.0 and float(masks[name][1].min()) == 1.0, name
    assert float(masks["stem"][0].max()) == 0.0 and 0.0 < float(masks["stem"][1].mean()) < 1.0


def test_estimate_with_a_tail_gives_the_walks_cone():
    torch.manual_seed(0)
    net = SqueezeExciteNet().eval()
    tailed, walked = _pair(net)
    x = torch.rand(2, 3, 24, 32)
    tailed(x), walked(x)
    mask = torch.zeros(2, 1, 24, 32)
    mask[0, :, 3:6, 8:12] = 1.0
    a, b = tailed.estimate(mask), walked.estimate(mask)
    assert a.macs_cone == b.macs_cone and a.macs_executed == b.macs_executed == 0


@given(st.data())
def test_random_networks_with_a_squeeze_excite_match_dense_and_the_walk(data):
    """Random networks (tests/netgen.py) with a squeeze-excite block put somewhere: every frame equals the dense
    model and the walk, streams changing on their own, with the same cone."""
    c, h, w = data.draw(st.integers(1, 4)), data.draw(st.integers(3, 20)), data.draw(st.integers(3, 20))
    specs, *_ = data.draw(layer_specs(c, h, w, data.draw(st.integers(1, 5))))
    specs.insert(data.draw(st.integers(0, len(specs))), {"kind": "se"})  # keeps the shape: fits anywhere
    head = data.draw(st.sampled_from(["plain", "classifier", "tuple"]))
    torch.manual_seed(data.draw(st.integers(0, 2**16)))
    net = RandomNet(specs, c, head).eval()
    batch = data.draw(st.integers(1, 3))
    tailed, walked = _pair(net, dense_switch=data.draw(st.sampled_from([0.6, 2.0])))
    x = torch.randn(batch, c, h, w)
    for frame in range(4):
        if frame:
            x = x.clone()
            for stream in data.draw(st.lists(st.integers(0, batch - 1), max_size=batch)):
                y0, x0 = data.draw(st.integers(0, h - 1)), data.draw(st.integers(0, w - 1))
                x[stream, :, y0 : y0 + 2, x0 : x0 + 3] += 1.0
        with torch.no_grad():
            expected = net(x.clone())
            assert_close_scaled(tailed(x), expected, f"frame {frame}")
            assert_close_scaled(walked(x), expected, f"frame {frame}, walk")
        assert tailed.stats.macs_cone >= walked.stats.macs_cone  # the tail counts whole streams


def test_a_tail_reads_the_batch_size_of_the_streams_it_runs_for():
    """``x.view(x.size(0), -1)`` inside the tail: the size is read again on every run (from the streams that
    changed), not kept from the first frame's full batch."""

    class Head(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.fc1, self.fc = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 1), nn.Linear(8 * 16, 4)

        def forward(self, x):
            y = torch.relu(self.conv(x))
            y = F.adaptive_avg_pool2d(y * torch.sigmoid(self.fc1(y.mean((2, 3), keepdim=True))), 4)
            return self.fc(y.view(y.size(0), -1))

    torch.manual_seed(0)
    net = Head().eval()
    sm = fxsparse.transform(net)
    x = torch.rand(3, 3, 16, 16)
    sm(x)
    for stream in (1, 2, 0):
        x = x.clone()
        x[stream, :, 3:5, 3:5] += 1.0  # one stream of three: the tail runs on it alone
        with torch.no_grad():
            assert_close_scaled(sm(x), net(x))
    assert sm._engine.tail is not None and sm._engine._tail_streams == [0]
