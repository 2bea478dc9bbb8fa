"""The demo: a model on a generated fixed-camera scene, dense and sparse side by side."""

from __future__ import annotations

import json
import os
import statistics
import time
from dataclasses import asdict, dataclass

import torch

from .outputs import max_rel_error
from .scenes import moving_objects
from .transform import transform


@dataclass
class FrameRow:
    frame: int
    changed_fraction: float
    dense_ms: float
    sparse_ms: float
    speedup: float
    cone_speedup: float
    executed_speedup: float
    max_rel_error: float


@torch.inference_mode()
def run_demo(model, *, height: int, width: int, frames: int, changed: float, progress=None) -> list[FrameRow]:
    """Run ``model`` dense and through :func:`fxsparse.transform` on a moving-object scene.

    Dense and sparse alternate frame by frame (same process, same conditions).
    Frame 0 fills the caches and is not a row.
    """
    model = model.eval()
    sm = transform(model)
    rows = []
    scene = moving_objects(height, width, changed_fraction=changed, frames=frames + 1)
    for i, x in enumerate(scene):
        t0 = time.perf_counter()
        expected = model(x)
        t1 = time.perf_counter()
        actual = sm(x)
        t2 = time.perf_counter()
        if i == 0:
            continue
        s = sm.stats
        rows.append(
            FrameRow(
                frame=i,
                changed_fraction=statistics.mean(s.changed_fraction),
                dense_ms=(t1 - t0) * 1e3,
                sparse_ms=(t2 - t1) * 1e3,
                speedup=(t1 - t0) / (t2 - t1),
                cone_speedup=s.cone_speedup,
                executed_speedup=s.macs_dense / max(1, s.macs_executed),
                max_rel_error=max_rel_error(actual, expected),
            )
        )
        if progress is not None:
            progress(rows[-1])
    return rows


def summarize(rows: list[FrameRow]) -> dict:
    dense = statistics.median(r.dense_ms for r in rows)
    sparse = statistics.median(r.sparse_ms for r in rows)
    return {
        "frames": len(rows),
        "median_changed_fraction": statistics.median(r.changed_fraction for r in rows),
        "median_dense_ms": dense,
        "median_sparse_ms": sparse,
        "speedup_of_medians": dense / sparse,
        "median_cone_speedup": statistics.median(r.cone_speedup for r in rows),
        "max_rel_error": max(r.max_rel_error for r in rows),
    }


def table(rows: list[FrameRow]) -> str:
    lines = ["| frame | changed | dense ms | sparse ms | speedup | cone-ideal | executed | max rel. error |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(
            f"| {r.frame} | {r.changed_fraction:.2%} | {r.dense_ms:.1f} | {r.sparse_ms:.1f} | {r.speedup:.2f}x | "
            f"{r.cone_speedup:.2f}x | {r.executed_speedup:.2f}x | {r.max_rel_error:.1e} |"
        )
    return "\n".join(lines)


def write_report(out_dir: str, spec: str, size: tuple[int, int], rows: list[FrameRow], summary: dict) -> str:
    """Write report.md and report.json into ``out_dir``; return the Markdown path."""
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "report.json"), "w") as f:
        json.dump({"model": spec, "size": list(size), "summary": summary, "frames": [asdict(r) for r in rows]}, f,
                  indent=1)
    md = os.path.join(out_dir, "report.md")
    with open(md, "w") as f:
        f.write(f"# fxsparse demo: {spec} at {size[0]}x{size[1]}\n\n")
        f.write("Synthetic fixed-camera scene (textured background, one moving square). Dense and sparse run\n"
                "alternately on every frame in the same process; times are wall-clock. Dense is the model as\n"
                "given (eager, NCHW); `benchmarks/run_bench.py` compares against the fastest dense setup.\n\n")
        f.write(f"- median changed pixels: {summary['median_changed_fraction']:.2%}\n")
        f.write(f"- median dense {summary['median_dense_ms']:.1f} ms, sparse {summary['median_sparse_ms']:.1f} ms: "
                f"**{summary['speedup_of_medians']:.2f}x**\n")
        f.write(f"- cone-ideal (the limit of any exact method): {summary['median_cone_speedup']:.2f}x\n")
        f.write(f"- largest relative error vs dense over all frames: {summary['max_rel_error']:.1e}\n\n")
        f.write(table(rows) + "\n")
    return md
