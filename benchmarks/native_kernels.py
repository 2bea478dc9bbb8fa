"""The same model with and without the native conv kernels, in one process, alternating frame by frame
(Note [Native conv], Note [Native depthwise]).

    python benchmarks/native_kernels.py --model mobilenet_v2 --fraction 0.01

The "without" side is transformed while the kernels report themselves unavailable, so its layers are prepared
for PyTorch's lowerings (the native mask footprint and input difference still run on both sides). Medians in
ms after a few warm-up frames.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from unittest import mock

import torch

import fxsparse
from fxsparse.bench import synthetic_frames
from fxsparse.kernels import native

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from run_bench import build  # noqa: E402  (the benchmark's model lookup: random weights)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="mobilenet_v2")
    p.add_argument("--fraction", type=float, default=0.01, help="changed share per frame")
    p.add_argument("--size", default="576x768", help="HxW")
    p.add_argument("--frames", type=int, default=20, help="timed frames (after 6 warm-up frames)")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if not native.available():
        sys.exit(f"the native kernels are not loaded: {native.status()}")
    h, w = (int(v) for v in args.size.lower().split("x"))
    model = build(args.model).eval()
    frames = synthetic_frames(h, w, args.fraction, args.frames + 7)
    with_kernels = fxsparse.transform(model)
    without = fxsparse.transform(model)
    times = {"with": [], "without": []}
    with torch.inference_mode():
        with mock.patch.object(native, "available", lambda: False):
            without(frames[0])  # the first frame prepares every layer: here without the conv kernels
        with_kernels(frames[0])
        for i, x in enumerate(frames[1:]):
            for name, sm in (("with", with_kernels), ("without", without)):
                start = time.perf_counter()
                sm(x)
                if i >= 6:
                    times[name].append(time.perf_counter() - start)
    on, off = (statistics.median(times[k]) * 1e3 for k in ("with", "without"))
    print(f"{args.model} {args.size}, {args.fraction:.0%} changed, {args.frames} frames: with the conv kernels "
          f"{on:.1f} ms, without {off:.1f} ms ({off / on:.2f}x)")


if __name__ == "__main__":
    main()
