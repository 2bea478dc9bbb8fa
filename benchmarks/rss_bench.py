"""Peak resident memory of the dense model vs fxsparse on the same frames, each in its own process.

    python benchmarks/rss_bench.py --model resnet50 --size 576x768
    python benchmarks/rss_bench.py --model mobilenet_v2 --fuse-chains   # transform(fuse_chains=True)
    python benchmarks/rss_bench.py --model lraspp_mobilenet_v3_large     # segmentation models too
    python benchmarks/rss_bench.py --model lraspp_mobilenet_v3_large --tail-engine openvino

Peak RSS (``ru_maxrss``) is per process, so each side runs alone in a fresh interpreter; the numbers
include Python, torch and the model weights. The RSS after the last frame (``/proc/self/statm``, Linux)
shows the steady state: the first frame's dense pass, which every mode pays, sets the peak.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

CHILD = r"""
import json, resource, sys, torch, torchvision, fxsparse
from fxsparse.bench import best_dense
from fxsparse.scenes import moving_objects
mode, model_name = sys.argv[1], sys.argv[2]
h, w, changed, frames = int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5]), int(sys.argv[6])
torch.set_num_threads(2)
torch.manual_seed(0)
sys.path.insert(0, sys.argv[7])
from run_bench import build  # the benchmark's model lookup: classification and segmentation, random weights
model = build(model_name)
clip = list(moving_objects(h, w, changed_fraction=changed, frames=frames))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
with torch.inference_mode():
    if mode == "dense":
        _, run = best_dense(model, clip[0])
    else:
        run = fxsparse.transform(model, fuse_chains=mode.startswith("sparse-chains"),
                                 tail_engine=mode.split(":", 1)[1] if ":" in mode else "torch")
    for x in clip:
        run(x)
cache = run.stats.cache_bytes if mode != "dense" else 0
import os
now = int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
print(json.dumps({"mode": mode, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "rss_before_mib": before / 1024, "cache_mib": cache / 2**20, "rss_after_mib": now}))
"""


def measure(mode, args):
    h, w = args.size.split("x")
    here = os.path.dirname(os.path.abspath(__file__))
    out = subprocess.run([sys.executable, "-c", CHILD, mode, args.model, h, w, str(args.changed), str(args.frames), here],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="resnet50")
    p.add_argument("--size", default="576x768")
    p.add_argument("--changed", type=float, default=0.01)
    p.add_argument("--frames", type=int, default=6)
    p.add_argument("--fuse-chains", action="store_true", help="fxsparse with fuse_chains=True")
    p.add_argument("--tail-engine", default="torch", help="fxsparse with tail_engine=... (Note [Tail engines])")
    args = p.parse_args(argv)
    mode = "sparse-chains" if args.fuse_chains else "sparse"
    dense, sparse = measure("dense", args), measure(f"{mode}:{args.tail_engine}", args)
    print(f"{args.model} {args.size}: peak RSS dense {dense['peak_rss_mib']:.0f} MiB, fxsparse "
          f"{sparse['peak_rss_mib']:.0f} MiB (ratio {sparse['peak_rss_mib'] / dense['peak_rss_mib']:.2f}); "
          f"cache {sparse['cache_mib']:.0f} MiB; process before the model ran: {dense['rss_before_mib']:.0f} MiB; "
          f"RSS after the last frame: dense {dense['rss_after_mib']:.0f} MiB, fxsparse {sparse['rss_after_mib']:.0f} MiB")


if __name__ == "__main__":
    main()
