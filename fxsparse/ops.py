"""Canonical ops: the one functional spelling of every op fxsparse understands.

``normalize.canonicalize`` rewrites module calls (``nn.Conv2d``), functionals
(``F.relu``), tensor methods (``x.relu()``) and in-place forms (``relu_``,
``+=``) into calls of the functions below, with all hyper-parameters resolved to
plain tuples. The normalized graph still runs densely (it is an ordinary
``GraphModule``), and change rules are keyed by these functions alone.
"""

from __future__ import annotations

import operator

import torch
import torch.nn.functional as F

from .kernels import native
from .packed_weights import PACKED_MIN_OUTPUT, packed_weight

# -- activations ---------------------------------------------------------------
# An activation is named by a hashable spec: (name, *params).

_ACTIVATIONS = {
    "relu": lambda x: F.relu(x),
    "hardtanh": lambda x, lo, hi: F.hardtanh(x, lo, hi),  # relu6 is ("hardtanh", 0.0, 6.0)
    "leaky_relu": lambda x, slope: F.leaky_relu(x, slope),
    "elu": lambda x, alpha: F.elu(x, alpha),
    "hardswish": lambda x: F.hardswish(x),
    "hardsigmoid": lambda x: F.hardsigmoid(x),
    "sigmoid": lambda x: torch.sigmoid(x),
    "silu": lambda x: F.silu(x),
    "mish": lambda x: F.mish(x),
    "gelu": lambda x, approximate: F.gelu(x, approximate=approximate),
    "tanh": lambda x: torch.tanh(x),
}
ACTIVATION_NAMES = frozenset(_ACTIVATIONS)

# In-place forms, for results the caller owns (a conv's or GEMM's fresh output): no second
# full-size tensor is allocated and streamed.
_ACTIVATIONS_INPLACE = {
    "relu": lambda x: x.relu_(),
    "hardtanh": lambda x, lo, hi: F.hardtanh(x, lo, hi, inplace=True),
    "leaky_relu": lambda x, slope: F.leaky_relu(x, slope, inplace=True),
    "elu": lambda x, alpha: F.elu(x, alpha, inplace=True),
    "hardswish": lambda x: F.hardswish(x, inplace=True),
    "hardsigmoid": lambda x: F.hardsigmoid(x, inplace=True),
    "sigmoid": lambda x: x.sigmoid_(),
    "silu": lambda x: F.silu(x, inplace=True),
    "mish": lambda x: F.mish(x, inplace=True),
    "tanh": lambda x: x.tanh_(),
}


def apply_activation(x: torch.Tensor, spec: tuple | None) -> torch.Tensor:
    """Apply the activation named by ``spec`` (or nothing when ``spec`` is None)."""
    if spec is None:
        return x
    return _ACTIVATIONS[spec[0]](x, *spec[1:])


def apply_activation_(x: torch.Tensor, spec: tuple | None) -> torch.Tensor:
    """``apply_activation`` in place where the op has an in-place form (``x`` must be owned by the caller)."""
    if spec is None:
        return x
    fn = _ACTIVATIONS_INPLACE.get(spec[0])
    return fn(x, *spec[1:]) if fn is not None else _ACTIVATIONS[spec[0]](x, *spec[1:])


def activation(x: torch.Tensor, spec: tuple) -> torch.Tensor:
    """Pointwise activation ``spec`` = (name, *params)."""
    return _ACTIVATIONS[spec[0]](x, *spec[1:])


# -- window ops (their output position depends on a k x k input window) --------


def conv2d(x, weight, bias, stride, padding, dilation, groups, act=None, residual=None):
    """Conv with explicit (top, bottom, left, right) zero padding, then ``+ residual``, then the activation."""
    top, bottom, left, right = padding
    if top != bottom or left != right:
        x, top, left = F.pad(x, (left, right, top, bottom)), 0, 0
    fused = _onednn_conv(x, weight, bias, stride, (top, left), dilation, groups, act, residual)
    if fused is not None:
        return fused
    y = F.conv2d(x, weight, bias, stride, (top, left), dilation, groups)
    if residual is not None:
        y = y.add_(residual) if residual.shape == y.shape else y + residual
    return apply_activation_(y, act)  # y is fresh: activate in place


