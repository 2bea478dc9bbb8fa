"""Tracing: untraceable models get a useful error; GraphModules and leaf modules work; the user's model is untouched."""

import pytest
import torch
import torch.fx as fx
from torch import nn

import fxsparse
from conftest import assert_close_scaled


class DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x):
        y = self.conv(x)
        if y.mean() > 0:  # data-dependent control flow: untraceable
            return y
        return -y


class Wrapper(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 3, 3, padding=1)
        self.block = DataDependent()

    def forward(self, x):
        return self.block(torch.relu(self.stem(x)))


def test_untraceable_model_error_names_the_line_and_the_fix():
    with pytest.raises(fxsparse.TraceFailedError) as info:
        fxsparse.transform(Wrapper())
    msg = str(info.value)
    assert "test_trace.py" in msg and "if y.mean() > 0" in msg
    assert "leaf_modules" in msg


def test_leaf_module_makes_it_traceable_and_exact():
    net = Wrapper().eval()
    sm = fxsparse.transform(net, leaf_modules=[DataDependent])
    assert any("block" in e.name for e in sm.coverage(torch.rand(1, 3, 8, 8)).fallbacks)
    x = torch.rand(2, 3, 12, 12)
    for _ in range(3):
        with torch.no_grad():
            expected = net(x)
        assert_close_scaled(sm(x), expected)
        x = x.clone()
        x[0, :, 3, 3] += 1


def test_graph_module_input_is_accepted_and_not_modified():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU()).eval()
    gm = fx.symbolic_trace(net)
    code_before = gm.code
    sm = fxsparse.transform(gm)
    assert gm.code == code_before
    x = torch.rand(1, 3, 9, 9)
    with torch.no_grad():
        expected = net(x)
    assert_close_scaled(sm(x), expected)


def test_training_mode_is_restored():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Dropout(0.5))
    net.train()
    fxsparse.transform(net)
    assert net.training and all(m.training for m in net.modules())


def test_multiple_inputs_are_rejected_with_a_hint():
    class Two(nn.Module):
        def forward(self, x, y):
            return x + y

    with pytest.raises(fxsparse.FxSparseError, match="wrap the model"):
        fxsparse.transform(Two())
