"""``fxsparse analyze``: how much of a user's footage changes, and what that means for their model.

For every input threshold the change map is simulated as fxsparse computes it: against a held
reference that is updated only where a pixel changed. With a model, each frame's change map is
propagated through the network (masks only, :meth:`SparseModule.estimate`) to give the cone-ideal
speedup: the most any exact method can save on that frame.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import os
import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch

from . import tails
from .input_policy import CLEAN_UP, InputPolicy
from .transform import transform


@dataclass
class AnalysisResult:
    thresholds: list[int]  # on the 0-255 pixel scale
    size: tuple[int, int]
    frames: int = 0
    changed: dict[int, list[float]] = field(default_factory=dict)  # threshold -> per-frame changed share
    cone_speedup: dict[int, list[float]] = field(default_factory=dict)  # threshold -> per-frame dense/cone
    heat: dict[int, torch.Tensor] = field(default_factory=dict)  # threshold -> share of frames each pixel changed
    dense_ms: float | None = None  # measured dense latency of the model (median), if a model was given
    fps: float | None = None
    model: str | None = None
    clean_up: bool = False  # thresholds above 0 with the input mask's clean-up (input_policy.CLEAN_UP)
    # Note [Dense tails]: the model's MACs after a global mean, recomputed whole on every changed frame in
    # exact mode: {"after": layer name, "share_of_dense_macs": float}; None without a model or a tail
    dense_tail: dict | None = None

    def summary(self) -> dict:
        rows = {}
        for t in self.thresholds:
            row = {"median_changed": statistics.median(self.changed[t]) if self.changed[t] else 0.0,
                   "p90_changed": _quantile(self.changed[t], 0.9)}
            if self.cone_speedup.get(t):
                speedups = self.cone_speedup[t]
                row["median_cone_speedup"] = statistics.median(speedups)
                # mean fraction of compute an exact method must still do: mean of cone / dense
                row["compute_needed"] = statistics.mean(1 / s for s in speedups)
                if self.dense_ms is not None:
                    fps = self.fps or 25.0
                    saved_s = self.dense_ms / 1e3 * (1 - row["compute_needed"]) * fps * 86400
                    row["cpu_hours_saved_per_stream_day_upper_bound"] = saved_s / 3600
            rows[str(t)] = row
        return {"frames": self.frames, "size": list(self.size), "model": self.model, "fps": self.fps,
                "fps_assumed": self.fps is None, "dense_ms": self.dense_ms, "clean_up": self.clean_up,
                "dense_tail": self.dense_tail, "thresholds": rows}


def _quantile(values, q):
    if not values:
        return 0.0
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


@torch.inference_mode()
def analyze_frames(frames: Iterable[torch.Tensor], thresholds: list[int], *, model=None, model_name=None,
                   fps=None, progress: Callable[[int], None] | None = None, clean_up: bool = False) -> AnalysisResult:
    """Change statistics of ``frames`` ([3, H, W] in [0, 1]) at each threshold (0-255 scale); ``clean_up``:
    thresholds above 0 clean their change maps as ``transform(**input_policy.CLEAN_UP)`` would, and their
    references follow the cleaned maps."""
    refs, result, sm = None, None, None
    policy = InputPolicy(CLEAN_UP["input_open"], CLEAN_UP["input_min_area"], CLEAN_UP["input_dilate"]) \
        if clean_up else None
    for i, x in enumerate(frames):
        if result is None:
            result = AnalysisResult(sorted(thresholds), tuple(x.shape[1:]), fps=fps, model=model_name,
                                    clean_up=clean_up)
            for t in result.thresholds:
                result.changed[t], result.cone_speedup[t] = [], []
                result.heat[t] = torch.zeros(x.shape[1:])
            refs = {t: x.clone() for t in result.thresholds}
            if model is not None:
                sm = transform(model)
                sm(x[None])
                result.dense_ms = _dense_latency(model, x[None])
                engine = sm._engine
                if engine.tail is not None:
                    share = tails.share_of_macs(engine.tail, engine.steps, engine._positions_of)
                    result.dense_tail = {"after": engine.tail.root, "share_of_dense_macs": share}
        elif tuple(x.shape[1:]) != result.size:
            raise ValueError(
                f"frame {i} is {tuple(x.shape[1:])}, earlier frames were {result.size}. Hint: pass --size HxW."
            )
        else:
            for t in result.thresholds:
                mask = (x - refs[t]).abs().amax(0) > t / 255
                if policy is not None and t > 0:
                    mask = policy.apply(mask[None, None].float())[0, 0] > 0
                refs[t] = torch.where(mask, x, refs[t])
                result.changed[t].append(float(mask.float().mean()))
                result.heat[t] += mask
                if sm is not None:
                    est = sm.estimate(mask[None, None].float())
                    result.cone_speedup[t].append(est.macs_dense / max(1, est.macs_cone))
        result.frames = i + 1
        if progress:
            progress(i)
    if result is None:
        raise ValueError("the source has no frames")
    for t in result.thresholds:
        result.heat[t] /= max(1, result.frames - 1)
    return result


def _dense_latency(model, x, repeats=3) -> float:
    model(x)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        model(x)
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


# -- outputs -----------------------------------------------------------------------------------


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


def make_plots(result: AnalysisResult) -> dict[str, bytes]:
    """PNG plots of the analysis, by file name."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    plots = {}
    fig, ax = plt.subplots(figsize=(7, 3.2))
    for t in result.thresholds:
        ax.plot(range(1, result.frames), [100 * c for c in result.changed[t]], label=f"threshold {t}")
    ax.set(xlabel="frame", ylabel="changed pixels (%)", title="Changed pixels per frame (held reference)")
    ax.legend(fontsize=8)
    plots["changed_over_time.png"] = _png(fig)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 3.2))
    for t in result.thresholds:
        ax.hist([100 * c for c in result.changed[t]], bins=30, alpha=0.5, label=f"threshold {t}")
    ax.set(xlabel="changed pixels (%)", ylabel="frames", title="Histogram over frames")
    ax.legend(fontsize=8)
    plots["histogram.png"] = _png(fig)
    plt.close(fig)

    n = len(result.thresholds)
    fig, axes = plt.subplots(1, n, figsize=(3.2 * n, 3.0), squeeze=False)
    for ax, t in zip(axes[0], result.thresholds):
        im = ax.imshow(result.heat[t].numpy(), cmap="inferno", vmin=0, vmax=max(1e-6, float(result.heat[t].max())))
        ax.set_title(f"threshold {t}", fontsize=9)
        ax.axis("off")
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
    fig.suptitle("Where changes happen: share of frames each pixel changed")
    plots["heatmap.png"] = _png(fig)
    plt.close(fig)

    if any(result.cone_speedup[t] for t in result.thresholds):
        fig, ax = plt.subplots(figsize=(7, 3.2))
        for t in result.thresholds:
            ax.plot(range(1, result.frames), result.cone_speedup[t], label=f"threshold {t}")
        ax.set(xlabel="frame", ylabel="dense / cone MACs", yscale="log",
               title=f"Cone-ideal speedup per frame ({result.model})")
        ax.legend(fontsize=8)
        plots["cone_speedup.png"] = _png(fig)
        plt.close(fig)
    return plots


