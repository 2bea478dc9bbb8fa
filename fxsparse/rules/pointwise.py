"""Pointwise ops: activations, per-channel affine, add/sub/mul/div, cat on channels.

Footprint: the union of the input masks, with broadcasting (a changed
``[B, C, 1, 1]`` vector changes every position of its stream). Exact.

Lowering: gather the input rows of exactly the changed positions (a broadcast
input maps each position to its one row), apply the op to ``[N, C]`` rows,
scatter. Row values (``[B, F]``) recompute the changed streams.
"""

from __future__ import annotations

import operator

import torch

from .. import ops
from ..kernels import tiles as T
from . import ChangeRule, register_change_rule
from .masks import changed_streams, union
from .window import DENSE_SWITCH


def propagate_pointwise(step, ctx):
    return union([ctx.mask(n) for n in step.tensor_inputs], step.shape)


def _rows_fn(step):
    target = step.node.target
    if target is ops.activation:
        spec = step.node.args[1]
        return lambda x: ops.activation(x, spec)
    if target is ops.affine:
        return lambda x, scale, shift: x * scale + shift
    if target is ops.cat:
        return lambda *xs: torch.cat(xs, 1)
    return target  # operator.add & co. work on rows as they are


def _row_inputs(step, ctx, pos):
    """The op's inputs at output positions ``pos``, as ``[N, C]`` rows (scalars pass through)."""
    out = []
    for arg in step.config["row_args"]:
        if isinstance(arg, torch.fx.Node):
            const = step.config["const_rows"].get(arg)
            if const is not None:
                rows, shape = const
            else:
                cache = ctx.cache(arg)
                rows, shape = cache.buf, cache.shape
            out.append(rows.index_select(0, T.broadcast_rows(pos, step.shape, shape)))
        else:
            out.append(arg)
    return out


def prepare_pointwise(step, ctx):
    """Constant tensor inputs (BN scale, a bias tensor) become rows once."""
    args = step.node.args
    if step.node.target is ops.activation:
        row_args = [args[0]]
    elif step.node.target is ops.cat:
        row_args = list(args[0])
    else:
        row_args = list(args)
    step.config["row_args"] = row_args
    const_rows = {}
    for arg in row_args:
        if isinstance(arg, torch.fx.Node) and ctx.kind(arg) == "const":
            t = ctx.value(arg)
            if step.node.target is ops.affine:
                const_rows[arg] = (t.reshape(1, -1), (1, t.numel(), 1, 1))
                continue
            t4 = t.reshape((1,) * (4 - t.dim()) + tuple(t.shape))
            const_rows[arg] = (t4.permute(0, 2, 3, 1).reshape(-1, t4.shape[1]), tuple(t4.shape))
    step.config["const_rows"] = const_rows
    step.config["rows_fn"] = _rows_fn(step)


def execute_pointwise(step, ctx, mask):
    if step.kind == "rows":
        streams = changed_streams(mask)
        value = ctx.run_dense(step, streams)
        ctx.value(step.node)[streams] = value
        return 0
    out = ctx.cache(step.node)
    pos = ctx.positions(step.node)
    if len(pos) > DENSE_SWITCH * out.positions:
        out.write_streams(None, ctx.run_dense(step, None))
        return 0
    rows = step.config["rows_fn"](*_row_inputs(step, ctx, pos))
    out.buf.index_copy_(0, pos, rows)
    return 0


def pointwise_applies(step):
    """Every tensor input must broadcast against the output along B, H, W (and C, except for cat)."""
    if step.node.target is ops.cat:
        dim = step.node.args[1]
        if step.kind != "spatial" or dim % 4 != 1:
            return f"cat along dim {dim} (only channel concatenation of [B, C, H, W] runs sparsely)"
    if step.kind == "rows":
        for i, n in enumerate(step.tensor_inputs):
            if step.input_kind(i) not in ("rows", "const"):
                return "mixes per-stream rows with spatial activations"
        return None
    if step.kind != "spatial":
        return "output is not a [B, C, H, W] activation"
    for i, n in enumerate(step.tensor_inputs):
        kind = step.input_kind(i)
        if kind == "const" and step.node.target is ops.affine:
            continue
        if kind not in ("spatial", "const"):
            return f"input {n.name} is a {kind} value, not a [B, C, H, W] activation"
        shape = step.input_shape(i)
        if len(shape) > 4:
            return f"input {n.name} has {len(shape)} dims"
        shape = (1,) * (4 - len(shape)) + tuple(shape)
        for d in (0, 2, 3):
            if shape[d] not in (1, step.shape[d]):
                return f"input {n.name} of shape {tuple(shape)} does not broadcast to {tuple(step.shape)}"
        if step.node.target is not ops.cat and shape[1] not in (1, step.shape[1]):
            return f"input {n.name} of shape {tuple(shape)} does not broadcast to {tuple(step.shape)}"
    return None


_POINTWISE = ChangeRule("pointwise", propagate_pointwise, execute_pointwise, prepare_pointwise, pointwise_applies)
register_change_rule(ops.activation, rule=_POINTWISE)
register_change_rule(ops.affine, rule=ChangeRule("affine", propagate_pointwise, execute_pointwise, prepare_pointwise, pointwise_applies))
register_change_rule(ops.cat, rule=ChangeRule("cat", propagate_pointwise, execute_pointwise, prepare_pointwise, pointwise_applies))
for _op in (operator.add, operator.sub, operator.mul, operator.truediv):
    register_change_rule(_op, rule=ChangeRule(_op.__name__, propagate_pointwise, execute_pointwise, prepare_pointwise, pointwise_applies))
