"""Note [Integer frames]: feeding decoded video (uint8) straight to a transformed model.

A video decoder hands out uint8 frames; the usual pipeline converts them to float and normalizes before
the model. fxsparse instead takes the integer frame itself when the model starts with the conversion
(``x.float()``, ``x.to(torch.float32)``: ``ops.cast``, a pointwise rule like any other), for example
``nn.Sequential(fxsparse.PixelNormalize(mean, std), model)``:

* the per-frame change test reads 1 byte per channel and pixel instead of 4: comparing two 576x768 frames
  bit for bit costs 0.11 ms instead of 0.40 ms with cold caches (measured here), so an unchanged frame of
  a light model drops well under 1% of its dense cost;
* the held reference frame is 4x smaller, and the conversion runs only where pixels changed;
* exactness is as before: every output equals the dense run of the same model on the same uint8 frames,
  and an input threshold is in the frame's own units (0-255 for uint8).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class PixelNormalize(nn.Module):
    """``(x * scale - mean) / std`` per channel: integer frames ``[B, C, H, W]`` (uint8 video) to the
    normalized float input a torchvision-style model expects. Put it in front of the model
    (``nn.Sequential(PixelNormalize(), model)``) and feed the decoder's frames as they are.

    Computed as ``x.float() * (scale / std) + (-mean / std)``: two pointwise steps after the conversion
    instead of three (equal to the textbook form up to float rounding, ~1e-7 relative)."""

    def __init__(self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                 scale: float = 1 / 255):
        super().__init__()
        if len(mean) != len(std):
            raise ValueError(f"mean and std need one value per channel, got {len(mean)} and {len(std)}.")
        if any(s == 0 for s in std):
            raise ValueError(f"std must be non-zero, got {tuple(std)}.")
        mean64, std64 = torch.tensor(mean, dtype=torch.float64), torch.tensor(std, dtype=torch.float64)
        self.register_buffer("gain", (scale / std64).float().view(1, -1, 1, 1))
        self.register_buffer("offset", (-mean64 / std64).float().view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.float() * self.gain + self.offset


def to_pixels(frame: torch.Tensor) -> torch.Tensor:
    """A float frame in [0, 1] as uint8 pixels (rounded), e.g. for tests and the benchmark's ``--uint8`` scene."""
    return frame.clamp(0, 1).mul(255).round().to(torch.uint8)
