"""Sparse vs dense timing, interleaved in one process so machine drift hits both alike.

The dense baseline is what a user would run: eval mode, ``inference_mode``,
and the fastest of {original model, BatchNorm folded} x {NCHW, channels_last},
picked by timing each on warm-up frames.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass

import torch
from torch import nn

from .normalize import normalize
from .scenes import moving_objects
from .trace import trace_model
from .transform import transform


@dataclass
class BenchRow:
    model: str
    size: str
    scene: str
    changed_fraction: float  # measured share of changed input pixels (median over frames)
    dense_baseline: str
    dense_ms: float  # median
    sparse_ms: float  # median
    speedup: float  # dense_ms / sparse_ms
    cone_speedup: float  # macs_dense / macs_cone (median over frames)
    efficiency: float  # speedup / cone_speedup
    executed_over_cone: float
    unchanged_frame_rel: float  # unchanged-frame time / dense time on the same frame (medians of 5)
    full_frame_rel: float  # fully changed frame time / dense time on the same frames (medians of 6)
    cache_mib: float
    frames: int

    def as_dict(self):
        return asdict(self)


def _timed(fn, x):
    t = time.perf_counter()
    out = fn(x)
    return time.perf_counter() - t, out


def dense_candidates(model: nn.Module) -> dict[str, nn.Module]:
    folded = normalize(trace_model(model)).eval()
    return {
        "eager NCHW": model,
        "eager channels_last": model,
        "BN-folded NCHW": folded,
        "BN-folded channels_last": folded,
    }


def best_dense(model: nn.Module, frame: torch.Tensor, repeats: int = 3):
    """(name, callable) of the fastest dense setup on ``frame`` (median of ``repeats`` after a warm-up)."""
    best = None
    for name, m in dense_candidates(model).items():
        cl = name.endswith("channels_last")
        mm = m.to(memory_format=torch.channels_last) if cl else m

        def run(x, mm=mm, cl=cl):
            return mm(x.contiguous(memory_format=torch.channels_last) if cl else x)

        run(frame)
        t = statistics.median(_timed(run, frame)[0] for _ in range(repeats))
        if best is None or t < best[2]:
            best = (name, run, t)
    return best[0], best[1]


@torch.inference_mode()
def bench_scene(model: nn.Module, model_name: str, frames: list[torch.Tensor], scene: str, *,
                dense_name_fn=None, **transform_kwargs) -> BenchRow:
    """Interleave dense and sparse over ``frames`` (the first fills the caches); return medians."""
    model = model.eval()
    dense_name, dense = dense_name_fn or best_dense(model, frames[0])
    sm = transform(model, **transform_kwargs)
    sm(frames[0])
    dense(frames[0])
    d_times, s_times, cones, execs, fracs = [], [], [], [], []
    for x in frames[1:]:
        d_times.append(_timed(dense, x)[0])
        s_times.append(_timed(sm, x)[0])
        st = sm.stats
        cones.append(st.macs_dense / max(st.macs_cone, 1))
        execs.append(st.macs_executed / max(st.macs_cone, 1))
        fracs.append(statistics.mean(st.changed_fraction))
    dense_ms = statistics.median(d_times) * 1e3
    sparse_ms = statistics.median(s_times) * 1e3
    # unchanged frames (the last frame again) and fully changed frames (alternating the frame and
    # its negative), each interleaved with dense runs on the same frames: ratios of medians
    unchanged, dense_u, full, dense_f = [], [], [], []
    for _ in range(5):
        dense_u.append(_timed(dense, frames[-1])[0])
        unchanged.append(_timed(sm, frames[-1])[0])
    for i in range(6):
        x = 1.0 - frames[-1] if i % 2 == 0 else frames[-1]
        dense_f.append(_timed(dense, x)[0])
        full.append(_timed(sm, x)[0])
    cone = statistics.median(cones)
    speedup = dense_ms / sparse_ms
    return BenchRow(
        model=model_name,
        size=f"{frames[0].shape[2]}x{frames[0].shape[3]}",
        scene=scene,
        changed_fraction=statistics.median(fracs),
        dense_baseline=dense_name,
        dense_ms=dense_ms,
        sparse_ms=sparse_ms,
        speedup=speedup,
        cone_speedup=cone,
        efficiency=speedup / cone,
        executed_over_cone=statistics.median(execs),
        unchanged_frame_rel=statistics.median(unchanged) / statistics.median(dense_u),
        full_frame_rel=statistics.median(full) / statistics.median(dense_f),
        cache_mib=sm.stats.cache_bytes / 2**20,
        frames=len(frames) - 1,
    )


def synthetic_frames(height: int, width: int, fraction: float, frames: int, streams: int = 1) -> list[torch.Tensor]:
    return list(moving_objects(height, width, changed_fraction=fraction, frames=frames, streams=streams))


def markdown_table(rows: list[BenchRow]) -> str:
    head = ("| model | size | scene | changed | dense baseline | dense ms | sparse ms | speedup | cone-ideal | "
            "efficiency | executed/cone | unchanged frame | full frame | cache MiB |")
    lines = [head, "|" + "---|" * 14]
    for r in rows:
        lines.append(
            f"| {r.model} | {r.size} | {r.scene} | {r.changed_fraction:.2%} | {r.dense_baseline} | {r.dense_ms:.1f} | "
            f"{r.sparse_ms:.1f} | {r.speedup:.2f}x | {r.cone_speedup:.2f}x | {r.efficiency:.2f} | "
            f"{r.executed_over_cone:.2f} | {r.unchanged_frame_rel:.1%} | {r.full_frame_rel:.2f}x | {r.cache_mib:.0f} |"
        )
    return "\n".join(lines)
