"""``fxsparse run``: a model over a video, sparse, with an output video, per-frame JSON and savings."""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch

from .energy import EnergyMeter
from .input_policy import CLEAN_UP
from .outputs import max_rel_error
from .overlay import first_logits, first_map, render
from .patch import PatchRunner
from .transform import transform

MODES = ("exact", "threshold", "patch")


def make_runner(model, mode: str, threshold: float, transform_options: dict | None = None, clean_up: bool = False):
    """The sparse runner for ``mode`` (threshold on the 0-255 pixel scale); ``transform_options`` (e.g.
    ``dtype``, ``fuse_chains``) go to ``transform`` in the exact and threshold modes; ``clean_up``: the input
    mask's clean-up (:data:`CLEAN_UP`), threshold mode only."""
    options = transform_options or {}
    if clean_up and mode != "threshold":
        raise ValueError("the mask clean-up applies to threshold mode only (exact mode recomputes every change).")
    if mode == "exact":
        return transform(model, **options)
    if mode == "threshold":
        return transform(model, input_threshold=threshold / 255, **(CLEAN_UP if clean_up else {}), **options)
    if mode == "patch":
        if options:
            raise ValueError(f"{', '.join(options)} apply to the exact and threshold modes, not to patch mode.")
        return PatchRunner(model, threshold=threshold / 255, min_area=16)
    raise ValueError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")


def agreement(sparse_out, dense_out) -> dict:
    """How close the sparse output is to dense: max relative error, plus top-1 / argmax agreement."""
    out = {"max_rel_error": max_rel_error(sparse_out, dense_out)}
    a, b = first_logits(sparse_out), first_logits(dense_out)
    if a is not None:
        out["top1_agree"] = bool((a.argmax(1) == b.argmax(1)).all())
    a, b = first_map(sparse_out), first_map(dense_out)
    if a is not None and a.shape[1] > 1:
        out["argmax_agree"] = float((a.argmax(1) == b.argmax(1)).float().mean())
    return out


@dataclass
class RunSummary:
    frames: int = 0
    interrupted: bool = False
    sparse_ms: list[float] = field(default_factory=list)
    dense_ms: list[float] = field(default_factory=list)
    sparse_energy: EnergyMeter | None = None
    dense_energy: EnergyMeter | None = None
    fps: float = 25.0
    dense_frames: int = 0  # frames after the first that ran as one dense pass (most pixels changed)

    def as_dict(self) -> dict:
        d = {"frames": self.frames, "interrupted": self.interrupted, "fps": self.fps,
             "dense_frames": self.dense_frames}
        if self.sparse_ms:
            d["median_sparse_ms"] = statistics.median(self.sparse_ms)
        if self.dense_ms:
            d["median_dense_ms"] = statistics.median(self.dense_ms)
            d["speedup_of_medians"] = d["median_dense_ms"] / d["median_sparse_ms"]
            day = self.fps * 86400
            d["cpu_seconds_saved_per_stream_day"] = (d["median_dense_ms"] - d["median_sparse_ms"]) / 1e3 * day
        if self.sparse_energy and self.sparse_energy.calls:
            d["energy_method"] = self.sparse_energy.method
            d["sparse_joules_per_frame"] = self.sparse_energy.joules / self.sparse_energy.calls
            if self.dense_energy and self.dense_energy.calls:
                d["dense_joules_per_frame"] = self.dense_energy.joules / self.dense_energy.calls
                saved = (d["dense_joules_per_frame"] - d["sparse_joules_per_frame"]) * self.fps * 86400
                d["kwh_saved_per_stream_day"] = saved / 3.6e6
        return d


@torch.inference_mode()
def run_frames(frames: Iterable[torch.Tensor], model, *, mode="exact", threshold=8.0, compare_dense=False,
               writer=None, jsonl=None, fps=25.0, watts_per_core=10.0,
               on_frame: Callable[[dict], None] | None = None, transform_options: dict | None = None,
               clean_up: bool = False) -> RunSummary:
    """Process ``frames`` one by one; write overlay frames to ``writer`` and one JSON line per frame.

    A KeyboardInterrupt stops the loop cleanly: the summary says ``interrupted`` and everything
    written so far is complete (the caller closes ``writer``; each JSON line is flushed as written).
    """
    runner = make_runner(model.eval(), mode, threshold, transform_options, clean_up)
    if hasattr(runner, "copy_outputs"):
        runner.copy_outputs = False  # each output is rendered and compared before the next frame
    summary = RunSummary(sparse_energy=EnergyMeter(watts_per_core), fps=fps)
    summary.dense_energy = EnergyMeter(watts_per_core) if compare_dense else None
    size = None
    try:
        for i, x in enumerate(frames):
            if size is None:
                size = tuple(x.shape)
            elif tuple(x.shape) != size:
                raise ValueError(f"frame {i} is {tuple(x.shape[1:])}, earlier frames were {size[1:]}. "
                                 "Hint: pass --size HxW to resize every frame.")
            xb = x[None]
            with summary.sparse_energy:
                t = time.perf_counter()
                out = runner(xb)
                sparse_ms = (time.perf_counter() - t) * 1e3
            record = {"frame": i, "sparse_ms": round(sparse_ms, 3)}
            st = runner.stats
            if hasattr(st, "macs_dense"):
                record.update(changed_fraction=st.changed_fraction[0], macs_dense=st.macs_dense,
                              macs_executed=st.macs_executed, cone_speedup=round(st.cone_speedup, 4),
                              dense_frame=st.dense)
            else:
                record.update(changed_fraction=st.changed_fraction[0], crops=st.crops,
                              processed_fraction=round(st.processed_fraction, 4))
            if i > 0:
                summary.sparse_ms.append(sparse_ms)
                summary.dense_frames += bool(getattr(st, "dense", False))
            if compare_dense:
                with summary.dense_energy:
                    t = time.perf_counter()
                    dense_out = model(xb)
                    dense_ms = (time.perf_counter() - t) * 1e3
                record["dense_ms"] = round(dense_ms, 3)
                record.update(agreement(out, dense_out))
                if i > 0:
                    summary.dense_ms.append(dense_ms)
            if writer is not None:
                writer.write(render(x, out))
            if jsonl is not None:
                jsonl.write(json.dumps(record) + "\n")
                jsonl.flush()
            summary.frames = i + 1
            if on_frame:
                on_frame(record)
    except KeyboardInterrupt:
        summary.interrupted = True
    return summary
