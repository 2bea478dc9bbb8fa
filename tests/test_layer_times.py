"""fxsparse.layer_times: per-layer propagation / execution times against each layer's dense op."""

import pytest
import torch
from torch import nn

import fxsparse
from conftest import moving_object_frames
from fxsparse.layer_times import layer_times, layer_times_table


def test_layer_times_covers_every_step_and_leaves_the_module_as_it_was():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1, groups=8),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2)).eval()
    frames = moving_object_frames(1, 24, 32, 6, seed=1)
    sm = fxsparse.transform(net)
    sm(frames[0])
    rules = [step.rule for step in sm._engine.steps]
    rows = layer_times(sm, frames[1:])
    assert [r.name for r in rows] == [s.name for s in sm._engine.steps]
    assert [step.rule for step in sm._engine.steps] == rules  # the timers are gone again
    convs = [r for r in rows if r.op.startswith("conv2d")]
    assert len(convs) == 2 and all(r.dense_ms > 0 and 0 < r.changed < 1 and r.execute_ms > 0 for r in convs)
    assert rows[-1].dense_ms is None  # the linear layer works on rows: no spatial dense op timed
    table = layer_times_table(rows)
    assert table.count("\n") == len(rows) + 2 and "**total**" in table
    with torch.no_grad():  # still exact after the timed frames
        assert torch.allclose(sm(frames[0]), net(frames[0]), atol=1e-5)


def test_layer_times_needs_a_first_frame():
    with pytest.raises(ValueError, match="first frame"):
        layer_times(fxsparse.transform(nn.Conv2d(3, 3, 1)), [torch.rand(1, 3, 8, 8)])


def test_layer_times_reports_a_dense_tail_as_one_row():
    """Note [Dense tails]: the tail runs as one graph, so it is timed as one row, against the same graph."""

    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.fc, self.head = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 1), nn.Conv2d(8, 2, 1)

        def forward(self, x):
            y = torch.relu(self.conv(x))
            return self.head(y * torch.sigmoid(self.fc(y.mean((2, 3), keepdim=True))))

    torch.manual_seed(0)
    net = Scaled().eval()
    frames = moving_object_frames(1, 24, 32, 6, seed=1)
    sm = fxsparse.transform(net)
    sm(frames[0])
    rows = layer_times(sm, frames[1:])
    tail = sm._engine.tail
    assert [r.name for r in rows] == ["conv", "mean", f"dense tail: {len(tail.steps)} layers after mean"]
    assert rows[-1].changed == 1.0 and rows[-1].execute_ms > 0 and rows[-1].dense_ms > 0
    assert "_tail_frame" not in vars(sm._engine)  # the timer is gone again
    with torch.no_grad():
        assert torch.allclose(sm(frames[0]), net(frames[0]), atol=1e-5)
