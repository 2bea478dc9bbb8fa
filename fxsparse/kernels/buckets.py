"""Row counts rounded up to a few fixed sizes, so oneDNN reuses its compiled kernels.

Note [Shape buckets]: for bfloat16 / float16 matmuls and for every
``F.conv2d``, PyTorch's CPU backend (oneDNN) JIT-compiles a primitive per
input shape and keeps it in a cache. A sparse layer gathers a different
number of rows every frame, so without care each call pays the compile:
20-34 ms for a ``[152, 4608] x [4608, 512]`` bfloat16 matmul against 2.5 ms
once cached (measured on this project's 2-core Xeon with AMX). Padding the
row count up to the next bucket (powers of 2^(1/4), so at most 19% extra rows)
makes the shapes repeat from frame to frame. float32 matmuls go to MKL's
sgemm, which compiles nothing, so they are not padded. float32 convs do
compile (0.3-0.6 ms for a new depthwise shape against 0.06-0.12 ms cached):
a conv on a changed box grows the box to bucket sizes (``bucket_span``).
"""

from __future__ import annotations

import math

import torch

_MIN_BUCKET = 16
_STEPS_PER_OCTAVE = 4


def bucket(n: int, minimum: int = _MIN_BUCKET, multiple: int = 8) -> int:
    """The smallest bucket size >= ``n``: ``minimum``, then 2^(k/4) rounded up to a multiple of ``multiple``."""
    if n <= minimum:
        return minimum
    k = math.ceil(_STEPS_PER_OCTAVE * math.log2(n) - 1e-9)
    size = math.ceil(2 ** (k / _STEPS_PER_OCTAVE) / multiple) * multiple
    return max(size, n)


def bucket_span(lo: int, hi: int, limit: int) -> tuple[int, int]:
    """``[lo, hi)`` grown to a bucket length (minimum 4, multiples of 4) and kept inside ``[0, limit)``:
    the extent of a box a dense conv runs on, so its shapes repeat (Note [Shape buckets])."""
    size = min(bucket(hi - lo, 4, 4), limit)
    start = max(0, min(lo, limit - size))
    return start, start + size


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
