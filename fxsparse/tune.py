"""``fxsparse.tune``: pick input and layer thresholds on a calibration clip.

The search space is small on purpose: an input threshold, and one scale factor ``s`` that sets every
gated layer's threshold to ``s x`` (mean |input| of that layer on the first calibration frame), so
layers with large activations get proportionally larger thresholds. For each input threshold, ``s``
grows until a constraint fails (the error grows with ``s``; we stop at the first failure). Every input
threshold is tried: the error is *not* monotonic in it (a held reference built from sub-threshold noise of
different frames can be worse at a small threshold than at a larger one). Among the
configs that meet every constraint, the one with the fewest executed MACs (or the lowest measured
time) wins. Every explored point is returned, so the trade-off curve can be plotted.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from . import ops
from .outputs import flat_tensors, max_rel_error
from .transform import transform

# -- metrics: (sparse output, dense output) -> value, and whether higher is better ------------------


def _main(y):
    return flat_tensors(y)[0]


def mean_rel_error(a, b) -> float:
    """Relative L2 error ||a - b|| / ||b|| of the first output (e.g. logits), averaged over streams."""
    x, y = _main(a).flatten(1), _main(b).flatten(1)
    return float(((x - y).norm(dim=1) / y.norm(dim=1).clamp(min=1e-12)).mean())


def top1(a, b) -> float:
    """Share of streams whose top-1 class agrees (first output, [B, K])."""
    return float((_main(a).argmax(1) == _main(b).argmax(1)).float().mean())


def miou(a, b) -> float:
    """Mean over streams and classes present of the IoU of argmax maps (first [B, K, H, W] output)."""
    x, y = _main(a).argmax(1), _main(b).argmax(1)
    ious = []
    for s in range(x.shape[0]):
        for c in torch.unique(torch.cat([x[s].flatten(), y[s].flatten()])):
            inter = ((x[s] == c) & (y[s] == c)).sum().item()
            union = ((x[s] == c) | (y[s] == c)).sum().item()
            ious.append(inter / union if union else 1.0)
    return statistics.mean(ious) if ious else 1.0


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU matrix of boxes [N, 4] and [M, 4] (x0, y0, x1, y1)."""
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area = lambda z: (z[:, 2:] - z[:, :2]).clamp(min=0).prod(-1)
    return inter / (area(a)[:, None] + area(b)[None, :] - inter).clamp(min=1e-9)


def box_f1(boxes_a: torch.Tensor, boxes_b: torch.Tensor, iou: float = 0.5) -> float:
    """F1 of boxes ``a`` against reference boxes ``b`` at IoU >= ``iou`` (greedy one-to-one matching)."""
    if len(boxes_a) == 0 and len(boxes_b) == 0:
        return 1.0
    if len(boxes_a) == 0 or len(boxes_b) == 0:
        return 0.0
    m = box_iou(boxes_a, boxes_b)
    matched, used = 0, set()
    for i in m.max(1).values.argsort(descending=True).tolist():
        j = int(m[i].argmax())
        if m[i, j] >= iou and j not in used:
            used.add(j)
            matched += 1
    precision, recall = matched / len(boxes_a), matched / len(boxes_b)
    return 0.0 if matched == 0 else 2 * precision * recall / (precision + recall)


METRICS: dict[str, tuple[Callable, bool]] = {
    "max_rel_error": (max_rel_error, False),
    "mean_rel_error": (mean_rel_error, False),
    "top1": (top1, True),
    "miou": (miou, True),
}


def box_f1_metric(decode: Callable) -> tuple[Callable, bool]:
    """A box-F1 metric for detectors: ``decode(output) -> list of [N, 4] boxes``, one per stream."""

    def metric(a, b):
        return statistics.mean(box_f1(x, y) for x, y in zip(decode(a), decode(b)))

    return metric, True


# -- the search ---------------------------------------------------------------------------------


