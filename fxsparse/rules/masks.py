"""Helpers shared by the rules to build and combine masks.

Note [Mask boxes]: a frame's changes usually cover a small part of each
layer, so every spatial mask carries the bounding box of its changed
positions (rows ``y0:y1``, columns ``x0:x1``, all streams together). Rules
that know the box analytically (windows, unions) compute the mask only
inside it; positions and counts are read from the box alone; and mask
buffers are reused across frames, clearing only last frame's box. Cost of a
mask op is then proportional to the changed area, not to the frame.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..kernels import native
from ..kernels.morphology import window_max

Box = tuple[int, int, int, int]  # y0, y1, x0, x1 (end exclusive)


def mask_shape(value_shape) -> tuple:
    """Mask shape of a value: ``[B, 1, H, W]`` for spatial values, ``[B, 1]`` otherwise."""
    if len(value_shape) == 4:
        return (value_shape[0], 1, value_shape[2], value_shape[3])
    return (value_shape[0], 1)


def per_stream(mask: torch.Tensor) -> torch.Tensor:
    """``[B, 1]`` mask: did anything in each stream change."""
    return mask.flatten(1).amax(1, keepdim=True)


def changed_streams(mask: torch.Tensor) -> torch.Tensor:
    """Indices of the streams with any change."""
    return per_stream(mask).view(-1).nonzero().view(-1)


def box_of(mask: torch.Tensor) -> Box | None:
    """Bounding box of the non-zero entries of a ``[B, 1, H, W]`` mask (None when empty)."""
    found = native.mask_box(mask)  # Note [Native mask box]
    if found is not False:
        return found
    rows = mask.amax((0, 1, 3)).nonzero()
    if len(rows) == 0:
        return None
    cols = mask.amax((0, 1, 2)).nonzero()
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def box_union(boxes) -> Box | None:
    boxes = [b for b in boxes if b is not None]
    if not boxes:
        return None
    return min(b[0] for b in boxes), max(b[1] for b in boxes), min(b[2] for b in boxes), max(b[3] for b in boxes)


def window_out_range(lo: int, hi: int, k: int, s: int, pad: int, d: int, n_out: int) -> tuple[int, int]:
    """Output index range [o0, o1) whose windows (kernel k, stride s, leading pad, dilation d) touch inputs [lo, hi)."""
    o0 = -((-(lo + pad - (k - 1) * d)) // s)  # ceil division
    o1 = (hi - 1 + pad) // s + 1
    return max(o0, 0), min(o1, n_out)


def window_footprint(mask, box: Box, out, kernel, stride, pad_top_left, dilation, full=False,
                     counts: list | None = None, stale: Box | None = None) -> Box | None:
    """Write ``max over window`` of ``mask`` into ``out`` inside the box it can reach; return that box.

    Zero padding is explicit (taps outside the input read 0), which gives the
    footprint of convolutions and of pools (any padding, ceil_mode) alike.
    ``full``: every input position changed, so every output did (no pooling needed).
    ``counts``: a list that receives each stream's changed outputs when they came for free (the native
    kernel counts as it writes); left empty otherwise. ``stale``: a box of ``out`` that may still hold last
    frame's ones (``out`` is zero elsewhere); it is cleared, by the native kernel in the same pass (it writes
    the union of both boxes: zeros where no window reads a change).
    """
    _, _, h, w = mask.shape
    _, _, ho, wo = out.shape
    if full:
        out.fill_(1.0)
        return 0, ho, 0, wo
    (kh, kw), (sh, sw), (pt, pl), (dh, dw) = kernel, stride, pad_top_left, dilation
    oy0, oy1 = window_out_range(box[0], box[1], kh, sh, pt, dh, ho)
    ox0, ox1 = window_out_range(box[2], box[3], kw, sw, pl, dw, wo)
    if oy0 >= oy1 or ox0 >= ox1:
        clear_box(out, stale)
        return None
    counted = None if counts is None else torch.empty(mask.shape[0], dtype=torch.int64)
    written = box_union([(oy0, oy1, ox0, ox1), stale])
    if native.window_max(mask, out, kernel, stride, pad_top_left, dilation, written, counted):
        if counts is not None:
            counts.extend(counted.tolist())
        return oy0, oy1, ox0, ox1  # Note [Native mask footprint]: no crop, pad or pooling passes
    clear_box(out, stale)
    # input rows/cols read by those outputs, in input coordinates
    iy0, iy1 = oy0 * sh - pt, (oy1 - 1) * sh - pt + (kh - 1) * dh + 1
    ix0, ix1 = ox0 * sw - pl, (ox1 - 1) * sw - pl + (kw - 1) * dw + 1
    crop = mask[:, :, max(iy0, 0) : min(iy1, h), max(ix0, 0) : min(ix1, w)]
    padding = (max(-ix0, 0), max(ix1 - w, 0), max(-iy0, 0), max(iy1 - h, 0))
    if any(padding):  # a copy; most boxes stay inside the image (24 pads per mobilenet_v2 frame, 0.65 ms)
        crop = F.pad(crop, padding)
    out[:, :, oy0:oy1, ox0:ox1] = window_max(crop, (kh, kw), (sh, sw), (dh, dw))
    return oy0, oy1, ox0, ox1


def clear_box(out: torch.Tensor, box: Box | None) -> None:
    """Zero ``box`` of every stream of mask ``out`` (nothing for None)."""
    if box is not None:
        out[:, :, box[0] : box[1], box[2] : box[3]] = 0


def union(masks, out_shape) -> torch.Tensor:
    """Union of broadcastable ``[B, 1]`` row masks (None entries never change)."""
    out = None
    for m in masks:
        if m is None:
            continue
        out = m if out is None else torch.maximum(out, m)
    shape = mask_shape(out_shape)
    if out is None:
        return torch.zeros(shape)
    return out.expand(shape) if tuple(out.shape) != shape else out


def spatial_union(ctx, node, inputs, out_shape) -> torch.Tensor:
    """Union of the inputs' spatial masks (with broadcasting), computed inside the union of their boxes."""
    shape = mask_shape(out_shape)
    out = ctx.mask_buffer(node, shape)
    _, _, h, w = shape
    parts, boxes = [], []
    for n in inputs:
        m = ctx.mask(n)
        if m is None:
            continue
        if m.shape[2:] == (h, w):
            box = ctx.box(n)
        else:  # a broadcast [B, 1, 1, 1] vector mask changes its streams everywhere
            box = (0, h, 0, w) if bool(m.any()) else None
        if box is not None:
            parts.append(m.expand(shape))
            boxes.append(box)
    box = box_union(boxes)
    ctx.set_box(node, box)
    if box is not None:
        y0, y1, x0, x1 = box
        region = out[:, :, y0:y1, x0:x1]
        for m in parts:
            torch.maximum(region, m[:, :, y0:y1, x0:x1], out=region)
    return out


def mask_contains(ctx, a, b, depth: int = 8) -> bool:
    """Is node ``b``'s change mask inside node ``a``'s on every frame? Decided from the graph, by the rules'
    ``covers`` (Note [Residual inside]); False when unsure (a gate, an op without ``covers``, deep paths)."""
    if a is b:
        return True
    step = ctx.step_of(a)
    if depth == 0 or step is None or step.rule.covers is None:
        return False
    return any(mask_contains(ctx, n, b, depth - 1) for n in step.rule.covers(step, ctx))
