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


def _is_live(source: str) -> bool:
    return source.isdigit() or "://" in source


def _open_video(source: str):
    try:
        import av
    except ImportError as e:
        raise SourceError("reading video needs PyAV. Hint: pip install 'fxsparse[video]'.") from e
    try:
        if source.isdigit():  # a camera index: Video4Linux device
            return av.open(f"/dev/video{source}", format="v4l2")
        return av.open(source)
    except Exception as e:  # PyAV raises several error types for unreadable inputs
        raise SourceError(f"cannot open {source!r} as a video: {e}") from e


def check_source(source: str) -> None:
    """Raise SourceError now if ``source`` cannot be read (before any output is created)."""
    if _is_live(source):
        return
    if not os.path.exists(source):
        raise SourceError(f"{source!r} does not exist. Hint: give a video file or a folder of frames.")
    if os.path.isdir(source):
        image_files(source)
    else:
        with _open_video(source):
            pass


def source_fps(source: str) -> float | None:
    """Frames per second of a video source (None for image folders or when unknown)."""
    check_source(source)
    if os.path.isdir(source) or _is_live(source):
        return None
    with _open_video(source) as container:
        rate = container.streams.video[0].average_rate
        return float(rate) if rate else None


def read_frames(source: str, *, size: tuple[int, int] | None = None, limit: int | None = None,
                start: int = 0) -> Iterator[torch.Tensor]:
    """Yield frames ``[3, H, W]`` in [0, 1] from a video file, an image folder, a camera or a stream.

    Args:
        source: a video file (anything FFmpeg reads), a folder of images, a camera index (``0`` for
            ``/dev/video0``) or a stream URL (``rtsp://...``).
        size: resize every frame to (H, W).
        limit: stop after this many frames.
        start: skip this many frames first.
    """
    check_source(source)
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
    with _open_video(source) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i < start:
                continue
            if limit is not None and count >= limit:
                return
            yield _to_tensor(frame.to_ndarray(format="rgb24"), size)
            count += 1