@dataclass
class TunePoint:
    input_threshold: float
    scale: float
    executed_fraction: float  # mean macs_executed / macs_dense over the clip
    metrics: dict[str, float]  # worst case (min for higher-is-better, max otherwise) or mean, see tune()
    ok: bool
    ms: float | None = None
    group_scales: tuple[float, ...] | None = None  # per depth group (refinement points), else None


@dataclass
class TuneResult:
    config: dict  # pass to fxsparse.transform(model, **config)
    chosen: TunePoint
    curve: list[TunePoint] = field(default_factory=list)
    layer_scales: dict[str, float] = field(default_factory=dict)
    # each constrained metric between the dense model's consecutive outputs, aggregated like the constraint:
    # how much the model itself moves from frame to frame on this clip, next to the target asked of fxsparse
    dense_jitter: dict[str, float] = field(default_factory=dict)
    pixel_scale: float = 255.0  # input thresholds times this are on the 0-255 scale (1 for integer frames)

    def __str__(self) -> str:
        names = list(self.chosen.metrics)
        lines = []
        if self.dense_jitter:
            lines.append("dense model, consecutive frames: "
                         + ", ".join(f"{n} {v:.4f}" for n, v in self.dense_jitter.items()))
        lines += ["| input threshold | scale | executed MACs | " + " | ".join(names) + " | meets target |",
                  "|---" * (len(names) + 4) + "|"]
        for p in self.curve:
            mark = "**chosen**" if p is self.chosen else ("yes" if p.ok else "no")
            scale = f"{p.scale:g}" if p.group_scales is None else "groups " + "/".join(f"{g:g}" for g in p.group_scales)
            lines.append(f"| {p.input_threshold * self.pixel_scale:.0f}/255 | {scale} | {p.executed_fraction:.1%} | "
                         + " | ".join(f"{p.metrics[n]:.4f}" for n in names) + f" | {mark} |")
        return "\n".join(lines)


def layer_input_scales(model, frame: torch.Tensor) -> dict[str, float]:
    """Mean |input| of every conv / linear layer on one frame (by layer name), from a dense run."""
    sm = transform(model)
    sm(frame)
    engine = sm._engine
    scales = {}
    for step in engine.steps:
        if step.node.target in (ops.conv2d, ops.linear):
            x = engine.values[step.node.args[0]]
            value = x.buf if hasattr(x, "buf") else x
            scales[step.name] = float(value.abs().mean())
    return scales


@torch.inference_mode()
def evaluate(model, frames: Sequence[torch.Tensor], config: dict, constraints: dict, *, dense_outputs=None,
             metric_fns=None, timed=False, mean_metrics=()) -> TunePoint:
    """Run ``transform(model, **config)`` over ``frames``; aggregate every constrained metric over frames 1..
    (worst frame for error metrics and box F1; mean for agreement shares: top1, miou, and ``mean_metrics``)."""
    metric_fns = metric_fns or {}
    sm = transform(model, **config)
    values = {name: [] for name in constraints}
    executed, times = [], []
    for i, x in enumerate(frames):
        t = time.perf_counter()
        out = sm(x)
        times.append(time.perf_counter() - t)
        dense = dense_outputs[i] if dense_outputs is not None else model(x)
        if i == 0:
            continue
        executed.append(sm.stats.macs_executed / sm.stats.macs_dense)
        for name in constraints:
            fn, _ = metric_fns.get(name) or METRICS[name]
            values[name].append(fn(out, dense))
    agg = _aggregate(values, metric_fns, mean_metrics)
    ok = all(agg[name] >= target if (metric_fns.get(name) or METRICS[name])[1] else agg[name] <= target
             for name, target in constraints.items())
    return TunePoint(config.get("input_threshold", 0.0), 0.0, statistics.mean(executed), agg, ok,
                     statistics.median(times[1:]) * 1e3 if timed else None)


def _aggregate(values: dict[str, list[float]], metric_fns: dict, mean_metrics=()) -> dict[str, float]:
    """One number per metric over frames: the mean for agreement shares (top1, miou, ``mean_metrics``), else
    the worst frame."""
    agg = {}
    for name, series in values.items():
        _, higher = metric_fns.get(name) or METRICS[name]
        use_mean = name in ("top1", "miou") or name in mean_metrics
        agg[name] = statistics.mean(series) if use_mean else (min(series) if higher else max(series))
    return agg


