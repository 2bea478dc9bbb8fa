"""Frame sources: video files (PyAV) and image-sequence folders (CDnet layout), as float tensors.

PyAV decodes with its own bundled FFmpeg libraries (no ``ffmpeg`` binary needed) and is in the
``video`` extra; image folders need only Pillow.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from .errors import FxSparseError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


class SourceError(FxSparseError, ValueError):
    """A frame source cannot be opened or read."""


def _to_tensor(rgb: np.ndarray, size: tuple[int, int] | None) -> torch.Tensor:
    x = torch.from_numpy(np.array(rgb, copy=True)).permute(2, 0, 1).float().div_(255.0)  # PIL arrays are read-only
    if size is not None and tuple(x.shape[1:]) != tuple(size):
        x = F.interpolate(x[None], size=size, mode="bilinear", align_corners=False, antialias=True)[0]
    return x


def image_files(folder: str) -> list[str]:
    """The frames of an image-sequence folder, sorted (CDnet: ``folder/input/in000001.jpg``...)."""
    base = os.path.join(folder, "input") if os.path.isdir(os.path.join(folder, "input")) else folder
    files = sorted(f for f in glob.glob(os.path.join(base, "*")) if f.lower().endswith(IMAGE_SUFFIXES))
    if not files:
        raise SourceError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {base!r}. Hint: point at a folder of frames.")
    return files


def read_frames(source: str, *, size: tuple[int, int] | None = None, limit: int | None = None,
                start: int = 0) -> Iterator[torch.Tensor]:
    """Yield frames ``[3, H, W]`` in [0, 1] from a video file or an image folder.

    Args:
        source: a video file (anything FFmpeg reads) or a folder of images.
        size: resize every frame to (H, W).
        limit: stop after this many frames.
        start: skip this many frames first.
    """
    if not os.path.exists(source):
        raise SourceError(f"{source!r} does not exist. Hint: give a video file or a folder of frames.")
    count = 0
    if os.path.isdir(source):
        from PIL import Image

        for path in image_files(source)[start:]:
            if limit is not None and count >= limit:
                return
            with Image.open(path) as im:
                yield _to_tensor(np.asarray(im.convert("RGB")), size)
            count += 1
        return
    try:
        import av
    except ImportError as e:
        raise SourceError("reading video files needs PyAV. Hint: pip install 'fxsparse[video]'.") from e
    try:
        container = av.open(source)
    except Exception as e:  # PyAV raises several error types for unreadable files
        raise SourceError(f"cannot open {source!r} as a video: {e}") from e
    with container:
        for i, frame in enumerate(container.decode(video=0)):
            if i < start:
                continue
            if limit is not None and count >= limit:
                return
            yield _to_tensor(frame.to_ndarray(format="rgb24"), size)
            count += 1
