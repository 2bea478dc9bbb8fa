"""Many streams: one SparseModule on a batch of B streams vs B single-stream modules, same frames.

    python benchmarks/streams_bench.py --model resnet50 --streams 4
    python benchmarks/streams_bench.py --model lraspp_mobilenet_v3_large --streams 4   # segmentation models too

Each stream is its own moving-object scene; times are medians per frame (all streams), interleaved.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from run_bench import build  # the benchmark's model lookup: classification and segmentation, random weights

import fxsparse
from fxsparse.scenes import moving_objects


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="resnet50")
    p.add_argument("--streams", type=int, default=4)
    p.add_argument("--size", default="576x768")
    p.add_argument("--changed", type=float, default=0.01)
    p.add_argument("--frames", type=int, default=6)
    args = p.parse_args(argv)
    torch.set_num_threads(2)
    torch.manual_seed(0)
    model = build(args.model)
    h, w = (int(v) for v in args.size.split("x"))
    frames = list(moving_objects(h, w, changed_fraction=args.changed, frames=args.frames + 1, streams=args.streams))
    batched = fxsparse.transform(model)
    singles = [fxsparse.transform(model) for _ in range(args.streams)]
    t_batch, t_single = [], []
    with torch.inference_mode():
        for i, x in enumerate(frames):
            t = time.perf_counter()
            batched(x)
            tb = time.perf_counter() - t
            t = time.perf_counter()
            for s, sm in enumerate(singles):
                sm(x[s : s + 1])
            ts = time.perf_counter() - t
            if i:
                t_batch.append(tb)
                t_single.append(ts)
    b, s = statistics.median(t_batch) * 1e3, statistics.median(t_single) * 1e3
    print(f"{args.model} {args.size}, {args.streams} streams, {args.changed:.0%} changed per stream: "
          f"batch {b:.1f} ms ({b / args.streams:.1f} ms per stream), separate {s:.1f} ms "
          f"({s / args.streams:.1f} ms per stream): batch/separate = {b / s:.2f}")


if __name__ == "__main__":
    main()
