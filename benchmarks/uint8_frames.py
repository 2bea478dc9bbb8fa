"""Float frames against uint8 frames on the same model, in one process, alternating (Note [Integer frames]).

    python benchmarks/uint8_frames.py --model mobilenet_v2 --fraction 0.01

The float side is the model fed normalized float32 frames; the uint8 side is
``nn.Sequential(fxsparse.PixelNormalize(), model)`` fed the same scene as uint8 pixels. Each frame is timed
twice on each side: as a changed frame, then again as an unchanged one (medians, ms).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch
from torch import nn

import fxsparse
from fxsparse.bench import synthetic_frames
from fxsparse.pixels import IMAGENET_MEAN, IMAGENET_STD, to_pixels

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from run_bench import build  # noqa: E402  (the benchmark's model lookup: random weights)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="mobilenet_v2")
    p.add_argument("--fraction", type=float, default=0.01)
    p.add_argument("--size", default="576x768")
    p.add_argument("--frames", type=int, default=24, help="timed frames (after 6 untimed ones)")
    args = p.parse_args(argv)
    h, w = (int(v) for v in args.size.lower().split("x"))
    model = build(args.model)
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    scene = synthetic_frames(h, w, args.fraction, args.frames + 6)
    sides = {
        "float": (fxsparse.transform(model), [(f - mean) / std for f in scene]),
        "uint8": (fxsparse.transform(nn.Sequential(fxsparse.PixelNormalize(), model).eval()),
                  [to_pixels(f) for f in scene]),
    }
    times = {(side, kind): [] for side in sides for kind in ("changed", "unchanged")}
    with torch.inference_mode():
        for i in range(len(scene)):
            for side, (sm, frames) in sides.items():
                for kind in ("changed", "unchanged"):
                    t = time.perf_counter()
                    sm(frames[i])
                    if i >= 6:
                        times[side, kind].append(time.perf_counter() - t)
    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    print(f"{args.model} {args.size}, {args.fraction:.0%} changed, {args.frames} frames (median ms):")
    for kind in ("changed", "unchanged"):
        print(f"  {kind:9s} frame: float {med['float', kind]:.3f}  uint8 {med['uint8', kind]:.3f}  "
              f"uint8/float {med['uint8', kind] / med['float', kind]:.3f}")


if __name__ == "__main__":
    main()
