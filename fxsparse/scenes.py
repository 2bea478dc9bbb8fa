"""Synthetic fixed-camera scenes: a static textured background with moving objects.

Used by the demo, the benchmarks and the tests, so nothing has to be fetched.
The changed share of each frame is set by the number and size of the objects.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F


def textured_background(height: int, width: int, *, seed: int = 0) -> torch.Tensor:
    """A smooth random texture in [0, 1], shape [3, H, W] (upsampled noise of a few scales)."""
    g = torch.Generator().manual_seed(seed)
    img = torch.zeros(1, 3, height, width)
    for scale in (4, 16, 64):
        small = torch.rand(1, 3, max(1, height // scale), max(1, width // scale), generator=g)
        img += F.interpolate(small, size=(height, width), mode="bilinear", align_corners=False)
    img -= img.amin()
    return (img / img.amax())[0]


def moving_objects(
    height: int,
    width: int,
    *,
    changed_fraction: float = 0.01,
    objects: int = 1,
    frames: int = 10,
    streams: int = 1,
    seed: int = 0,
) -> Iterator[torch.Tensor]:
    """Frames ``[streams, 3, H, W]`` in which ``objects`` squares move over a fixed background.

    Each square's side is chosen so that, between two frames, about
    ``changed_fraction`` of the pixels change (old plus new position of every
    object, which do not overlap: each moves by its own side per frame).
    """
    if not 0 < changed_fraction <= 1:
        raise ValueError(f"changed_fraction must be in (0, 1], got {changed_fraction}")
    background = torch.stack([textured_background(height, width, seed=seed + s) for s in range(streams)])
    # changed pixels per frame ~ 2 * objects * side^2
    side = max(1, int(math.sqrt(changed_fraction * height * width / (2 * objects))))
    side = min(side, height // 2, width // 2)
    g = torch.Generator().manual_seed(seed + 1000)
    starts = torch.rand(streams, objects, 2, generator=g)
    colors = torch.rand(streams, objects, 3, generator=g)
    directions = torch.where(torch.rand(streams, objects, 2, generator=g) < 0.5, -1.0, 1.0)
    for t in range(frames):
        x = background.clone()
        for s in range(streams):
            for o in range(objects):
                y0, x0 = _bounce(starts[s, o], directions[s, o], t * side, height - side, width - side)
                x[s, :, y0 : y0 + side, x0 : x0 + side] = colors[s, o].view(3, 1, 1)
        yield x


def _bounce(start, direction, travelled, max_y, max_x):
    """Position after travelling ``travelled`` pixels diagonally, bouncing off the borders."""

    def axis(u, d, limit):
        if limit <= 0:
            return 0
        p = int(u * limit + d * travelled) % (2 * limit)
        return p if p <= limit else 2 * limit - p

    return axis(float(start[0]), float(direction[0]), max_y), axis(float(start[1]), float(direction[1]), max_x)
