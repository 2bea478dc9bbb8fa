"""Real architectures: torchvision classification and segmentation models (random weights)."""

import pytest
import torch

import fxsparse
from conftest import assert_close_scaled, moving_object_frames

torchvision = pytest.importorskip("torchvision", reason="torchvision not installed (torch-only env)")

CLASSIFIERS = ["resnet18", "resnet50", "mobilenet_v2", "mobilenet_v3_large", "efficientnet_b0", "vgg11_bn",
               "squeezenet1_1", "regnet_y_400mf"]
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
    h, w = (96, 128) if name != "vgg11_bn" else (64, 64)
    for i, x in enumerate(moving_object_frames(2, h, w, frames=4)):
        with torch.no_grad():
            expected = model(x)
        assert_close_scaled(sm(x), expected, f"{name} frame {i}")
        if i:
            assert sm.stats.macs_executed < sm.stats.macs_dense


def test_shufflenet_channel_shuffle_runs_exactly():
    """ShuffleNetV2's channel shuffle views [B, C, H, W] as [B, g, C / g, H, W]: no view of a channels-last
    activation (it crashed until views became reshapes). Its chunk / transpose run as dense fallbacks."""
    model = _build("shufflenet_v2_x0_5")
    sm = fxsparse.transform(model)
    for i, x in enumerate(moving_object_frames(2, 96, 128, frames=3)):
        with torch.no_grad():
            assert_close_scaled(sm(x), model(x), f"frame {i}")
