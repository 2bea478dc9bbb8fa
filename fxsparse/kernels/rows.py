"""``RowCache``: a [B, C, H, W] activation stored as channels-last rows.

Note [Row caches]: a spatial value lives in one buffer of shape
``[B*H*W + 2, C]``: row ``(b*H + h)*W + w`` holds the C channels of one
position, and the two extra rows are constant padding (``zero_row`` and
``neg_inf_row``). Gathering a tile window whose rows fall outside the image
simply points those positions at a padding row, so no per-frame ``F.pad`` copy
of the activation is ever made, and the NCHW view of the buffer is a
channels-last tensor that oneDNN convolves directly.
"""

from __future__ import annotations

import torch


class RowCache:
    """Cached activation of one graph node for all streams."""

    __slots__ = ("shape", "buf", "positions", "zero_row", "neg_inf_row")

    def __init__(self, shape: tuple[int, int, int, int], dtype: torch.dtype, device: torch.device | str = "cpu"):
        b, c, h, w = shape
        self.shape = (b, c, h, w)
        self.positions = b * h * w
        self.buf = torch.empty(self.positions + 2, c, dtype=dtype, device=device)
        self.zero_row = self.positions
        self.neg_inf_row = self.positions + 1
        self.buf[self.zero_row] = 0
        self.buf[self.neg_inf_row] = float("-inf")

    @classmethod
    def from_tensor(cls, x: torch.Tensor) -> RowCache:
        cache = cls(tuple(x.shape), x.dtype, x.device)
        cache.write_streams(None, x)
        return cache

    @property
    def nbytes(self) -> int:
        return self.buf.numel() * self.buf.element_size()

    def nhwc(self) -> torch.Tensor:
        b, c, h, w = self.shape
        return self.buf[: self.positions].view(b, h, w, c)

    def view(self) -> torch.Tensor:
        """The value as an NCHW tensor (channels-last strides, no copy)."""
        return self.nhwc().permute(0, 3, 1, 2)

    def write_streams(self, streams: torch.Tensor | None, value: torch.Tensor) -> None:
        """Overwrite whole streams (all when ``streams`` is None) with an NCHW ``value``."""
        if streams is None:
            self.nhwc().copy_(value.permute(0, 2, 3, 1))
        else:
            self.nhwc()[streams] = value.permute(0, 2, 3, 1)

    def read_streams(self, streams: torch.Tensor | None) -> torch.Tensor:
        view = self.view()
        return view if streams is None else view[streams]
