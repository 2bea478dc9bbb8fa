"""Where a sparse frame's time goes, layer by layer (fxsparse.layer_times).

    python benchmarks/layer_times.py --model mobilenet_v2 --fraction 0.01
    python benchmarks/layer_times.py --model resnet50 --fraction 0.05 --frames 10 --out layers.md

Synthetic moving-object scene (random weights; exact mode's cost does not depend on them). The first
frames warm up (oneDNN compiles a kernel per shape); the timed frames follow.
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
    frames = synthetic_frames(h, w, args.fraction, args.frames + 8)
    sm = fxsparse.transform(build(args.model).eval())
    with torch.inference_mode():
        for x in frames[:8]:
            sm(x)
    table = layer_times_table(layer_times(sm, frames[8:]))
    title = f"{args.model} {args.size}, {args.fraction:.0%} changed, {args.frames} frames, {torch.get_num_threads()} threads"
    print(title + "\n\n" + table)
    if args.out:
        with open(args.out, "w") as f:
            f.write(f"# {title}\n\n{table}\n")


if __name__ == "__main__":
    main()