def dense_jitter(dense_outputs: Sequence, constraints: dict, metric_fns=None, mean_metrics=()) -> dict[str, float]:
    """Each constrained metric between consecutive dense outputs (frame i against frame i - 1), aggregated
    like the constraint: what the dense model's own frame-to-frame change looks like in the metric's terms."""
    metric_fns = metric_fns or {}
    values = {name: [(metric_fns.get(name) or METRICS[name])[0](dense_outputs[i], dense_outputs[i - 1])
                     for i in range(1, len(dense_outputs))] for name in constraints}
    return _aggregate(values, metric_fns, mean_metrics)


DEFAULT_PIXEL_THRESHOLDS = (0, 2, 4, 8, 16)  # tune's default input-threshold grid, on the 0-255 scale


def tune(
    model,
    frames: Sequence[torch.Tensor],
    *,
    constraints: dict[str, float] | None = None,
    metric: str | None = None,
    target: float | None = None,
    decode: Callable | None = None,
    input_thresholds: Sequence[float] | None = None,
    scales: Sequence[float] = (0.0, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5),
    objective: str = "macs",
    base_config: dict | None = None,
    metrics: dict | None = None,
    progress: Callable[[TunePoint], None] | None = None,
    refine_groups: int = 0,
) -> TuneResult:
    """Choose ``input_threshold`` and layer thresholds that minimise work while the outputs stay close to dense.

    Args:
        model: the model (eval mode).
        frames: calibration frames, each ``[B, C, H, W]`` (B streams; frame 0 fills the caches).
        constraints: metric name -> target, all must hold: ``max_rel_error``/``mean_rel_error`` (at most),
            ``top1``/``miou``/``box_f1`` (at least). Or give one ``metric`` and ``target``.
        decode: for ``box_f1``: output -> list of [N, 4] boxes per stream.
        input_thresholds, scales: the grid (see module docstring). ``input_thresholds`` are in the frames'
            units; default 0, 2, 4, 8 and 16 on the 0-255 scale (``k / 255`` for float frames, ``k`` for
            integer frames: Note [Integer frames]).
        objective: ``"macs"`` (fewest executed MACs; deterministic) or ``"time"`` (lowest median time).
        base_config: fixed ``transform`` arguments every point uses (e.g. ``{"input_open": 1}``).
        metrics: your own metrics, ``{name: (fn(sparse_out, dense_out) -> float, higher_is_better, "mean" | "worst")}``,
            usable in ``constraints`` like the built-in ones.
        refine_groups: after the grid, split the gated layers into this many groups by depth and raise each
            group's scale on its own, one ``scales`` step at a time, while every constraint holds; the point
            with the least work seen wins (Note [Group refinement]). 0 (default): the grid only.

    Returns:
        TuneResult: ``config`` for ``fxsparse.transform(model, **config)``, the chosen point and the curve.
    """
    if constraints is None:
        if metric is None or target is None:
            raise ValueError("give constraints={'top1': 0.99, ...} or metric= and target=")
        constraints = {metric: target}
    metric_fns = {name: (fn, higher) for name, (fn, higher, _) in (metrics or {}).items()}
    means = {name for name, (_, _, how) in (metrics or {}).items() if how == "mean"}
    if "box_f1" in constraints:
        if decode is None:
            raise ValueError("box_f1 needs decode=: a function from the model output to per-stream [N, 4] boxes")
        metric_fns["box_f1"] = box_f1_metric(decode)
    unknown = [n for n in constraints if n not in METRICS and n not in metric_fns]
    if unknown:
        raise ValueError(f"unknown metrics {unknown}; built-in: {sorted(METRICS) + ['box_f1']}")
    if objective not in ("macs", "time"):
        raise ValueError("objective is 'macs' or 'time'")
    frames = list(frames)
    if len(frames) < 2:
        raise ValueError("tune needs at least 2 calibration frames (the first fills the caches)")
    pixel_scale = 1.0 if not frames[0].is_floating_point() else 255.0  # frame units per 0-255 pixel step
    if input_thresholds is None:
        input_thresholds = [k / pixel_scale for k in DEFAULT_PIXEL_THRESHOLDS]
    model = model.eval()
    with torch.inference_mode():
        dense = [model(x) for x in frames]
    layer_scales = layer_input_scales(model, frames[0])
    curve = []

    def run(config, scale, group_scales=None):
        point = evaluate(model, frames, config, constraints, dense_outputs=dense, metric_fns=metric_fns,
                         timed=objective == "time", mean_metrics=means)
        point.scale, point.group_scales = scale, group_scales
        curve.append(point)
        if progress:
            progress(point)
        return point

    for tau in input_thresholds:
        for s in scales:
            point = run({**(base_config or {}), "input_threshold": float(tau),
                         "threshold": _thresholds(layer_scales, s)}, s)
            if not point.ok:
                break  # larger scales only add error
    good = [p for p in curve if p.ok]
    if not good:
        jitter = dense_jitter(dense, constraints, metric_fns, means)
        raise ValueError(
            f"no configuration meets {constraints} on the calibration clip, not even exact mode with the smallest "
            f"input threshold (the dense model itself, frame to frame: {jitter}). "
            "Hint: check that the model and frames are right, or relax the target."
        )
    key = (lambda p: p.ms) if objective == "time" else (lambda p: p.executed_fraction)
    best = min(good, key=key)
    group_scales = None
    if refine_groups > 0:
        best, group_scales = _refine_groups(best, layer_scales, refine_groups, scales, base_config, run, key)
    threshold = _thresholds(layer_scales, best.scale, group_scales)
    config = {**(base_config or {}), "input_threshold": best.input_threshold, "threshold": threshold}
    return TuneResult(config, best, curve, layer_scales, dense_jitter(dense, constraints, metric_fns, means),
                      pixel_scale)


