"""A binary pointwise op whose every stream changed writes straight into its cache (no new tensor adopted)."""

import torch
from torch import nn

import fxsparse
from conftest import assert_close_scaled


class Scaled(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.fc = nn.Conv2d(6, 6, 1)

    def forward(self, x):
        y = torch.relu(self.conv(x))
        return y * torch.sigmoid(self.fc(y.mean((2, 3), keepdim=True)))  # the scale changes every position


def test_a_fully_changed_product_is_written_into_its_own_cache():
    torch.manual_seed(0)
    net = Scaled().eval()
    sm = fxsparse.transform(net, dense_switch=0.9, dense_tail=False)  # frames stay per-layer walks
    x = torch.rand(2, 3, 16, 20)
    sm(x)
    engine = sm._engine
    (mul,) = [s for s in engine.steps if s.op == "mul"]
    before = engine.cache(mul.node).buf.data_ptr()
    for i in range(3):
        x = x.clone()
        x[:, :, 3 + i, 4] += 1.0  # one pixel per stream: the pooled scale changes the whole map
        with torch.no_grad():
            assert_close_scaled(sm(x), net(x))
        assert not sm.stats.dense
    assert engine.cache(mul.node).buf.data_ptr() == before
