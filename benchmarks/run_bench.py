"""Print (and save) the sparse-vs-dense table.

    python benchmarks/run_bench.py                       # resnet50 + mobilenet_v2, 576x768, 1/5/20 %
    python benchmarks/run_bench.py --models resnet50 --fractions 0.01 --frames 9 --out bench.json
    python benchmarks/run_bench.py --models mobilenet_v2 --uint8   # decoded uint8 frames, normalized in the model
    python benchmarks/run_bench.py --models mobilenet_v2 --fractions 0.01 --processes 5  # medians over 5 processes
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile

import torch
from torch import nn

from fxsparse import PixelNormalize
from fxsparse.bench import (  # noqa: E402
    BenchRow,
    bench_scene,
    dense_engines,
    engines_table,
    markdown_table,
    median_rows,
    synthetic_frames,
)
from fxsparse.pixels import to_pixels


def build(name: str):
    import torchvision

    torch.manual_seed(0)
    if hasattr(torchvision.models, name):
        return getattr(torchvision.models, name)().eval()
    return getattr(torchvision.models.segmentation, name)(weights=None, weights_backbone=None).eval()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="resnet50,mobilenet_v2")
    p.add_argument("--size", default="576x768", help="HxW")
    p.add_argument("--fractions", default="0.01,0.05,0.2", help="changed share of pixels per frame")
    p.add_argument("--frames", type=int, default=8, help="frames per scene after the first (medians over these)")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--dense-switch", default="0.5", help="a share, or 'auto' (measured per layer)")
    p.add_argument("--engines", action="store_true", help="also time ONNX Runtime and OpenVINO (the bench extra)")
    p.add_argument("--scene", choices=["synthetic", "cdnet"], default="synthetic",
                   help="cdnet: ../shared/data/cdnet_highway upscaled to --size (real footage)")
    p.add_argument("--input-threshold", type=float, default=0.0, help="on the 0-255 scale, e.g. 16")
    p.add_argument("--clean-up", action="store_true", help="input_open=1, input_min_area=30, input_dilate=2")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                   help="compute dtype of fxsparse and of the torch eager baseline (transform(dtype=...))")
    p.add_argument("--fuse-chains", action="store_true", help="transform(fuse_chains=True): conv blocks as one unit")
    p.add_argument("--tail-engine", choices=["torch", "auto", "openvino", "openvino-bf16"], default="torch",
                   help="transform(tail_engine=...): what runs a dense tail (Note [Tail engines])")
    p.add_argument("--uint8", action="store_true",
                   help="feed uint8 frames to nn.Sequential(fxsparse.PixelNormalize(), model), dense and sparse alike "
                        "(Note [Integer frames]); --input-threshold is then in pixel units as given")
    p.add_argument("--processes", type=int, default=1,
                   help="run everything in this many fresh processes, one after the other, and report the medians "
                        "across them (the dense baseline's time varies from process to process)")
    p.add_argument("--out", default=None, help="write rows as JSON here")
    args = p.parse_args(argv)
    if args.processes > 1:
        return _across_processes(args, list(sys.argv[1:] if argv is None else argv))
    torch.set_num_threads(args.threads)
    h, w = (int(v) for v in args.size.lower().split("x"))
    rows = []
    for name in args.models.split(","):
        model = build(name)
        pixels = to_pixels if args.uint8 else (lambda f: f)
        if args.uint8:
            model = nn.Sequential(PixelNormalize(), model).eval()
        engines = dense_engines(model, pixels(torch.rand(1, 3, h, w))) if args.engines else {}
        switch = args.dense_switch if args.dense_switch == "auto" else float(args.dense_switch)
        policy = {"input_open": 1, "input_min_area": 30, "input_dilate": 2} if args.clean_up else {}
        threshold = args.input_threshold if args.uint8 else args.input_threshold / 255
        kwargs = dict(dense_switch=switch, engines=engines, input_threshold=threshold, **policy)
        if args.fuse_chains:
            kwargs["fuse_chains"] = True
        if args.tail_engine != "torch":
            kwargs["tail_engine"] = args.tail_engine
        if args.dtype != "float32":
            kwargs["dtype"] = getattr(torch, args.dtype)
        if args.scene == "cdnet":
            from fxsparse.video import read_frames

            highway = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "cdnet_highway")
            frames = [pixels(f[None]) for f in read_frames(highway, size=(h, w), limit=args.frames + 1)]
            label = f"CDnet highway, tau {args.input_threshold:g}/255" + (", clean-up" if args.clean_up else "")
            rows.append(bench_scene(model, name, frames, label, **kwargs))
            print(markdown_table(rows[-1:]).splitlines()[-1], flush=True)
            continue
        for frac in (float(f) for f in args.fractions.split(",")):
            frames = [pixels(f) for f in synthetic_frames(h, w, frac, args.frames + 1)]
            label = f"synthetic {frac:.0%}" + (", uint8" if args.uint8 else "") + \
                (f", tail {args.tail_engine}" if args.tail_engine != "torch" else "")
            row = bench_scene(model, name, frames, label, **kwargs)
            rows.append(row)
            print(markdown_table([row]).splitlines()[-1], flush=True)
    print()
    print(f"torch {torch.__version__}, {args.threads} threads, {platform.processor() or platform.machine()}")
    print(markdown_table(rows))
    if args.engines:
        print()
        print(engines_table(rows))
    _write(args, rows)


def _write(args, rows) -> None:
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"torch": torch.__version__, "threads": args.threads, "rows": [r.as_dict() for r in rows]}, f,
                      indent=1)


def _without(argv: list[str], *options: str) -> list[str]:
    """``argv`` without ``options`` and their values (``--opt v`` and ``--opt=v``)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a in options:
            skip = True
        elif not any(a.startswith(o + "=") for o in options):
            out.append(a)
    return out


def _across_processes(args, argv: list[str]) -> None:
    """Run this script ``args.processes`` times in fresh processes; print and write the medians (median_rows)."""
    child = _without(argv, "--processes", "--out")
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(args.processes):
            out = os.path.join(tmp, f"run{k}.json")
            print(f"process {k + 1} of {args.processes}", flush=True)
            subprocess.run([sys.executable, os.path.abspath(__file__), *child, "--out", out], check=True)
            with open(out) as f:
                runs.append([BenchRow(**r) for r in json.load(f)["rows"]])
    rows = median_rows(runs)
    print()
    print(f"medians over {args.processes} processes; per-process speedups:")
    for r in rows:
        print(f"  {r.model} {r.size} {r.scene}: {r.speedup_range[0]:.2f}x - {r.speedup_range[1]:.2f}x")
    print(markdown_table(rows))
    if args.engines:
        print()
        print(engines_table(rows))
    _write(args, rows)


if __name__ == "__main__":
    main()
