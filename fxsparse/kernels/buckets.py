"""Row counts rounded up to a few fixed sizes, so oneDNN reuses its compiled kernels.

Note [Shape buckets]: for bfloat16 / float16 matmuls and for every
``F.conv2d``, PyTorch's CPU backend (oneDNN) JIT-compiles a primitive per
input shape and keeps it in a cache. A sparse layer gathers a different
number of rows every frame, so without care each call pays the compile:
20-34 ms for a ``[152, 4608] x [4608, 512]`` bfloat16 matmul against 2.5 ms
once cached (measured on this project's 2-core Xeon with AMX). Padding the
row count up to the next bucket (powers of 2^(1/4), so at most 19% extra rows)
makes the shapes repeat from frame to frame. float32 matmuls go to MKL's
sgemm, which compiles nothing, so they are not padded.
"""

from __future__ import annotations

import math

import torch

_MIN_BUCKET = 16
_STEPS_PER_OCTAVE = 4


def bucket(n: int) -> int:
    """The smallest bucket size >= ``n``: 16, then 2^(k/4) rounded up to a multiple of 8."""
    if n <= _MIN_BUCKET:
        return _MIN_BUCKET
    k = math.ceil(_STEPS_PER_OCTAVE * math.log2(n) - 1e-9)
    size = math.ceil(2 ** (k / _STEPS_PER_OCTAVE) / 8) * 8
    return max(size, n)


def needs_buckets(dtype: torch.dtype) -> bool:
    """Does a matmul of this dtype JIT-compile per shape (Note [Shape buckets])?"""
    return dtype in (torch.bfloat16, torch.float16)


def pad_index(index: torch.Tensor, size: int) -> torch.Tensor:
    """``index`` (dim 0 = rows) padded to ``size`` rows by repeating its first row; callers drop the extra
    results. Repeating a real row keeps every padded gather in bounds and its values finite."""
    n = index.shape[0]
    if n >= size or n == 0:
        return index
    return torch.cat([index, index[:1].expand(size - n, *index.shape[1:])])
