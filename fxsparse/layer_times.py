"""Where a sparse frame's time goes, layer by layer, against each layer's dense op.

``layer_times(sm, frames)`` runs ``frames`` through a transformed model with a timer around every
step's mask propagation and execution, then times each layer's dense op on the same caches. Its table
says, per layer: the changed share, the lowering, the propagation and execution medians, the dense
op's median and the *time-ideal* (dense time x changed share: what a perfectly proportional sparse
kernel would take). Layers whose sparse execution costs more than their dense op are marked.
For development and for users asking why a model gains little; the timers add ~1 us per step.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from dataclasses import dataclass

import torch

from .timing import median_seconds


@dataclass
class LayerTime:
    name: str
    op: str
    lowering: str
    changed: float  # median changed share of the layer's output
    propagate_ms: float
    execute_ms: float  # median over the frames where the layer had changes (0 if none)
    dense_ms: float | None  # the layer's dense op on every stream, on warm caches (None: not spatial)

    @property
    def ideal_ms(self) -> float | None:
        return None if self.dense_ms is None else self.dense_ms * self.changed


@torch.inference_mode()
def layer_times(sm, frames, dense_repeats: int = 5) -> list[LayerTime]:
    """Per-layer times of ``sm`` (a SparseModule that has seen its first frame) over ``frames``.

    The module's rules are wrapped for the run and restored afterwards; its stream state advances.
    """
    engine = sm._engine
    if engine is None:
        raise ValueError("layer_times needs a module that has seen its first frame: call sm(first_frame) first.")
    timings = {step.node: ([], []) for step in engine.steps}
    originals = {step.node: step.rule for step in engine.steps}

    def timed(fn, into):
        def run(*args):
            start = time.perf_counter()
            out = fn(*args)
            into.append(time.perf_counter() - start)
            return out

        return run

    shares = {step.node: [] for step in engine.steps}
    tail, tail_times = engine.tail, []  # Note [Dense tails]: one graph, timed as one row
    try:
        for step in engine.steps:
            prop, execute = timings[step.node]
            step.rule = dataclasses.replace(step.rule, propagate=timed(step.rule.propagate, prop),
                                            execute=timed(step.rule.execute, execute))
        if tail is not None:
            engine._tail_frame = timed(engine._tail_frame, tail_times)  # an instance attribute over the method
        for x in frames:
            sm(x)
            if not sm.stats.dense:
                for step, layer in zip(engine.steps, sm.stats.layers):
                    shares[step.node].append(layer.changed_fraction)
    finally:
        for step in engine.steps:
            step.rule = originals[step.node]
        engine.__dict__.pop("_tail_frame", None)
    rows = []
    for step in engine.steps:
        if tail is not None and step.node in tail.nodes:
            if step is tail.steps[0]:
                rows.append(_tail_row(engine, shares[step.node], tail_times, dense_repeats))
            continue
        prop, execute = timings[step.node]
        dense = None
        if step.kind == "spatial":
            dense = median_seconds(lambda s=step: engine.run_dense(s, None), dense_repeats) * 1e3
        rows.append(LayerTime(
            step.name, step.op, step.config.get("lowering", "rows" if step.kind == "rows" else "positions"),
            statistics.median(shares[step.node]) if shares[step.node] else 0.0,
            statistics.median(prop) * 1e3 if prop else 0.0,
            statistics.median(execute) * 1e3 if execute else 0.0,
            dense,
        ))
    return rows


def _tail_row(engine, shares, times, repeats) -> LayerTime:
    """The dense tail as one row: its graph's time in the frames against the same graph on the caches."""
    tail = engine.tail
    inputs = [engine.resolve(node) for node in tail.inputs]
    dense = median_seconds(lambda: tail.module(*inputs), repeats) * 1e3
    return LayerTime(f"dense tail: {len(tail.steps)} layers after {tail.root}", "graph", "dense tail",
                     statistics.median(shares) if shares else 0.0, 0.0,
                     statistics.median(times) * 1e3 if times else 0.0, dense)


def layer_times_table(rows: list[LayerTime]) -> str:
    """Markdown table of ``rows`` with totals."""
    lines = ["| layer | op | lowering | changed | propagate ms | execute ms | dense op ms | time-ideal ms | |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        dense = "-" if r.dense_ms is None else f"{r.dense_ms:.3f}"
        ideal = "-" if r.ideal_ms is None else f"{r.ideal_ms:.3f}"
        mark = "dense op faster" if r.dense_ms is not None and r.execute_ms > r.dense_ms else ""
        lines.append(f"| {r.name} | {r.op} | {r.lowering} | {r.changed:.1%} | {r.propagate_ms:.3f} | "
                     f"{r.execute_ms:.3f} | {dense} | {ideal} | {mark} |")
    prop = sum(r.propagate_ms for r in rows)
    execute = sum(r.execute_ms for r in rows)
    ideal = sum(r.ideal_ms or 0.0 for r in rows)
    lines.append(f"| **total** | | | | {prop:.2f} | {execute:.2f} | "
                 f"{sum(r.dense_ms or 0.0 for r in rows):.2f} | {ideal:.2f} | |")
    return "\n".join(lines)