# Note [Fused conv epilogues]: oneDNN applies an activation (and adds a residual) while the conv's output is
# still in registers; PyTorch eager runs them as separate passes over the whole output (MobileNetV2's
# relu6 after a 144-channel 144x192 depthwise conv: 1.54 -> 1.04 ms here). Only activations whose fused
# result is PyTorch's (tests/test_fused_conv.py): the sparse paths apply PyTorch's own, and positions
# computed either way must agree. relu, relu6 and leaky_relu agree bit for bit; hardswish to float
# rounding (relative 1e-7, the size of a reassociated sum; MobileNetV3's full frames 0.93x with it);
# sigmoid, silu, gelu and tanh are left to PyTorch. Inference only: the fused op has no autograd.
_ONEDNN_UNARY = {
    "relu": lambda: ("relu", [], ""),
    "hardtanh": lambda lo, hi: ("hardtanh", [lo, hi], ""),
    "leaky_relu": lambda slope: ("leaky_relu", [slope], ""),
    "hardswish": lambda: ("hardswish", [], ""),
}
# The fused op costs ~20-45 us more per call than F.conv2d on small outputs (a 24->144 1x1 conv on 16x16:
# 69 vs 24 us) and saves a pass over the output on large ones: fused from this many output elements on
FUSE_MIN_OUTPUT = 1 << 19
_ONEDNN = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise")