def _depth_groups(layer_scales: dict[str, float], n: int) -> list[list[str]]:
    """Layer names (in graph order) cut into ``n`` contiguous groups of about equal size."""
    names = list(layer_scales)
    n = max(1, min(n, len(names)))
    return [names[len(names) * i // n : len(names) * (i + 1) // n] for i in range(n)]


def _thresholds(layer_scales, scale, group_scales=None) -> dict | None:
    if group_scales is None:
        out = {name: scale * v for name, v in layer_scales.items() if scale * v > 0}
    else:
        groups = _depth_groups(layer_scales, len(group_scales))
        out = {name: g * layer_scales[name] for names, g in zip(groups, group_scales) for name in names
               if g * layer_scales[name] > 0}
    return out or None


# Note [Group refinement]: one scale for every layer is a blunt tool: early layers see sensor noise
# everywhere, late layers see large, slowly varying activations. Starting from the grid's best point,
# each depth group in turn (deepest first: a fixed order, not a measured one) takes the next larger
# value of ``scales`` as long as every constraint still holds (a failed step ends that group's search);
# the point with the least work (or time) seen is returned. Steps that meet the constraints without
# saving anything are kept: on noisy footage small thresholds pass every position, larger ones may not
# (measured on MobileNetV2 / CDnet highway, docs/thresholds.md). Coordinate ascent: at most
# groups x scales evaluations, not a global optimum.
def _refine_groups(best, layer_scales, n_groups, scales, base_config, run, key):
    groups = _depth_groups(layer_scales, n_groups)
    current = [best.scale] * len(groups)
    steps = sorted(set(scales))
    for g in reversed(range(len(groups))):
        for value in [v for v in steps if v > current[g]]:
            trial = list(current)
            trial[g] = value
            config = {**(base_config or {}), "input_threshold": best.input_threshold,
                      "threshold": _thresholds(layer_scales, best.scale, trial)}
            point = run(config, best.scale, tuple(trial))
            if not point.ok:
                break
            current = trial  # kept even without savings yet: a noise floor can hide them until a larger step
            if key(point) < key(best):
                best = point
    return best, best.group_scales
