"""Tile geometry and the gather / scatter of tile windows and single positions.

All functions take and return plain tensors; flat indices address rows of a
:class:`~fxsparse.kernels.rows.RowCache` buffer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def active_tiles(mask: torch.Tensor, tile_h: int, tile_w: int):
    """Tiles of ``tile_h x tile_w`` output positions that contain a changed position.

    Args:
        mask: ``[B, 1, H, W]`` float mask (non-zero = changed).

    Returns:
        ``(b, oy, ox)``: stream index and top-left output position of each tile.
        Edge tiles are shifted inward (``oy <= H - tile_h``) so every tile lies
        inside the output; overlapping writes compute identical values.
    """
    _, _, h, w = mask.shape
    tiled = F.max_pool2d(mask, (tile_h, tile_w), (tile_h, tile_w), ceil_mode=True)
    b, _, ty, tx = tiled.nonzero(as_tuple=True)
    oy = (ty * tile_h).clamp_(max=h - tile_h)
    ox = (tx * tile_w).clamp_(max=w - tile_w)
    return b, oy, ox


def window_rows(
    b: torch.Tensor,
    oy: torch.Tensor,
    ox: torch.Tensor,
    *,
    stride: tuple[int, int],
    pad_top_left: tuple[int, int],
    window: tuple[int, int],
    in_hw: tuple[int, int],
    pad_row: int,
) -> torch.Tensor:
    """Flat input-row indices ``[N, win_h, win_w]`` of the windows that produce each tile.

    Positions outside the input point at ``pad_row`` (zero or -inf padding).
    """
    h, w = in_hw
    rows = oy[:, None] * stride[0] - pad_top_left[0] + torch.arange(window[0])
    cols = ox[:, None] * stride[1] - pad_top_left[1] + torch.arange(window[1])
    flat = (b[:, None, None] * h + rows[:, :, None]) * w + cols[:, None, :]
    outside = ((rows < 0) | (rows >= h))[:, :, None] | ((cols < 0) | (cols >= w))[:, None, :]
    return flat.masked_fill_(outside, pad_row)


def tile_rows(b: torch.Tensor, oy: torch.Tensor, ox: torch.Tensor, tile: tuple[int, int], out_hw: tuple[int, int]):
    """Flat output-row indices ``[N, tile_h, tile_w]`` of each tile."""
    h, w = out_hw
    rows = oy[:, None] + torch.arange(tile[0])
    cols = ox[:, None] + torch.arange(tile[1])
    return (b[:, None, None] * h + rows[:, :, None]) * w + cols[:, None, :]


def gather_windows(buf: torch.Tensor, flat: torch.Tensor) -> torch.Tensor:
    """Gather ``[N, h, w]`` rows of ``buf`` into an NCHW (channels-last) batch ``[N, C, h, w]``."""
    n, h, w = flat.shape
    return buf.index_select(0, flat.view(-1)).view(n, h, w, -1).permute(0, 3, 1, 2)


def scatter_tiles(buf: torch.Tensor, flat: torch.Tensor, tiles: torch.Tensor) -> None:
    """Write NCHW ``tiles`` ``[N, C, h, w]`` into the rows ``flat`` ``[N, h, w]`` of ``buf``."""
    rows = tiles.permute(0, 2, 3, 1).reshape(-1, tiles.shape[1])
    buf.index_copy_(0, flat.view(-1), rows)


def positions(mask: torch.Tensor) -> torch.Tensor:
    """Flat indices of the changed positions of a ``[B, 1, H, W]`` mask."""
    return mask.view(-1).nonzero().view(-1)


def broadcast_rows(pos: torch.Tensor, out_shape, in_shape) -> torch.Tensor:
    """Map flat output positions to flat rows of a broadcast input (size-1 dims repeat)."""
    _, _, h, w = out_shape
    bi, _, hi, wi = in_shape
    if (hi, wi) == (h, w) and bi == out_shape[0]:
        return pos
    b = pos // (h * w)
    y = (pos // w) % h
    x = pos % w
    b = b if bi > 1 else torch.zeros_like(b)
    y = y if hi > 1 else torch.zeros_like(y)
    x = x if wi > 1 else torch.zeros_like(x)
    return (b * hi + y) * wi + x


def kernel_offsets(kernel: tuple[int, int], dilation: tuple[int, int], pad_top_left: tuple[int, int]):
    """Row and column offsets ``[K]`` of the K = kh*kw taps of a window, relative to ``y*stride``."""
    kh, kw = kernel
    rows = torch.arange(kh).repeat_interleave(kw) * dilation[0] - pad_top_left[0]
    cols = torch.arange(kw).repeat(kh) * dilation[1] - pad_top_left[1]
    return rows, cols


def neighbour_rows(pos, out_hw, in_hw, stride, offsets, pad_row: int) -> torch.Tensor:
    """Flat input rows ``[N, K]`` read by the window of each output position (im2col indices).

    Taps outside the input point at ``pad_row``.
    """
    ho, wo = out_hw
    h, w = in_hw
    b, y, x = pos // (ho * wo), (pos // wo) % ho, pos % wo
    rows = (y * stride[0])[:, None] + offsets[0]
    cols = (x * stride[1])[:, None] + offsets[1]
    flat = (b[:, None] * h + rows) * w + cols
    return flat.masked_fill_((rows < 0) | (rows >= h) | (cols < 0) | (cols >= w), pad_row)
