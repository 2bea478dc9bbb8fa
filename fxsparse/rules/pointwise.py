"""Pointwise ops: activations, per-channel affine, add/sub/mul/div, cat on channels, dtype casts.

Footprint: the union of the input masks, with broadcasting (a changed
``[B, C, 1, 1]`` vector changes every position of its stream). Exact.

Lowering: gather the input rows of exactly the changed positions (a broadcast
input maps each position to its one row), apply the op to ``[N, C]`` rows,
scatter. Row values (``[B, F]``) recompute the changed streams.
"""

from __future__ import annotations

import operator

import torch
import torch.nn.functional as F

from .. import ops
from ..kernels import tiles as T
from . import ChangeRule, register_change_rule
from .masks import changed_streams, spatial_union, union
from .window import run_dense_streams


def propagate_pointwise(step, ctx):
    if step.kind == "spatial":
        return spatial_union(ctx, step.node, step.tensor_inputs, step.shape)
    return union([ctx.mask(n) for n in step.tensor_inputs], step.shape)


def _rows_fn(step):
    """(fn over [N, C] rows, the data inputs it takes); op parameters are closed over."""
    target, args = step.node.target, step.node.args
    if target is ops.activation:
        spec = args[1]
        return (lambda x: ops.activation(x, spec)), [args[0]]
    if target is ops.affine:
        scale, shift = step.consts[1], step.consts[2]
        return (lambda x: x * scale + shift), [args[0]]
    if target is ops.prelu:
        weight = step.consts[1]
        return (lambda x: F.prelu(x, weight)), [args[0]]
    if target is ops.softmax:
        log = args[2]
        return (lambda x: ops.softmax(x, 1, log)), [args[0]]
    if target is ops.cat:
        return (lambda *xs: torch.cat(xs, 1)), list(args[0])
    if target is ops.cast:
        dtype = args[1]
        return (lambda x: x.to(dtype)), [args[0]]
    return target, list(args)  # operator.add & co. work on rows as they are


def _row_inputs(step, ctx, pos):
    """The op's data inputs at output positions ``pos``, as ``[N, C]`` rows (scalars pass through)."""
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
    """Constant tensor data inputs (a bias tensor in ``x + b``) become rows once."""
    fn, row_args = _rows_fn(step)
    step.config["rows_fn"] = fn
    step.config["row_args"] = row_args
    const_rows = {}
    for arg in row_args:
        if isinstance(arg, torch.fx.Node) and ctx.kind(arg) == "const":
            t = ctx.value(arg)
            t4 = t.reshape((1,) * (4 - t.dim()) + tuple(t.shape))
            const_rows[arg] = (t4.permute(0, 2, 3, 1).reshape(-1, t4.shape[1]), tuple(t4.shape))
    step.config["const_rows"] = const_rows


_OUT_OPS = {operator.add: torch.add, operator.sub: torch.sub, operator.mul: torch.mul, operator.truediv: torch.div}


def execute_pointwise(step, ctx, mask):
    if step.kind == "rows":
        streams = changed_streams(mask)
        value = ctx.run_dense(step, streams)
        ctx.value(step.node)[streams] = value
        return 0
    out = ctx.cache(step.node)
    b, _, h, w = out.shape
    dense = ctx.dense_streams(step.node, h * w)
    if len(dense) == b and step.node.target in _OUT_OPS and not step.node.kwargs:
        # every stream: the op writes straight into the cache (a squeeze-excite scale on a whole map:
        # 0.6 ms through a new tensor adopted as the cache, against 0.3 ms for the op alone)
        _OUT_OPS[step.node.target](*ctx.resolve(step.node.args), out=out.view())
        return 0
    if len(dense):
        run_dense_streams(step, ctx, dense)
        if len(dense) == b:
            return 0
    pos = ctx.positions(step.node)
    if len(dense):
        pos = pos[~torch.isin(pos // (h * w), dense)]
    rows = step.config["rows_fn"](*_row_inputs(step, ctx, pos))
    out.buf.index_copy_(0, pos, rows)
    return 0


def pointwise_applies(step):
    """Every data input must broadcast against the output along B, H, W (and C, except for cat)."""
    target, args = step.node.target, step.node.args
    if target is ops.cat and (step.kind != "spatial" or args[1] % 4 != 1):
        return f"cat along dim {args[1]} (only channel concatenation of [B, C, H, W] runs sparsely)"
    if target is ops.softmax and step.shape is not None and args[1] % len(step.shape) != 1:
        return f"softmax along dim {args[1]} mixes positions (only the channel dim runs sparsely)"
    if target in (ops.affine, ops.prelu) and any(c is None for c in step.consts[1:]):
        return "parameters are computed at run time"
    _, data = _rows_fn(step)
    kinds = dict(zip(step.tensor_inputs, step.input_kinds))
    shapes = dict(zip(step.tensor_inputs, step.input_shapes))
    data = [a for a in data if isinstance(a, torch.fx.Node)]
    if step.kind == "rows":
        if any(kinds[n] not in ("rows", "const") for n in data):
            return "mixes per-stream rows with spatial activations"
        return None
    if step.kind != "spatial":
        return "output is not a [B, C, H, W] activation"
    for n in data:
        if kinds[n] not in ("spatial", "const"):
            return f"input {n.name} is a {kinds[n]} value, not a [B, C, H, W] activation"
        shape = shapes[n] or ()
        if len(shape) > 4:
            return f"input {n.name} has {len(shape)} dims"
        shape = (1,) * (4 - len(shape)) + tuple(shape)
        dims = (0, 2, 3) if target is ops.cat else (0, 1, 2, 3)
        if any(shape[d] not in (1, step.shape[d]) for d in dims):
            return f"input {n.name} of shape {tuple(shape)} does not broadcast to {tuple(step.shape)}"
    return None


def covers_pointwise(step, ctx) -> list:
    """A spatial union contains the mask of every input of its own size (Note [Residual inside])."""
    if step.kind != "spatial":
        return []
    return [n for n in step.tensor_inputs
            if ctx.kind(n) == "spatial" and tuple(ctx.cache(n).shape[2:]) == tuple(step.shape[2:])]


def pointwise_rule(name: str) -> ChangeRule:
    """The pointwise family's rule under a report name (one per op, same behaviour)."""
    return ChangeRule(name, propagate_pointwise, execute_pointwise, prepare_pointwise, pointwise_applies,
                      covers=covers_pointwise)


for _op, _name in [
    (ops.activation, "pointwise"),
    (ops.affine, "affine"),
    (ops.prelu, "prelu"),
    (ops.softmax, "channel_softmax"),
    (ops.cat, "cat"),
    (ops.cast, "cast"),
    (operator.add, "add"),
    (operator.sub, "sub"),
    (operator.mul, "mul"),
    (operator.truediv, "truediv"),
]:
    register_change_rule(_op, rule=pointwise_rule(_name))
