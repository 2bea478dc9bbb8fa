"""Threshold gates: stop changes smaller than a threshold from spreading (approximate mode).

Note [Gates]: a gate sits on the input edge of a layer (``normalize.insert_gates``) and keeps its
own copy of the value it last let through. When its input changes, a position counts as changed only
where ``max over channels |new - kept| > threshold``; the kept copy is updated only there, and the
layer behind the gate sees the kept copy. Because the comparison is against the last value let
through, not the previous frame, the deviation of the kept copy from the true value is at most
``threshold`` per element at every moment: errors never accumulate over time. A gate on the input of
a 1x1 conv or linear layer that reads a pooled vector (squeeze-excite, ASPP pooling, LR-ASPP's gate,
a classifier head) keeps that vector unless it moved by more than its threshold, so the broadcast
product behind it recomputes only where its spatial input changed.

``transform(gate_test="mean")`` tests the mean over channels of ``|new - kept|`` instead of the max: the
mean deviation at every position then stays within the threshold, each element only within
``C x threshold``; on wide layers with noise in every channel it passes far fewer positions.

With threshold 0 a gate passes exactly the positions whose value differs: still exact.
``SparseModule.estimate`` (no values computed) treats gates as open: an upper bound.
"""

from __future__ import annotations

from .. import ops
from . import ChangeRule, register_change_rule
from .masks import mask_shape


def _threshold(step) -> float:
    return float(step.node.args[1])


def _moved(delta, step):
    """Per position (row): the change a gate tests, from ``delta`` = |new - kept| ``[N, C, ...]``: its max over
    channels (default; every kept element within the threshold) or its mean (``gate_test="mean"``)."""
    test = step.node.args[2] if len(step.node.args) > 2 else "max"
    flat = delta.flatten(1)
    return flat.mean(1) if test == "mean" else flat.amax(1)


def propagate_gate(step, ctx):
    x = step.node.args[0]
    m_in = ctx.mask(x)
    if not ctx.executing:  # estimate(): no fresh values to compare; the gate is open
        if step.kind == "spatial":
            ctx.set_box(step.node, ctx.box(x))
        return m_in
    t = _threshold(step)
    if step.kind == "rows":
        new, kept = ctx.value(x), ctx.value(step.node)
        moved = (_moved((new - kept).abs(), step) > t)[:, None]
        return (moved & (m_in > 0)).to(m_in.dtype)
    src, own = ctx.cache(x), ctx.cache(step.node)
    out = ctx.mask_buffer(step.node, mask_shape(step.shape))
    box = ctx.box(x)
    if box is None:
        ctx.set_box(step.node, None)
        return out
    pos = ctx.positions(x)
    moved = _moved((src.buf.index_select(0, pos) - own.buf.index_select(0, pos)).abs(), step) > t
    keep = pos[moved]
    out.view(-1)[keep] = 1.0
    ctx.set_box(step.node, box if len(keep) else None)
    ctx.set_positions(step.node, keep)
    return out


def execute_gate(step, ctx, mask):
    x = step.node.args[0]
    if step.kind == "rows":
        streams = mask.view(-1).nonzero().view(-1)
        ctx.value(step.node)[streams] = ctx.value(x)[streams]
        return 0
    pos = ctx.positions(step.node)
    ctx.cache(step.node).buf.index_copy_(0, pos, ctx.cache(x).buf.index_select(0, pos))
    return 0


def gate_applies(step):
    if step.kind not in ("spatial", "rows") or step.input_kind(0) != step.kind:
        return "gates only [B, C, H, W] activations or [B, F] rows"
    return None


register_change_rule(ops.gate, rule=ChangeRule("gate", propagate_gate, execute_gate, applies=gate_applies, exact=False))
