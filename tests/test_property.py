"""Property tests: on random networks, inputs and change patterns, fxsparse equals the dense model."""

import torch
from hypothesis import event, given
from hypothesis import strategies as st

import fxsparse
from conftest import assert_close_scaled
from netgen import RandomNet, layer_specs

PATTERNS = ["none", "pixel", "corner", "blob", "full"]


def _apply_pattern(x, stream, pattern, draw):
    _, c, h, w = x.shape
    if pattern == "none":
        return
    if pattern == "full":
        x[stream] = torch.randn(c, h, w)
        return
    if pattern == "corner":
        y = draw(st.sampled_from([0, h - 1]))
        z = draw(st.sampled_from([0, w - 1]))
        x[stream, :, y, z] += 1.0 + torch.rand(c)
        return
    if pattern == "pixel":
        y, z = draw(st.integers(0, h - 1)), draw(st.integers(0, w - 1))
        x[stream, :, y, z] += 1.0 + torch.rand(c)
        return
    y0, z0 = draw(st.integers(0, h - 1)), draw(st.integers(0, w - 1))
    y1, z1 = draw(st.integers(y0 + 1, h)), draw(st.integers(z0 + 1, w))
    x[stream, :, y0:y1, z0:z1] = torch.randn(c, y1 - y0, z1 - z0)


def _check_costs(stats, dense_switch, chains=()):
    """cone <= executed always; executed <= dense whenever the dense switch is active (<= 1).

    With the switch off, edge tiles shifted inward overlap and may compute more than dense. A conv
    chain reports its whole work on its last layer and need not compute inner changes that reach no
    output (a stride skips them), so it is checked as one unit against its last layer's cone.
    """
    by_name = {layer.name: layer for layer in stats.layers}
    groups = [[by_name[s.name] for s in c.steps] for c in chains]
    chained = {layer.name for g in groups for layer in g}
    groups += [[layer] for layer in stats.layers if layer.name not in chained]
    total_cone = 0
    for group in groups:
        executed, dense = (sum(getattr(layer, f) for layer in group) for f in ("macs_executed", "macs_dense"))
        cone = group[-1].macs_cone if len(group) > 1 else group[0].macs_cone
        total_cone += cone
        assert 0 <= cone <= executed, group
        if dense_switch <= 1:
            assert executed <= dense, group
    assert total_cone <= stats.macs_executed
    if dense_switch <= 1:
        assert stats.macs_executed <= stats.macs_dense


@given(st.data())
def test_random_networks_match_dense_every_frame(data):
    c = data.draw(st.integers(1, 4), label="channels")
    h = data.draw(st.integers(3, 24), label="height")
    w = data.draw(st.integers(3, 24), label="width")
    depth = data.draw(st.integers(1, 6), label="depth")
    specs, *_ = data.draw(layer_specs(c, h, w, depth), label="specs")
    head = data.draw(st.sampled_from(["plain", "classifier", "tuple", "dict"]), label="head")
    torch.manual_seed(data.draw(st.integers(0, 2**16), label="seed"))
    net = RandomNet(specs, c, head).eval()
    batch = data.draw(st.integers(1, 3), label="streams")
    tile = data.draw(st.sampled_from([1, 2, 3, 8]), label="tile")
    # 2.0 never switches to dense: every layer runs its sparse lowering
    switch = data.draw(st.sampled_from([0.6, 2.0]), label="dense_switch")
    fuse = data.draw(st.booleans(), label="fuse_chains")
    tail = data.draw(st.booleans(), label="dense_tail")  # False: the layers after a global mean are walked too
    sm = fxsparse.transform(net, tile_size=tile, dense_switch=switch, fuse_chains=fuse, dense_tail=tail)
    x = torch.randn(batch, c, h, w)
    frames = data.draw(st.integers(4, 6), label="frames")
    for frame in range(frames):
        if frame:
            x = x.clone()
            for stream in range(batch):
                _apply_pattern(x, stream, data.draw(st.sampled_from(PATTERNS)), data.draw)
        with torch.no_grad():
            expected = net(x.clone())  # in-place activations would change x
        actual = sm(x)
        assert_close_scaled(actual, expected, f"frame {frame}")
        _check_costs(sm.stats, switch, sm._engine.chains)
    event(f"conv chains: {min(len(sm._engine.chains), 2)}{'+' if len(sm._engine.chains) > 1 else ''}")
    event(f"dense tail: {sm._engine.tail is not None}")


@given(st.data())
def test_input_threshold_equals_dense_on_reference_frame(data):
    """With tau > 0 the output is the dense model applied to the held reference frame."""
    specs, *_ = data.draw(layer_specs(3, 16, 16, data.draw(st.integers(1, 4))))
    torch.manual_seed(data.draw(st.integers(0, 2**16)))
    net = RandomNet(specs, 3, "plain").eval()
    tau = data.draw(st.sampled_from([0.05, 0.3]))
    sm = fxsparse.transform(net, input_threshold=tau)
    x = torch.rand(2, 3, 16, 16)
    ref = x.clone()
    sm(x)
    for _ in range(4):
        x = x + torch.randn_like(x) * data.draw(st.sampled_from([0.01, 0.2]))
        changed = (x - ref).abs().amax(1, keepdim=True) > tau
        ref = torch.where(changed, x, ref)
        with torch.no_grad():
            expected = net(ref.clone())  # in-place activations would change ref
        assert_close_scaled(sm(x), expected)
