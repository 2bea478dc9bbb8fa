"""Tile geometry and the gather / scatter of tile windows and single positions.

All functions take and return plain tensors; flat indices address rows of a
:class:`~fxsparse.kernels.rows.RowCache` buffer.

Note [Padding by fill]: a window tap outside the image has no row. Index
builders clamp it to row 0 and return a boolean ``outside`` mask (or None
when every tap is inside); ``gather`` then overwrites those entries with the
padding value (0, or -inf for max pooling). Only border windows pay for it.
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


def _clamp_outside(flat: torch.Tensor, outside: torch.Tensor):
    """(indices with outside taps pointing at row 0, outside mask or None)."""
    if not bool(outside.any()):
        return flat, None
    return flat.masked_fill_(outside, 0), outside


def gather(buf: torch.Tensor, flat: torch.Tensor, outside: torch.Tensor | None, fill: float) -> torch.Tensor:
    """Rows ``buf[flat]`` shaped ``flat.shape + [C]``; taps marked ``outside`` hold ``fill``."""
    out = buf.index_select(0, flat.reshape(-1)).view(*flat.shape, buf.shape[1])
    if outside is not None:
        out.masked_fill_(outside.unsqueeze(-1), fill)  # broadcast fill: no boolean-index scatter
    return out


def window_rows(
    b: torch.Tensor,
    oy: torch.Tensor,
    ox: torch.Tensor,
    *,
    stride: tuple[int, int],
    pad_top_left: tuple[int, int],
    window: tuple[int, int],
    in_hw: tuple[int, int],
):
    """Flat input-row indices ``[N, win_h, win_w]`` of the windows that produce each tile, and the outside mask."""
    h, w = in_hw
    rows = oy[:, None] * stride[0] - pad_top_left[0] + torch.arange(window[0])
    cols = ox[:, None] * stride[1] - pad_top_left[1] + torch.arange(window[1])
    flat = (b[:, None, None] * h + rows[:, :, None]) * w + cols[:, None, :]
    outside = ((rows < 0) | (rows >= h))[:, :, None] | ((cols < 0) | (cols >= w))[:, None, :]
    return _clamp_outside(flat, outside)


def tile_rows(b: torch.Tensor, oy: torch.Tensor, ox: torch.Tensor, tile: tuple[int, int], out_hw: tuple[int, int]):
    """Flat output-row indices ``[N, tile_h, tile_w]`` of each tile."""
    h, w = out_hw
    rows = oy[:, None] + torch.arange(tile[0])
    cols = ox[:, None] + torch.arange(tile[1])
    return (b[:, None, None] * h + rows[:, :, None]) * w + cols[:, None, :]


def gather_windows(buf: torch.Tensor, flat: torch.Tensor, outside: torch.Tensor | None, fill: float) -> torch.Tensor:
    """Gather ``[N, h, w]`` rows of ``buf`` into an NCHW (channels-last) batch ``[N, C, h, w]``."""
    return gather(buf, flat, outside, fill).permute(0, 3, 1, 2)


def scatter_tiles(buf: torch.Tensor, flat: torch.Tensor, tiles: torch.Tensor) -> None:
    """Write NCHW ``tiles`` ``[N, C, h, w]`` into the rows ``flat`` ``[N, h, w]`` of ``buf``."""
    rows = tiles.permute(0, 2, 3, 1).reshape(-1, tiles.shape[1])
    buf.index_copy_(0, flat.view(-1), rows)


def positions(mask: torch.Tensor) -> torch.Tensor:
    """Flat indices of the changed positions of a ``[B, 1, H, W]`` mask."""
    return mask.reshape(-1).nonzero().view(-1)


def positions_in_box(mask: torch.Tensor, box) -> torch.Tensor:
    """Flat indices (into the whole ``[B, 1, H, W]`` mask) of the changed positions inside ``box``."""
    _, _, h, w = mask.shape
    y0, y1, x0, x1 = box
    if (y0, y1, x0, x1) == (0, h, 0, w):
        return positions(mask)
    b, _, y, x = mask[:, :, y0:y1, x0:x1].nonzero(as_tuple=True)
    return (b * h + y + y0) * w + x + x0


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


def neighbour_rows(pos, out_hw, in_hw, stride, offsets):
    """Flat input rows ``[N, K]`` read by the window of each output position (im2col indices), and the outside mask."""
    ho, wo = out_hw
    h, w = in_hw
    b, y, x = pos // (ho * wo), (pos // wo) % ho, pos % wo
    rows = (y * stride[0])[:, None] + offsets[0]
    cols = (x * stride[1])[:, None] + offsets[1]
    flat = (b[:, None] * h + rows) * w + cols
    return _clamp_outside(flat, (rows < 0) | (rows >= h) | (cols < 0) | (cols >= w))
