"""Morphology on 0/1 masks ``[B, 1, H, W]``."""

from __future__ import annotations

import torch
import torch.nn.functional as F

_POOL_MAX_ELEMENTS = 40 * 40  # measured 3x3: 32x32 crop 0.015 (pool) vs 0.029 ms (slices), 64x64 0.072 vs 0.031


def max_filter(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """(2r+1) x (2r+1) maximum (dilation of a 0/1 mask; positions outside the image are ignored).

    Shifted elementwise maxima, 2r per axis: at 576x768 about 10x faster than ``F.max_pool2d``, whose CPU
    kernel on a single plane took 14 ms for a 3x3 filter. ``-max_filter(-m, r)`` is the erosion.
    """
    out = mask
    for dim in (2, 3):
        acc = out.clone()
        n = out.shape[dim]
        for d in range(1, min(radius, n - 1) + 1):
            head, tail = acc.narrow(dim, d, n - d), acc.narrow(dim, 0, n - d)
            torch.maximum(head, out.narrow(dim, 0, n - d), out=head)
            torch.maximum(tail, out.narrow(dim, d, n - d), out=tail)
        out = acc
    return out


def window_max(x: torch.Tensor, kernel: tuple[int, int], stride: tuple[int, int], dilation: tuple[int, int]):
    """``F.max_pool2d(x, kernel, stride, 0, dilation)`` by strided slices, separably (rows, then columns).

    For 0/1 masks (already padded as needed) this equals the pooling and avoids PyTorch's single-plane CPU
    pooling kernel, which dominated mask propagation on full-frame changes. On small crops that kernel is
    the faster one, so they take it.
    """
    if x.numel() <= _POOL_MAX_ELEMENTS:
        return F.max_pool2d(x, kernel, stride, 0, dilation)
    for dim, k, s, d in ((2, kernel[0], stride[0], dilation[0]), (3, kernel[1], stride[1], dilation[1])):
        n = x.shape[dim]
        n_out = (n - d * (k - 1) - 1) // s + 1
        acc = None
        for a in range(k):
            tap = x.narrow(dim, a * d, (n_out - 1) * s + 1)
            if s > 1:
                tap = tap[:, :, ::s, :] if dim == 2 else tap[:, :, :, ::s]
            acc = tap.clone() if acc is None else torch.maximum(acc, tap, out=acc)
        x = acc
    return x