def write_analysis(result: AnalysisResult, out_dir: str, source: str) -> str:
    """Write report.html (plots embedded), the PNGs, frames.csv and summary.json; return the HTML path."""
    os.makedirs(out_dir, exist_ok=True)
    plots = make_plots(result)
    for name, data in plots.items():
        with open(os.path.join(out_dir, name), "wb") as f:
            f.write(data)
    with open(os.path.join(out_dir, "frames.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["frame", "threshold", "changed_fraction", "cone_speedup"])
        for t in result.thresholds:
            for i, c in enumerate(result.changed[t]):
                cone = result.cone_speedup[t][i] if result.cone_speedup[t] else ""
                w.writerow([i + 1, t, f"{c:.6f}", f"{cone:.4f}" if cone != "" else ""])
    summary = result.summary()
    summary["source"] = source
    with open(os.path.join(out_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    path = os.path.join(out_dir, "report.html")
    with open(path, "w") as f:
        f.write(_html(result, summary, plots, source))
    return path


def _html(result, summary, plots, source) -> str:
    rows = []
    for t in result.thresholds:
        r = summary["thresholds"][str(t)]
        cells = [str(t), f"{r['median_changed']:.2%}", f"{r['p90_changed']:.2%}"]
        if "median_cone_speedup" in r:
            cells += [f"{r['median_cone_speedup']:.2f}x", f"{1 - r['compute_needed']:.1%}"]
            hours = r.get("cpu_hours_saved_per_stream_day_upper_bound")
            cells.append(f"{hours:.2f}" if hours is not None else "")
        rows.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
    head = ["threshold (0-255)", "median changed", "90th pct changed"]
    if result.model:
        head += ["median cone-ideal speedup", "compute an exact method can skip",
                 "CPU-hours saved / stream / day (upper bound)"]
    imgs = "".join(
        f'<figure><img alt="{name}" src="data:image/png;base64,{base64.b64encode(data).decode()}">'
        f"<figcaption>{name}</figcaption></figure>"
        for name, data in plots.items()
    )
    fps_note = f"{result.fps:.2f} fps (from the source)" if result.fps else "25 fps (assumed: the source has no rate)"
    clean_note = ("<p>Thresholds above 0 clean their change maps first (<code>--clean-up</code>: opening 1 px, "
                  "blobs under 30 px dropped, dilation 2 px), and the reference follows the cleaned map.</p>"
                  if result.clean_up else "")
    model_note = (f"<p>Model <code>{html.escape(result.model)}</code>: dense latency {result.dense_ms:.1f} ms "
                  f"per frame (median of 3, this machine). Savings assume {fps_note}; they are upper bounds for "
                  "exact mode (the cone is the minimum any exact method computes).</p>") if result.model else ""
    if result.dense_tail:
        model_note += (f"<p>{result.dense_tail['share_of_dense_macs']:.0%} of the model's multiply-adds lie after "
                       f"<code>{html.escape(result.dense_tail['after'])}</code>, a global mean broadcast back onto "
                       "the map (squeeze-excite, a pooled branch): in exact mode they change everywhere whenever "
                       "anything changed, and are recomputed whole (<code>tail_engine=\"auto\"</code> runs them on "
                       "the faster of PyTorch and OpenVINO). Gating the pooled vectors "
                       "(<code>threshold={\"global\": t}</code>, docs/thresholds.md) keeps them sparse, within a "
                       "measured error.</p>")
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>fxsparse analysis</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}figure{{display:inline-block;margin:1em}}
img{{max-width:100%}}</style></head><body>
<h1>fxsparse analysis</h1>
<p>Source <code>{html.escape(source)}</code>: {result.frames} frames of {result.size[1]}x{result.size[0]}.
A pixel counts as changed when its largest channel difference to the held reference exceeds the
threshold; the reference is updated only there (what fxsparse computes).</p>
{clean_note}{model_note}
<table><tr>{''.join(f'<th>{html.escape(h)}</th>' for h in head)}</tr>{''.join(rows)}</table>
{imgs}
<p>Numbers: <code>frames.csv</code>, <code>summary.json</code> next to this file.</p>
</body></html>"""
