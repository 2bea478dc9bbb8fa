"""Sparse vs dense timing, interleaved in one process so machine drift hits both alike.

The dense baseline is what a user would run: eval mode, ``inference_mode``,
and the fastest of {original model, BatchNorm folded} x {NCHW, channels_last},
picked by timing each on warm-up frames.
"""

from __future__ import annotations

import copy
import statistics
import time
from dataclasses import asdict, dataclass

import torch
from torch import nn

from .normalize import normalize
from .scenes import moving_objects
from .tail_engines import TAIL_ENGINES
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
    full_frame_rel: float  # fully changed frame time / dense time on the same frames (medians of 12)
    cache_mib: float
    frames: int
    engines_ms: dict | None = None  # median ms of other dense engines (ONNX Runtime, OpenVINO), same run
    speedup_vs_fastest_engine: float | None = None  # fastest of torch eager and engines_ms / sparse
    precision: str = "f32"  # fxsparse's compute dtype, and torch eager's (transform(dtype=...))
    speedup_vs_fastest_same_precision: float | None = None  # against engines of the same precision only
    processes: int = 1  # > 1: medians over that many fresh processes (median_rows)
    speedup_range: tuple[float, float] | None = None  # the per-process speedups' range, when processes > 1

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


def dense_engines(model: nn.Module, frame: torch.Tensor) -> dict:
    """Other dense CPU engines for ``model``, as {name: callable(frame)}: ONNX Runtime and OpenVINO when
    installed (``pip install 'fxsparse[bench]'``), each on torch's thread count. The model goes through the
    ONNX file of torch's (legacy, TorchScript-based) exporter. Names end in the precision the engine computes
    in: OpenVINO's default on CPUs with AMX / AVX512-BF16 is bfloat16 (0.5% max relative error on
    resnet50), so it is timed twice, forced to f32 and at its default."""
    import os
    import shutil
    import tempfile

    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        onnxruntime = None
    try:
        import openvino
    except ImportError:
        openvino = None
    if onnxruntime is None and openvino is None:
        return {}
    folder = tempfile.mkdtemp(prefix="fxsparse-bench-")
    try:
        return _engines_from_onnx(model, frame, os.path.join(folder, "model.onnx"), onnxruntime, openvino)
    finally:
        shutil.rmtree(folder, ignore_errors=True)  # the engines hold the model in memory


