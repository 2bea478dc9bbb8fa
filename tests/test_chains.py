"""Conv chains (fxsparse/chains.py): blocks of convs run as one unit on gathered tiles equal the dense model."""

import torch
from hypothesis import assume, given
from hypothesis import strategies as st
from test_property import PATTERNS, _apply_pattern, _check_costs
from torch import nn

import fxsparse
from conftest import assert_close_scaled, moving_object_frames


class Block(nn.Module):
    """Inverted residual / bottleneck: 1x1 expand, k x k (depthwise or dense) conv, 1x1 project (+ input)."""

    def __init__(self, c, expand, k, stride, dilation, padding, depthwise, residual):
        super().__init__()
        mid = c * expand
        self.expand = nn.Sequential(nn.Conv2d(c, mid, 1), nn.BatchNorm2d(mid), nn.ReLU6())
        self.spatial = nn.Sequential(
            nn.Conv2d(mid, mid, k, stride, padding, dilation, groups=mid if depthwise else 1), nn.Hardswish()
        )
        self.project = nn.Conv2d(mid, c, 1)
        self.residual = residual and stride == 1 and 2 * padding == dilation * (k - 1)  # same size out as in

    def forward(self, x):
        y = self.project(self.spatial(self.expand(x)))
        return x + y if self.residual else y


@st.composite
def blocks(draw, c):
    out = []
    for _ in range(draw(st.integers(1, 3))):
        k = draw(st.sampled_from([1, 3, 5]))
        out.append(Block(
            c, draw(st.integers(1, 3)), k, draw(st.sampled_from([1, 2])), draw(st.sampled_from([1, 2])),
            draw(st.integers(0, k // 2 + 1)), draw(st.booleans()), draw(st.booleans()),
        ))
    return out


@given(st.data())
def test_chained_blocks_match_dense_every_frame(data):
    c = data.draw(st.integers(1, 4), label="channels")
    h, w = data.draw(st.integers(8, 28), label="height"), data.draw(st.integers(8, 28), label="width")
    torch.manual_seed(data.draw(st.integers(0, 2**16), label="seed"))
    net = nn.Sequential(nn.Conv2d(3, c, 3, padding=1), *data.draw(blocks(c), label="blocks")).eval()
    try:
        with torch.no_grad():
            net(torch.zeros(1, 3, h, w))
    except RuntimeError:  # a kernel larger than its (padded) input: not a valid network
        assume(False)
    batch = data.draw(st.integers(1, 2), label="streams")
    tile = data.draw(st.sampled_from([1, 2, 8]), label="tile")
    switch = data.draw(st.sampled_from([0.5, 2.0]), label="dense_switch")
    sm = fxsparse.transform(net, tile_size=tile, dense_switch=switch, fuse_chains=True)
    x = torch.randn(batch, 3, h, w)
    for frame in range(4):
        if frame:
            x = x.clone()
            for stream in range(batch):
                _apply_pattern(x, stream, data.draw(st.sampled_from(PATTERNS)), data.draw)
        with torch.no_grad():
            expected = net(x)
        assert_close_scaled(sm(x), expected, f"frame {frame}")
        assert sm._engine.chains, "a block of convs forms a chain"
        _check_costs(sm.stats, switch, sm._engine.chains)


def test_chains_free_inner_caches_and_keep_stats_honest():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), Block(8, 4, 3, 1, 1, 1, True, True),
                        Block(8, 2, 3, 2, 1, 1, True, False)).eval()
    frames = moving_object_frames(2, 40, 56, 5)
    fused = fxsparse.transform(net, fuse_chains=True)
    plain = fxsparse.transform(net)
    for x in frames:
        y = fused(x)
        with torch.no_grad():
            assert_close_scaled(y, net(x))
        plain(x)
    engine = fused._engine
    # the stem's output is also the first block's residual, so it stays cached; a residual add ends a chain
    assert [len(c.steps) for c in engine.chains] == [3, 3]
    inner = [s.node for c in engine.chains for s in c.steps[:-1]]
    assert all(engine.values[n] is None for n in inner)
    assert fused.stats.cache_bytes < plain.stats.cache_bytes
    assert fused.stats.macs_cone == plain.stats.macs_cone  # masks still propagate layer by layer
    assert fused.stats.macs_cone <= fused.stats.macs_executed < fused.stats.macs_dense
    lowerings = {e.name: e.lowering for e in fused.coverage().entries}
    assert sum("chain 1/3" in v for v in lowerings.values()) == 2


def test_compact_changes_run_the_chain_on_one_box(monkeypatch):
    """Note [Chains on a box]: a small moving square (at the border too) runs each chain as one crop; every
    frame equals dense, and scattered changes still take the tiles."""
    from fxsparse import chains

    calls = {"box": 0, "tiles": 0}
    real_box, real_tiles = chains.run_box, chains.run_tiles

    def box(*a):
        calls["box"] += 1
        return real_box(*a)

    def tiles(*a):
        calls["tiles"] += 1
        return real_tiles(*a)

    monkeypatch.setattr(chains, "run_box", box)
    monkeypatch.setattr(chains, "run_tiles", tiles)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), Block(8, 4, 3, 1, 1, 1, True, True),
                        Block(8, 2, 3, 2, 1, 1, True, False)).eval()
    fused = fxsparse.transform(net, fuse_chains=True)
    x = torch.rand(1, 3, 64, 96)
    frames = [x]
    for y0, x0 in ((10, 12), (0, 0), (60, 92), (20, 30)):  # interior, both corners (image padding), interior
        f = frames[-1].clone()
        f[:, :, y0 : y0 + 4, x0 : x0 + 4] += 1.0
        frames.append(f)
    scattered = frames[-1].clone()
    scattered[:, :, 2::58, 3::88] += 1.0  # four pixels near the corners: one box would be the whole map
    frames.append(scattered)
    for f in frames:
        with torch.no_grad():
            assert_close_scaled(fused(f), net(f))
    assert calls["box"] >= 8 and calls["tiles"] >= 1


def test_a_chains_1x1_convs_run_as_gemms_on_the_crop(monkeypatch):
    """The 1x1 convs of a chain on a box or tiles run as one GEMM over the crop's rows (no oneDNN primitive per
    crop shape); the depthwise conv between them keeps its conv. Every frame equals dense."""
    from fxsparse import chains

    gemms = []
    real = chains._pointwise_gemm

    def spy(step, *a):
        gemms.append(step.name)
        return real(step, *a)

    monkeypatch.setattr(chains, "_pointwise_gemm", spy)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), Block(8, 4, 3, 1, 1, 1, True, True),
                        Block(8, 2, 3, 2, 1, 1, True, False)).eval()
    fused = fxsparse.transform(net, fuse_chains=True)
    for f in moving_object_frames(1, 40, 56, 5):
        with torch.no_grad():
            assert_close_scaled(fused(f), net(f))
    names = set(gemms)
    assert names and all(".expand." in n or ".project" in n for n in names)
