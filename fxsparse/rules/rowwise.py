"""Per-stream row ops: flatten (keeping the batch dim) and linear on ``[B, F]``.

Footprint: a stream's row changes when anything of that stream changed. Exact.
Lowering: the op runs on the changed streams' rows only.
"""

from __future__ import annotations

from .. import ops
from . import ChangeRule, register_change_rule
from .masks import changed_streams, per_stream


def propagate_rows(step, ctx):
    return per_stream(ctx.mask(step.node.args[0]))


def execute_rows(step, ctx, mask):
    counts = ctx.stream_counts(step.node)
    if all(counts):  # every stream (the usual case after a pooled head): no stream indexing, no copies
        ctx.value(step.node).copy_(ctx.run_dense(step, None))
        return len(counts) * step.macs_per_position
    streams = changed_streams(mask)
    ctx.value(step.node)[streams] = ctx.run_dense(step, streams)
    return len(streams) * step.macs_per_position


def flatten_applies(step):
    start = step.node.args[1]
    ndim = len(step.input_shape(0))
    if step.kind != "rows" or start % ndim == 0:
        return "flattens the batch dimension"
    return None


def linear_applies(step):
    if step.kind != "rows" or len(step.shape) != 2 or step.input_kind(0) != "rows":
        return "linear over a spatial dimension (only [B, F] inputs run per stream)"
    return None


register_change_rule(ops.flatten, rule=ChangeRule("flatten", propagate_rows, execute_rows, applies=flatten_applies))
register_change_rule(
    ops.linear,
    rule=ChangeRule(
        "linear", propagate_rows, execute_rows, applies=linear_applies,
        macs_per_position=lambda step: step.consts[1].numel(),
    ),
)