def _engines_from_onnx(model, frame, path, onnxruntime, openvino) -> dict:
    """The engines of :func:`dense_engines`, from ``model`` exported to ``path``."""
    import warnings

    engines = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (frame,), path, dynamo=False, opset_version=17, input_names=["x"])
    threads = torch.get_num_threads()
    if onnxruntime is not None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        # no busy-waiting threads after a run: they would steal the cores from the interleaved torch runs
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        engines["ONNX Runtime f32"] = lambda x, s=session: s.run(None, {"x": x.numpy()})
    if openvino is not None:
        core = openvino.Core()
        f32 = core.compile_model(path, "CPU", {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": "f32"})
        engines["OpenVINO f32"] = lambda x, c=f32: c([x.numpy()])
        default = core.compile_model(path, "CPU", {"INFERENCE_NUM_THREADS": threads})
        precision = _short_precision(str(default.get_property("INFERENCE_PRECISION_HINT")))
        if precision != "f32":
            engines[f"OpenVINO {precision} (default)"] = lambda x, c=default: c([x.numpy()])
    return engines


def _short_precision(name: str) -> str:
    """'<Type: 'bfloat16'>' / 'bf16' / 'torch.bfloat16' -> 'bf16' (likewise f16, f32)."""
    for long, short in (("bfloat16", "bf16"), ("bf16", "bf16"), ("float16", "f16"), ("f16", "f16")):
        if long in name:
            return short
    return "f32"


def best_dense(model: nn.Module, frame: torch.Tensor, repeats: int = 3, dtype: torch.dtype | None = None):
    """(name, callable) of the fastest dense setup on ``frame`` (median of ``repeats`` after a warm-up).
    With ``dtype`` the model computes in that dtype (frames are converted in the timed call)."""
    best = None
    for name, m in dense_candidates(model).items():
        cl = name.endswith("channels_last")
        mm = m.to(memory_format=torch.channels_last) if cl else m
        if dtype is not None:
            mm = copy.deepcopy(mm).to(dtype)
            name = f"{name} {_short_precision(str(dtype))}"

        def run(x, mm=mm, cl=cl):
            x = x if dtype is None else x.to(dtype)
            return mm(x.contiguous(memory_format=torch.channels_last) if cl else x)

        run(frame)
        t = statistics.median(_timed(run, frame)[0] for _ in range(repeats))
        if best is None or t < best[2]:
            best = (name, run, t)
    return best[0], best[1]


@torch.inference_mode()
def bench_scene(model: nn.Module, model_name: str, frames: list[torch.Tensor], scene: str, *,
                dense_name_fn=None, engines: dict | None = None, **transform_kwargs) -> BenchRow:
    """Interleave dense, other engines and sparse over ``frames`` (the first fills the caches); return medians."""
    model = model.eval()
    dtype = transform_kwargs.get("dtype")
    precision = _short_precision(str(dtype)) if dtype is not None else "f32"
    if TAIL_ENGINES.get(transform_kwargs.get("tail_engine", "torch")) == "bf16":
        precision = "bf16"  # a bfloat16 tail (Note [Tail engines]): compared with the bfloat16 engines
    dense_name, dense = dense_name_fn or best_dense(model, frames[0], dtype=dtype)
    engines = engines or {}
    sm = transform(model, **transform_kwargs)
    # one untimed pass over the clip: oneDNN compiles a kernel per new shape (Note [Shape buckets]),
    # a one-off cost a long-running stream amortises; then the streams start over
    for x in frames:
        sm(x)
    sm.reset()
    sm(frames[0])
    dense(frames[0])
    for run in engines.values():
        run(frames[0])
    d_times, s_times, cones, execs, fracs = [], [], [], [], []
    e_times = {name: [] for name in engines}
    for x in frames[1:]:
        d_times.append(_timed(dense, x)[0])
        for name, run in engines.items():
            e_times[name].append(_timed(run, x)[0])
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
    last = frames[-1]
    negative = 1.0 - last if last.is_floating_point() else torch.iinfo(last.dtype).max - last  # uint8: 255 - x
    for i in range(12):  # 12, not 6: on this shared machine 6 frames left the ratio +-15% from run to run
        x = negative if i % 2 == 0 else last
        dense_f.append(_timed(dense, x)[0])
        full.append(_timed(sm, x)[0])
    cone = statistics.median(cones)
    speedup = dense_ms / sparse_ms
    engines_ms = {name: statistics.median(t) * 1e3 for name, t in e_times.items()} or None
    fastest = min([dense_ms] + list((engines_ms or {}).values()))
    same = [dense_ms] + [t for n, t in (engines_ms or {}).items() if _short_precision(n) == precision]
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
        engines_ms=engines_ms,
        speedup_vs_fastest_engine=fastest / sparse_ms if engines_ms else None,
        precision=precision,
        speedup_vs_fastest_same_precision=min(same) / sparse_ms if engines_ms else None,
    )


def median_rows(runs: list[list[BenchRow]]) -> list[BenchRow]:
    """One row per scene from the same scenes measured in several processes: the median of each timing and
    of each ratio across processes (ratios are taken per process, where dense and sparse ran interleaved).

    Why: the dense baseline's median moved from 41 to 68 ms for the same mobilenet_v2 in six fresh
    processes, one after the other (sparse less so), which moves every speedup and efficiency with it.
    """
    merged = []
    for rows in zip(*runs, strict=True):
        first = rows[0]
        if any((r.model, r.size, r.scene) != (first.model, first.size, first.scene) for r in rows):
            raise ValueError(f"the processes measured different scenes: {[(r.model, r.size, r.scene) for r in rows]}")
        values = {}
        for name, value in first.as_dict().items():
            column = [getattr(r, name) for r in rows]
            if isinstance(value, float) and all(isinstance(v, float) for v in column):
                values[name] = statistics.median(column)
            elif isinstance(value, dict):  # engines_ms
                values[name] = {k: statistics.median(r.engines_ms[k] for r in rows) for k in value}
            else:
                values[name] = value
        values["processes"] = len(rows)
        values["speedup_range"] = (min(r.speedup for r in rows), max(r.speedup for r in rows))
        merged.append(BenchRow(**values))
    return merged


def synthetic_frames(height: int, width: int, fraction: float, frames: int, streams: int = 1) -> list[torch.Tensor]:
    return list(moving_objects(height, width, changed_fraction=fraction, frames=frames, streams=streams))


def engines_table(rows: list[BenchRow]) -> str:
    """Sparse against every dense engine of the same run (median ms)."""
    names = sorted({n for r in rows for n in (r.engines_ms or {})})
    lines = ["| model | size | scene | precision | torch eager (best) | " + " | ".join(names)
             + " | fxsparse | vs fastest, same precision | vs fastest, any precision |",
             "|---" * (len(names) + 8) + "|"]
    for r in rows:
        cells = [f"{(r.engines_ms or {}).get(n, float('nan')):.1f}" for n in names]
        vs = f"{r.speedup_vs_fastest_engine:.2f}x" if r.speedup_vs_fastest_engine else "-"
        same = f"{r.speedup_vs_fastest_same_precision:.2f}x" if r.speedup_vs_fastest_same_precision else "-"
        lines.append(f"| {r.model} | {r.size} | {r.scene} | {r.precision} | {r.dense_ms:.1f} | " + " | ".join(cells)
                     + f" | {r.sparse_ms:.1f} | {same} | {vs} |")
    return "\n".join(lines)


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
