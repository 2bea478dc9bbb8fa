"""Small helpers shared by the rules to build and combine masks."""

from __future__ import annotations

import torch


def union(masks, out_shape) -> torch.Tensor:
    """Union of broadcastable input masks, expanded to the output's mask shape."""
    out = None
    for m in masks:
        if m is None:
            continue
        out = m if out is None else torch.maximum(out, m)
    shape = mask_shape(out_shape)
    if out is None:
        return torch.zeros(shape)
    return out.expand(shape) if tuple(out.shape) != shape else out


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
