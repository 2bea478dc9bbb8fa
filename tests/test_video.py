"""Frame sources: image folders (CDnet layout) and video files (PyAV), with clear errors."""

import numpy as np
import pytest

from fxsparse.video import SourceError, read_frames


def _write_folder(tmp_path, n=4, h=24, w=32):
    from PIL import Image

    folder = tmp_path / "clip" / "input"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(folder / f"in{i + 1:06d}.png")
    return tmp_path / "clip"


def test_image_folder_in_cdnet_layout(tmp_path):
    clip = _write_folder(tmp_path)
    frames = list(read_frames(str(clip)))
    assert len(frames) == 4 and frames[0].shape == (3, 24, 32)
    assert 0.0 <= float(frames[0].min()) and float(frames[0].max()) <= 1.0
    resized = list(read_frames(str(clip), size=(12, 16), limit=2, start=1))
    assert len(resized) == 2 and resized[0].shape == (3, 12, 16)


def test_video_file_roundtrip(tmp_path):
    av = pytest.importorskip("av")
    path = tmp_path / "clip.mp4"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(6):
            img = np.zeros((48, 64, 3), dtype=np.uint8)
            img[:, : 10 * (i + 1)] = 200
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    frames = list(read_frames(str(path)))
    assert len(frames) == 6 and frames[0].shape == (3, 48, 64)
    assert float(frames[-1][:, :, :50].mean()) > float(frames[0][:, :, :50].mean())  # the bar grew


def test_missing_and_unreadable_sources(tmp_path):
    with pytest.raises(SourceError, match="does not exist"):
        list(read_frames(str(tmp_path / "nope.mp4")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="no images"):
        list(read_frames(str(tmp_path / "empty")))
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video")
    with pytest.raises(SourceError, match="cannot open"):
        list(read_frames(str(bad)))
    assert issubclass(SourceError, ValueError)

