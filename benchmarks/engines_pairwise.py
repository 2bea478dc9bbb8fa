"""fxsparse against each dense engine, one pair at a time.

    python benchmarks/engines_pairwise.py --models resnet50,mobilenet_v2 --fractions 0.01,0.05 --frames 12

`run_bench.py --engines` interleaves *all* engines with fxsparse on every frame. That is fair to the
stateless engines but not to fxsparse, whose caches (hundreds of MiB) the other engines evict between
its frames; a deployment runs one engine. Here each engine is interleaved with fxsparse alone
(engine, fxsparse, engine, fxsparse, ...), on the same frames, after an untimed warm-up pass; medians.
Needs the `bench` extra for ONNX Runtime and OpenVINO.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from fxsparse.bench import best_dense, dense_engines, synthetic_frames
from fxsparse.transform import transform


def build(name: str):
    import torchvision

    torch.manual_seed(0)
    return getattr(torchvision.models, name)().eval()


@torch.inference_mode()
def pair(engine, sm, frames) -> tuple[float, float]:
    """Median ms of ``engine`` and of ``sm`` interleaved over ``frames`` (frame 0 fills the caches)."""
    sm.reset()
    sm(frames[0])
    engine(frames[0])
    e_ms, s_ms = [], []
    for x in frames[1:]:
        t = time.perf_counter()
        engine(x)
        e_ms.append((time.perf_counter() - t) * 1e3)
        t = time.perf_counter()
        sm(x)
        s_ms.append((time.perf_counter() - t) * 1e3)
    return statistics.median(e_ms), statistics.median(s_ms)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="resnet50,mobilenet_v2")
    p.add_argument("--size", default="576x768", help="HxW")
    p.add_argument("--fractions", default="0.01,0.05")
    p.add_argument("--frames", type=int, default=12, help="frames per pair after the first")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(2)
    h, w = (int(v) for v in args.size.split("x"))
    rows = []
    print("| model | changed | engine | engine ms | fxsparse ms | fxsparse speedup |\n|---|---|---|---|---|---|")
    for name in args.models.split(","):
        model = build(name)
        example = torch.rand(1, 3, h, w)
        engines = {f"torch eager ({n})": run for n, run in [best_dense(model, example)]}
        engines.update(dense_engines(model, example))
        for frac in (float(f) for f in args.fractions.split(",")):
            frames = synthetic_frames(h, w, frac, args.frames + 1)
            sm = transform(model)
            for x in frames:  # untimed: oneDNN kernel compiles, allocator warm-up
                sm(x)
            for engine_name, engine in engines.items():
                e_ms, s_ms = pair(engine, sm, frames)
                row = {"model": name, "size": args.size, "changed": frac, "engine": engine_name,
                       "engine_ms": e_ms, "sparse_ms": s_ms, "speedup": e_ms / s_ms}
                rows.append(row)
                print(f"| {name} | {frac:.0%} | {engine_name} | {e_ms:.1f} | {s_ms:.1f} | {e_ms / s_ms:.2f}x |",
                      flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"torch": torch.__version__, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
