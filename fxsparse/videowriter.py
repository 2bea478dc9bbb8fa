"""Write RGB frames to a video file with PyAV; always leaves a playable file when closed."""

from __future__ import annotations

from fractions import Fraction

import numpy as np


class VideoWriter:
    """``with VideoWriter(path, fps) as w: w.write(rgb_uint8)``; the encoder is flushed on close, even
    after an exception or Ctrl-C, so what was written stays playable."""

    def __init__(self, path: str, fps: float = 25.0, codec: str = "mpeg4", bit_rate: int = 4_000_000):
        import av

        self.path, self.fps, self.codec, self.bit_rate = path, fps, codec, bit_rate
        self.container = av.open(path, "w")
        self.stream = None
        self.frames = 0

    def write(self, rgb: np.ndarray) -> None:
        import av

        h, w = rgb.shape[:2]
        if self.stream is None:
            rate = Fraction(self.fps).limit_denominator(1001)
            self.stream = self.container.add_stream(self.codec, rate=rate)
            self.stream.width, self.stream.height = w - w % 2, h - h % 2  # yuv420p needs even sizes
            self.stream.pix_fmt = "yuv420p"
            self.stream.bit_rate = self.bit_rate
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb[: self.stream.height, : self.stream.width]),
                                           format="rgb24")
        for packet in self.stream.encode(frame):
            self.container.mux(packet)
        self.frames += 1

    def close(self) -> None:
        if self.container is None:
            return
        try:
            if self.stream is not None:
                for packet in self.stream.encode():
                    self.container.mux(packet)
        finally:
            self.container.close()
            self.container = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False