def _onednn_conv(x, weight, bias, stride, padding, dilation, groups, act, residual):
    """``act(conv(x) + residual)`` as one oneDNN call, or None where that is not available or not exact."""
    if not _ONEDNN or x.dtype not in (torch.float32, torch.bfloat16) or weight.dtype != x.dtype or \
            x.device.type != "cpu" or x.dim() != 4:
        return None
    if act is not None and act[0] not in _ONEDNN_UNARY:
        return None
    if x.dtype == torch.bfloat16 and (residual is not None or (act is not None and act[0] not in ("relu", "hardtanh"))):
        return None  # oneDNN adds / scales before rounding to bfloat16, PyTorch after: a bfloat16 ulp apart
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad):
        return None
    if torch.jit.is_tracing():
        return None  # an export (Note [Tail engines]) records F.conv2d and the activation, which engines know
    geometry = zip(x.shape[2:], padding, dilation, weight.shape[2:], stride)
    out_shape = (x.shape[0], weight.shape[0]) + tuple((n + 2 * p - d * (k - 1) - 1) // s + 1 for n, p, d, k, s in geometry)
    if residual is not None and (act not in (None, ("relu",)) or residual.dtype != x.dtype or
                                 tuple(residual.shape) != out_shape or
                                 not (x.is_contiguous(memory_format=torch.channels_last) and
                                      residual.is_contiguous(memory_format=torch.channels_last))):
        return None  # oneDNN's binary fusion takes relu only after the add; shapes and layouts must match
    out_elements = out_shape[0] * out_shape[1] * out_shape[2] * out_shape[3]
    packed = None
    if out_elements >= PACKED_MIN_OUTPUT:  # Note [Packed conv weights]
        packed = packed_weight(weight, x.shape, padding, stride, dilation, groups)
    if packed is None and (out_elements < FUSE_MIN_OUTPUT or (act is None and residual is None)):
        return None  # nothing to fuse: F.conv2d is the same oneDNN kernel
    weight = weight if packed is None else packed
    unary, scalars, algorithm = _ONEDNN_UNARY[act[0]](*act[1:]) if act is not None else (None, [], None)
    padding, stride, dilation = list(padding), list(stride), list(dilation)
    if residual is None:
        return torch.ops.mkldnn._convolution_pointwise(
            x, weight, bias, padding, stride, dilation, groups, unary or "none", scalars, algorithm or "")
    return torch.ops.mkldnn._convolution_pointwise.binary(
        x, residual, weight, bias, padding, stride, dilation, groups, "add", 1.0, unary, scalars, algorithm)


def conv_transpose2d(x, weight, bias, stride, padding, output_padding, groups, dilation):
    return F.conv_transpose2d(x, weight, bias, stride, padding, output_padding, groups, dilation)


def max_pool2d(x, kernel_size, stride, padding, dilation, ceil_mode):
    return F.max_pool2d(x, kernel_size, stride, padding, dilation, ceil_mode)


def avg_pool2d(x, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override):
    return F.avg_pool2d(x, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override)


def adaptive_avg_pool2d(x, output_size):
    return F.adaptive_avg_pool2d(x, output_size)


# -- global ops ----------------------------------------------------------------


def spatial_mean(x, keepdim):
    """Mean over H and W (``adaptive_avg_pool2d(x, 1)``, ``x.mean((2, 3))``)."""
    return x.mean((2, 3), keepdim=keepdim)


# -- pointwise -----------------------------------------------------------------


def affine(x, scale, shift):
    """Per-channel ``x * scale + shift`` (an eval-mode BatchNorm that was not folded)."""
    shape = (1, -1) + (1,) * (x.dim() - 2)
    return x * scale.view(shape) + shift.view(shape)


def prelu(x, weight):
    """PReLU with one slope per channel (or one for all)."""
    return F.prelu(x, weight)


def softmax(x, dim, log):
    """Softmax (or log-softmax) along ``dim``; along channels it is pointwise per position."""
    return F.log_softmax(x, dim) if log else F.softmax(x, dim)


BINARY_OPS = (operator.add, operator.sub, operator.mul, operator.truediv)


def cat(tensors, dim):
    return torch.cat(tensors, dim)


# -- resampling ----------------------------------------------------------------


def interpolate(x, size, scale_factor, mode, align_corners, recompute_scale_factor):
    return F.interpolate(
        x,
        size=size,
        scale_factor=scale_factor,
        mode=mode,
        align_corners=align_corners,
        recompute_scale_factor=recompute_scale_factor,
    )


def interpolate_into(out, x, size, scale_factor, mode, align_corners, recompute_scale_factor) -> bool:
    """``interpolate`` written into ``out`` (its output shape, NCHW-contiguous) for nearest and bilinear
    (without antialias); False, and nothing written, otherwise. Why: a fresh 37 MB segmentation map costs ~9k
    page faults per frame here; ``out`` is reused. Bilinear float32 runs the native kernel (Note [Native
    bilinear upsample]: PyTorch's arithmetic in its order, equal to ``F.interpolate`` up to float rounding, 1.3
    vs 7.3 ms for a 21-class 576x768 map); otherwise aten's ``out=`` kernel, the one ``F.interpolate`` calls,
    with the same arguments: identical values (tests/test_direct_outputs.py)."""
    if mode not in ("nearest", "bilinear") or x.dim() != 4 or out.dim() != 4:
        return False
    hw = tuple(out.shape[2:])
    if size is not None or recompute_scale_factor:
        scales = (None, None)  # the kernel derives them from the sizes, as F.interpolate has it do
    else:
        s = tuple(scale_factor) if isinstance(scale_factor, (tuple, list)) else (scale_factor, scale_factor)
        scales = (float(s[0]), float(s[1]))
    if mode == "bilinear" and native.upsample_bilinear(x, out, bool(align_corners), scales):
        return True
    if mode == "bilinear":
        torch._C._nn.upsample_bilinear2d(x, hw, bool(align_corners), *scales, out=out)  # None: False, as there
    else:
        torch._C._nn.upsample_nearest2d(x, hw, *scales, out=out)
    return True


def pad(x, pad, value):
    """Constant padding, ``pad`` = (left, right, top, bottom); negative entries crop."""
    return F.pad(x, pad, "constant", value)


def cast(x, dtype):
    """``x.to(dtype)``: integer frames (decoded uint8 video) converted inside the model (Note [Integer
    frames], fxsparse/pixels.py)."""
    return x.to(dtype)


# -- thresholds ----------------------------------------------------------------


def gate(x, threshold, test="max"):
    """Identity when run densely. Sparse runs pass on only the positions whose value moved by more
    than ``threshold`` since the last value the gate let through, the move being the max (``test="max"``)
    or the mean (``"mean"``) over channels of the absolute change (rules/gate.py)."""
    return x


# -- per-row ops (batch rows are independent; no spatial structure) ------------


def flatten(x, start_dim, end_dim):
    return torch.flatten(x, start_dim, end_dim)


def linear(x, weight, bias):
    return F.linear(x, weight, bias)
