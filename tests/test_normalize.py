"""Every spelling of an op normalizes to the same canonical op, and the normalized graph equals the model."""

import operator

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fxsparse import ops
from fxsparse.normalize import normalize
from fxsparse.trace import trace_model


class Lam(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


def _targets(model):
    gm = normalize(trace_model(model.eval()))
    return [n.target for n in gm.graph.nodes if n.op not in ("placeholder", "output", "get_attr")], gm


ALIASES = {
    "relu": [nn.ReLU(), nn.ReLU(inplace=True), Lam(F.relu), Lam(torch.relu), Lam(lambda x: x.relu()),
             Lam(lambda x: x.relu_()), Lam(lambda x: F.relu(x, inplace=True))],
    "add": [Lam(lambda x: x + 1.0), Lam(lambda x: torch.add(x, 1.0)), Lam(lambda x: x.add(1.0))],
    "sigmoid": [nn.Sigmoid(), Lam(torch.sigmoid), Lam(F.sigmoid), Lam(lambda x: x.sigmoid())],
    "relu6": [nn.ReLU6(), Lam(F.relu6), nn.Hardtanh(0.0, 6.0)],
    "mean": [nn.AdaptiveAvgPool2d(1), nn.AdaptiveAvgPool2d((1, 1)), Lam(lambda x: x.mean((2, 3), keepdim=True)),
             Lam(lambda x: F.adaptive_avg_pool2d(x, 1)), Lam(lambda x: torch.mean(x, dim=[-1, -2], keepdim=True))],
    "identity": [nn.Identity(), nn.Dropout(0.3), Lam(lambda x: F.dropout(x, 0.3, training=False))],
    "upsample": [nn.Upsample(scale_factor=2), Lam(lambda x: F.interpolate(x, scale_factor=2))],
}
CANON = {
    "relu": [ops.activation], "add": [operator.add], "sigmoid": [ops.activation], "relu6": [ops.activation],
    "mean": [ops.spatial_mean], "identity": [], "upsample": [ops.interpolate],
}


@pytest.mark.parametrize("key,module", [(k, m) for k, ms in ALIASES.items() for m in ms],
                         ids=[f"{k}-{i}" for k, ms in ALIASES.items() for i in range(len(ms))])
def test_alias_normalizes_to_one_op(key, module):
    targets, gm = _targets(nn.Sequential(module))
    assert targets == CANON[key]
    x = torch.randn(2, 3, 6, 6)
    with torch.no_grad():
        assert torch.allclose(gm(x.clone()), nn.Sequential(module).eval()(x.clone()), atol=1e-6)


def test_batchnorm_folds_into_conv_and_activation_fuses():
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(4)
    bn.running_mean.uniform_(-1, 1)
    bn.running_var.uniform_(0.5, 2)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), bn, nn.ReLU()).eval()
    targets, gm = _targets(net)
    assert targets == [ops.conv2d]
    conv = next(n for n in gm.graph.nodes if n.target is ops.conv2d)
    assert conv.args[7] == ("relu",)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert torch.allclose(gm(x), net(x), atol=1e-5)


def test_inplace_add_rewires_later_readers():
    class InPlace(nn.Module):
        def forward(self, x):
            y = x * 2
            y += 1  # later readers of y must see the update
            return y * 3

    targets, gm = _targets(InPlace())
    x = torch.randn(1, 2, 3, 3)
    assert torch.allclose(gm(x), InPlace()(x))


class _ViewHead(nn.Module):
    """A classic head: ``x.view(x.size(0), -1)`` after a pool wider than 1x1."""

    def __init__(self):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 8, 3, padding=1), nn.Linear(8 * 16, 4)

    def forward(self, x):
        y = F.adaptive_avg_pool2d(torch.relu(self.conv(x)), 4)
        return self.fc(y.view(y.size(0), -1)).view((-1, 2, 2))


def test_a_view_of_a_channels_last_activation_becomes_reshape():
    """Activations are channels-last inside fxsparse: a view merging C with H, W has no view there, so views
    become reshapes (same values); a dtype view stays what it is."""
    import fxsparse

    targets, _ = _targets(_ViewHead())
    assert targets.count(torch.reshape) == 2 and "view" not in targets
    dtype_view, _ = _targets(Lam(lambda x: x.view(torch.int32)))
    assert dtype_view == ["view"]
    torch.manual_seed(0)
    net = _ViewHead().eval()
    sm = fxsparse.transform(net)
    x = torch.rand(2, 3, 16, 16)
    for i in range(3):
        x = x.clone()
        x[i % 2, :, 3 + i : 6 + i, 4:7] += 1.0
        with torch.no_grad():
            assert torch.allclose(sm(x), net(x), atol=1e-5)
