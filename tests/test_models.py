"""Real architectures: torchvision models (random weights) and MTCNN's PNet (real weights)."""

import importlib.util
import os

import pytest
import torch
from torch import nn

import fxsparse
from conftest import assert_close_scaled

torchvision = pytest.importorskip("torchvision", reason="torchvision not installed (torch-only env)")


def moving_object_frames(batch, h, w, frames, seed=0):
    """A static textured background with a small square moving per stream (different paths)."""
    g = torch.Generator().manual_seed(seed)
    background = torch.rand(batch, 3, h, w, generator=g)
    size = max(2, min(h, w) // 10)
    out = []
    for t in range(frames):
        x = background.clone()
        for b in range(batch):
            y0 = (5 + 3 * t * (b + 1)) % (h - size)
            x0 = (7 + 5 * t + 11 * b) % (w - size)
            x[b, :, y0 : y0 + size, x0 : x0 + size] = torch.tensor([1.0, 0.2, 0.1]).view(3, 1, 1)
        out.append(x)
    return out


CLASSIFIERS = ["resnet18", "resnet50", "mobilenet_v2", "mobilenet_v3_large", "efficientnet_b0", "vgg11_bn",
               "squeezenet1_1"]
SEGMENTERS = ["fcn_resnet50", "deeplabv3_mobilenet_v3_large", "lraspp_mobilenet_v3_large"]


def _build(name):
    torch.manual_seed(0)
    if name in SEGMENTERS:
        return getattr(torchvision.models.segmentation, name)(weights=None, weights_backbone=None).eval()
    return getattr(torchvision.models, name)().eval()


@pytest.mark.parametrize("name", CLASSIFIERS + SEGMENTERS)
def test_torchvision_model_is_exact_on_moving_objects(name):
    model = _build(name)
    sm = fxsparse.transform(model)
    assert sm.coverage().fallbacks == [], str(sm.coverage())
    h, w = (96, 128) if name not in ("vgg11_bn",) else (64, 64)
    for i, x in enumerate(moving_object_frames(2, h, w, frames=4)):
        with torch.no_grad():
            expected = model(x)
        assert_close_scaled(sm(x), expected, f"{name} frame {i}")
        if i:
            assert sm.stats.macs_executed < sm.stats.macs_dense


class PNet(nn.Module):
    """MTCNN's proposal net, written out here (a user-written module), loading the real weights."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 10, kernel_size=3)
        self.prelu1 = nn.PReLU(10)
        self.pool1 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(10, 16, kernel_size=3)
        self.prelu2 = nn.PReLU(16)
        self.conv3 = nn.Conv2d(16, 32, kernel_size=3)
        self.prelu3 = nn.PReLU(32)
        self.conv4_1 = nn.Conv2d(32, 2, kernel_size=1)
        self.softmax4_1 = nn.Softmax(dim=1)
        self.conv4_2 = nn.Conv2d(32, 4, kernel_size=1)

    def forward(self, x):
        x = self.prelu3(self.conv3(self.prelu2(self.conv2(self.pool1(self.prelu1(self.conv1(x)))))))
        return self.conv4_2(x), self.softmax4_1(self.conv4_1(x))


def _pnet_weights():
    spec = importlib.util.find_spec("facenet_pytorch")
    if spec is None:
        pytest.skip("facenet-pytorch (real MTCNN weights) not installed: pip install --no-deps facenet-pytorch==2.6.0")
    return os.path.join(os.path.dirname(spec.origin), "data", "pnet.pt")


def test_mtcnn_pnet_real_weights_is_exact():
    net = PNet()
    net.load_state_dict(torch.load(_pnet_weights()))
    net.eval()
    sm = fxsparse.transform(net)
    assert sm.coverage().fallbacks == []
    for i, x in enumerate(moving_object_frames(3, 144, 176, frames=5, seed=1)):
        with torch.no_grad():
            expected = net(x)
        assert_close_scaled(sm(x), expected, f"pnet frame {i}")
