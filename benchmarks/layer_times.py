"""Where a sparse frame's time goes, layer by layer (fxsparse.layer_times).

    python benchmarks/layer_times.py --model mobilenet_v2 --fraction 0.01
    python benchmarks/layer_times.py --model resnet50 --fraction 0.05 --frames 10 --out layers.md
    python benchmarks/layer_times.py --model mobilenet_v2 --scene cdnet --input-threshold 16 --clean-up

Synthetic moving-object scene (random weights; exact mode's cost does not depend on them), or the real
CDnet highway frames (``../shared/data/cdnet_highway`` upscaled to ``--size``) with an input threshold on
the 0-255 scale. The first frames warm up (oneDNN compiles a kernel per shape); the timed frames follow.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="mobilenet_v2")
    p.add_argument("--fraction", type=float, default=0.01, help="changed share per frame")
    p.add_argument("--size", default="576x768", help="HxW")
    p.add_argument("--frames", type=int, default=16, help="timed frames (after 8 warm-up frames)")
    p.add_argument("--scene", choices=["synthetic", "cdnet"], default="synthetic")
    p.add_argument("--input-threshold", type=float, default=0.0, help="on the 0-255 scale, e.g. 16")
    p.add_argument("--clean-up", action="store_true", help="input_open=1, input_min_area=30, input_dilate=2")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", help="also write the table here (Markdown)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    import fxsparse
    from fxsparse.bench import synthetic_frames
    from fxsparse.layer_times import layer_times, layer_times_table

    sys.path.insert(0, HERE)
    from run_bench import build

    h, w = (int(v) for v in args.size.lower().split("x"))
    if args.scene == "cdnet":
        from fxsparse.video import read_frames

        highway = os.path.join(HERE, "..", "..", "shared", "data", "cdnet_highway")
        frames = [f[None] for f in read_frames(highway, size=(h, w), limit=args.frames + 8)]
        scene = f"CDnet highway, tau {args.input_threshold:g}/255" + (", clean-up" if args.clean_up else "")
    else:
        frames = synthetic_frames(h, w, args.fraction, args.frames + 8)
        scene = f"{args.fraction:.0%} changed"
    policy = {"input_open": 1, "input_min_area": 30, "input_dilate": 2} if args.clean_up else {}
    sm = fxsparse.transform(build(args.model).eval(), input_threshold=args.input_threshold / 255, **policy)
    with torch.inference_mode():
        for x in frames[:8]:
            sm(x)
    table = layer_times_table(layer_times(sm, frames[8:]))
    title = f"{args.model} {args.size}, {scene}, {args.frames} frames, {torch.get_num_threads()} threads"
    print(title + "\n\n" + table)
    if args.out:
        with open(args.out, "w") as f:
            f.write(f"# {title}\n\n{table}\n")


if __name__ == "__main__":
    main()
