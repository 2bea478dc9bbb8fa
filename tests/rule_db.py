"""One ``RuleCase`` per registered change rule: a one-op module and an input shape.

``tests/test_rules.py`` runs every case through the brute-force footprint
oracle and the forced-sparse equality check; a meta-test checks that every
registered rule has a case here.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from fxsparse import ops


class Fn(nn.Module):
    """Wrap a function of x (and optionally params) as a module."""

    def __init__(self, fn, **params):
        super().__init__()
        self.fn = fn
        for k, v in params.items():
            self.register_parameter(k, nn.Parameter(v))

    def forward(self, x):
        return self.fn(self, x)


@dataclass
class RuleCase:
    name: str
    target: object  # the canonical op the case exercises
    make: Callable[[], nn.Module]
    shape: tuple = (2, 3, 11, 13)
    exact_footprint: bool = True  # the predicted mask equals the brute-force footprint
    transform_kwargs: dict = field(default_factory=dict)


def _conv(**kw):
    return lambda: nn.Conv2d(3, 4, **kw)


CASES = [
    RuleCase("conv3x3", ops.conv2d, _conv(kernel_size=3, padding=1)),
    RuleCase("conv5x5_s2_d2", ops.conv2d, _conv(kernel_size=5, stride=2, padding=3, dilation=2)),
    RuleCase("conv_same_even", ops.conv2d, _conv(kernel_size=4, padding="same")),
    RuleCase("conv1x1_s2", ops.conv2d, _conv(kernel_size=1, stride=2)),
    RuleCase("conv_depthwise", ops.conv2d, lambda: nn.Conv2d(3, 3, 3, padding=1, groups=3, bias=False)),
    RuleCase("conv_grouped_tiles", ops.conv2d, lambda: nn.Conv2d(3, 6, 3, stride=2, padding=2, groups=3)),
    RuleCase("conv_relu_fused", ops.conv2d, lambda: nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())),
    RuleCase("conv_transpose", ops.conv_transpose2d,
             lambda: nn.ConvTranspose2d(3, 2, 3, stride=2, padding=1, output_padding=1)),
    RuleCase("max_pool_ceil", ops.max_pool2d, lambda: nn.MaxPool2d(3, 2, 1, ceil_mode=True)),
    RuleCase("max_pool_dilated", ops.max_pool2d, lambda: Fn(lambda m, x: F.max_pool2d(x, 2, 1, 0, 2))),
    RuleCase("avg_pool_exclude_pad", ops.avg_pool2d, lambda: nn.AvgPool2d(3, 2, 1, ceil_mode=True, count_include_pad=False)),
    RuleCase("avg_pool_include_pad", ops.avg_pool2d, lambda: nn.AvgPool2d(3, 2, 1, count_include_pad=True)),
    RuleCase("adaptive_avg_grid", ops.adaptive_avg_pool2d, lambda: nn.AdaptiveAvgPool2d((3, 4))),
    RuleCase("global_mean_keepdim", ops.spatial_mean, lambda: nn.AdaptiveAvgPool2d(1)),
    RuleCase("global_mean", ops.spatial_mean, lambda: Fn(lambda m, x: x.mean((2, 3)))),
    RuleCase("relu6", ops.activation, lambda: nn.ReLU6()),
    RuleCase("hardswish", ops.activation, lambda: Fn(lambda m, x: F.hardswish(x))),
    RuleCase("affine_bn", ops.affine, lambda: nn.Sequential(nn.ReLU(), nn.BatchNorm2d(3).eval())),
    RuleCase("prelu", ops.prelu, lambda: nn.PReLU(3)),
    RuleCase("softmax_channels", ops.softmax, lambda: nn.Softmax(dim=1)),
    RuleCase("add_broadcast", operator.add,
             lambda: Fn(lambda m, x: x + x.mean((2, 3), keepdim=True) + m.b, b=torch.randn(3, 1, 1))),
    RuleCase("sub", operator.sub, lambda: Fn(lambda m, x: x - torch.tanh(x))),
    RuleCase("mul_scalar", operator.mul, lambda: Fn(lambda m, x: x * 3.0)),
    RuleCase("div", operator.truediv, lambda: Fn(lambda m, x: x / (1.0 + x * x))),
    RuleCase("cat_channels", ops.cat, lambda: Fn(lambda m, x: torch.cat([x, torch.sigmoid(x)], 1))),
    RuleCase("upsample_nearest", ops.interpolate, lambda: nn.Upsample(scale_factor=2)),
    RuleCase("upsample_bilinear", ops.interpolate, lambda: nn.Upsample(scale_factor=3, mode="bilinear")),
    RuleCase("resize_align", ops.interpolate,
             lambda: Fn(lambda m, x: F.interpolate(x, size=(7, 20), mode="bilinear", align_corners=True))),
    RuleCase("pad", ops.pad, lambda: Fn(lambda m, x: F.pad(x, (1, 2, 0, 3), value=0.5))),
    RuleCase("cast", ops.cast, lambda: Fn(lambda m, x: x.half().float() * 3.0)),  # Note [Integer frames]
    RuleCase("flatten_linear", ops.linear, lambda: nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 5))),
    RuleCase("flatten", ops.flatten, lambda: nn.Sequential(nn.MaxPool2d(4), nn.Flatten())),
    # an opaque leaf changes as a whole: sound, deliberately not exact
    # a gate far below float noise passes exactly the positions whose value differs
    RuleCase("gate_tiny_threshold", ops.gate, lambda: nn.Sequential(nn.ReLU(), nn.Conv2d(3, 4, 3, padding=1)),
             transform_kwargs={"threshold": 1e-30}),
    RuleCase("getitem_of_leaf_tuple", operator.getitem, lambda: TupleUser(), exact_footprint=False),
]


class TupleLeaf(nn.Module):
    def forward(self, x):
        return x * 2, x + 1


class TupleUser(nn.Module):
    """A leaf module returning a tuple (a container value) and getitem on it."""

    def __init__(self):
        super().__init__()
        self.leaf = TupleLeaf()

    def forward(self, x):
        a = self.leaf(x)
        return a[0] + a[1]


LEAVES = {"getitem_of_leaf_tuple": [TupleLeaf]}
