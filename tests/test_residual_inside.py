"""Note [Residual inside]: a 1x1 conv that adds a residual back shares its input's mask when the graph
proves the residual's changes lie inside it (an inverted-residual or bottleneck block); otherwise it
takes the union. Both must give the dense model's output on every frame."""

import pytest
import torch
from torch import nn

import fxsparse
from conftest import assert_close_scaled


class InvertedResidual(nn.Module):
    """MobileNetV2's block: expand 1x1, depthwise 3x3, squeeze-excite scale, project 1x1, + input."""

    def __init__(self, c=4, dilation=1):
        super().__init__()
        self.stem = nn.Conv2d(3, c, 3, padding=1)
        self.expand = nn.Conv2d(c, 3 * c, 1)
        self.dw = nn.Conv2d(3 * c, 3 * c, 3, padding=dilation, dilation=dilation, groups=3 * c)
        self.se = nn.Conv2d(3 * c, 3 * c, 1)
        self.project = nn.Conv2d(3 * c, c, 1)

    def forward(self, x):
        x = self.stem(x)
        h = torch.relu(self.dw(torch.relu(self.expand(x))))
        h = h * torch.sigmoid(self.se(h.mean((2, 3), keepdim=True)))
        return self.project(h) + x


class TwoBranches(nn.Module):
    """The residual comes from a wider branch (dilation 3) than the conv's input (dilation 2): its changes
    reach positions the conv's input does not, so the 1x1 conv must take the union."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=2, dilation=2)
        self.b = nn.Conv2d(3, 4, 3, padding=3, dilation=3)
        self.project = nn.Conv2d(4, 4, 1)

    def forward(self, x):
        return self.project(torch.relu(self.a(x))) + self.b(x)


def _residual_steps(sm):
    return [s for s in sm._engine.steps if "residual_inside" in s.config and len(s.node.args) > 8]


def _single_pixel_frames(seed, n=8, h=20, w=24):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(1, 3, h, w, generator=g)
    frames = [x]
    for _ in range(n):
        x = x.clone()
        y0, x0 = (int(v) for v in torch.randint(0, min(h, w), (2,), generator=g))
        x[:, :, y0, x0] += 1.0  # one pixel: the masks of the branches differ most
        frames.append(x)
    return frames


@pytest.mark.parametrize("net,inside", [(InvertedResidual(), True), (InvertedResidual(dilation=2), True),
                                        (TwoBranches(), False)], ids=["block", "dilated-block", "two-branches"])
def test_residual_inside_is_decided_from_the_graph_and_frames_stay_exact(net, inside):
    torch.manual_seed(0)
    net = net.eval()
    sm = fxsparse.transform(net, dense_switch=2.0)  # every frame through the per-layer path
    for x in _single_pixel_frames(1):
        with torch.no_grad():
            expected = net(x)
        assert_close_scaled(sm(x), expected)
    (step,) = _residual_steps(sm)
    assert step.config["residual_inside"] is inside
    masks = sm.change_masks()
    if inside:  # the shared mask: the conv's changes are exactly its input's
        x_name = sm._engine.step_name(step.node.args[0])
        assert torch.equal(masks[step.name], masks[x_name])


def test_mobilenet_v2_blocks_all_share_their_mask():
    models = pytest.importorskip("torchvision.models")

    sm = fxsparse.transform(models.mobilenet_v2().eval())
    with torch.inference_mode():
        sm(torch.rand(1, 3, 64, 64))
    steps = _residual_steps(sm)
    assert len(steps) == 10 and all(s.config["residual_inside"] for s in steps)
