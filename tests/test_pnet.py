"""MTCNN's PNet with its real weights (from facenet-pytorch's package data), written as a user module."""

import importlib.util
import os

import pytest
import torch
from torch import nn

import fxsparse
from conftest import assert_close_scaled, moving_object_frames


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
        if i:
            assert sm.stats.macs_executed < sm.stats.macs_dense / 2
