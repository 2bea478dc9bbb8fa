"""Conv weights reordered once into oneDNN's layout, for the convs fxsparse itself runs.

Note [Packed conv weights]: oneDNN computes a conv with its weights in a blocked layout (e.g. ``Acdb64a``
for a 1x1 conv, ``debcA16a`` for a depthwise one). PyTorch's conv ops take the plain ``[O, I, kh, kw]``
weight and reorder it on every call, with a new primitive descriptor around it; ONNX Runtime and OpenVINO
reorder once, when they load the model. Inside :func:`packed_conv_weights`, ``ops.conv2d`` calls the fused
oneDNN op with a weight reordered once per (weight, input shape) and kept in the given cache: same kernel,
same result bit for bit (tests/test_packed_weights.py), without the per-call reorder. LR-ASPP's normalized
graph at 576x768: 78.0 -> 67.8 ms; fxsparse old vs new (``benchmarks/ab_compare.py``): mobilenet_v2 fully
changed frames 0.854, 5% changed 0.952; LR-ASPP / DeepLabV3 fully changed 0.956-0.978 / 0.967; resnet50 1%
1.007 (noise).

The fused op's fixed cost is ~45 us against ~15 us for ``F.conv2d`` (tiny outputs: a squeeze-excite conv
on a 1x1 map, 25 vs 73 us), so it is used from ``PACKED_MIN_OUTPUT`` output elements on, where the crossover
was measured (1x1 convs: worse at 37K elements, better from 98K; 3x3 convs better at 33K).

The cache is the caller's (a :class:`~fxsparse.SparseModule`'s, dropped with its state on ``reset()``), so
the dense baselines fxsparse is measured against never use it. Outside the context nothing changes.
"""

from __future__ import annotations

import contextlib
import contextvars

import torch

PACKED_MIN_OUTPUT = 1 << 16

_CACHE: contextvars.ContextVar[dict | None] = contextvars.ContextVar("fxsparse_packed_conv_weights", default=None)


@contextlib.contextmanager
def packed_conv_weights(cache: dict):
    """Run convs (``ops.conv2d``) with weights packed once into ``cache`` (Note [Packed conv weights])."""
    token = _CACHE.set(cache)
    try:
        yield cache
    finally:
        _CACHE.reset(token)


def packed_weight(weight: torch.Tensor, input_shape, padding, stride, dilation, groups: int) -> torch.Tensor | None:
    """The oneDNN-layout copy of ``weight`` for a conv on ``input_shape``, or None outside
    :func:`packed_conv_weights`. A weight modified in place since (its version counter moved) is packed again."""
    cache = _CACHE.get()
    if cache is None:
        return None
    key = (id(weight), tuple(input_shape), tuple(padding), tuple(stride), tuple(dilation), groups)
    version = weight._version if not weight.is_inference() else 0  # inference tensors have no version counter
    entry = cache.get(key)
    if entry is None or entry[0] is not weight or entry[1] != version:
        packed = torch.ops.mkldnn._reorder_convolution_weight(
            weight, list(padding), list(stride), list(dilation), groups, list(input_shape))
        entry = cache[key] = (weight, version, packed)  # the weight is kept: its id stays its own
    return entry[2]
