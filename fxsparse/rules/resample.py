"""Resampling ops: interpolate / upsample, constant pad, transposed conv, adaptive average pool.

* ``interpolate`` (nearest, bilinear, bicubic, area; align_corners both ways):
  separable, so each output row reads a few input rows with fixed weights
  (the "taps"), the same for columns. The taps are read off PyTorch itself by
  interpolating an identity matrix once, so they match its index arithmetic
  exactly. Footprint: an output pixel changes iff one of its taps changed.
  Lowering: per changed output pixel, a weighted sum of its tap rows.
* ``pad``: a shift; the padded border never changes. Lowering: copy rows.
* ``conv_transpose2d``: footprint = ``conv_transpose2d(mask, ones) > 0``;
  lowering recomputes the changed streams (dense per stream).
* ``adaptive_avg_pool2d`` to a non-1x1 size: footprint =
  ``adaptive_max_pool2d(mask)``; lowering recomputes the changed streams.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import ops
from . import ChangeRule, register_change_rule
from .masks import changed_streams
from .window import run_dense_streams


def _spatial_in_out(step):
    if step.kind != "spatial" or step.input_kind(0) != "spatial":
        return "input or output is not a [B, C, H, W] activation"
    return None


# -- interpolate -------------------------------------------------------------------


def _taps(step, ctx, dim: int):
    """(index [n_out, K], weight [n_out, K]) of output rows (dim=2) or columns (dim=3)."""
    _, size, scale, mode, align, recompute = (ctx.resolve(a) for a in step.node.args)
    n_in = ctx.cache(step.node.args[0]).shape[dim]
    n_out = step.shape[dim]
    # Probe: n_in one-hot channels along the probed dim, the other dim of length 1.
    if dim == 2:
        probe = torch.eye(n_in).view(1, n_in, n_in, 1)
        probe_size = None if size is None else (n_out, 1)
    else:
        probe = torch.eye(n_in).view(1, n_in, 1, n_in)
        probe_size = None if size is None else (1, n_out)
    probe_scale = None
    if size is None:
        sf = scale if isinstance(scale, (tuple, list)) else (scale, scale)
        probe_scale = (float(sf[0]), 1.0) if dim == 2 else (1.0, float(sf[1]))
    a = ops.interpolate(probe, probe_size, probe_scale, mode, align, recompute)  # [1, n_in, ., .]
    a = a.reshape(n_in, n_out).t()  # [n_out, n_in]
    if a.shape != (n_out, n_in):
        raise RuntimeError("interpolate probe produced an unexpected shape")
    k = int((a != 0).sum(1).max())
    weight, index = a.abs().topk(k, dim=1)
    weight = a.gather(1, index)
    return index, weight


def _reach(index: torch.Tensor, weight: torch.Tensor, n_in: int) -> tuple[list[int], list[int]]:
    """Per input row (or column): the first and one-past-last output row whose taps read it."""
    lo, hi = [index.shape[0]] * n_in, [0] * n_in
    for o, (taps, weights) in enumerate(zip(index.tolist(), weight.tolist())):
        for i, wt in zip(taps, weights):
            if wt != 0:
                lo[i], hi[i] = min(lo[i], o), max(hi[i], o + 1)
    return lo, hi


def prepare_interpolate(step, ctx):
    cfg = step.config
    cfg["rows"] = _taps(step, ctx, 2)
    cfg["cols"] = _taps(step, ctx, 3)
    _, _, h, w = ctx.cache(step.node.args[0]).shape
    cfg["row_reach"] = _reach(*cfg["rows"], h)
    cfg["col_reach"] = _reach(*cfg["cols"], w)
    cfg["row_taps"] = (cfg["rows"][1] != 0).float()  # which taps count, once, not per frame
    cfg["col_taps"] = (cfg["cols"][1] != 0).float()


def propagate_interpolate(step, ctx):
    """The footprint, computed only inside the output box the input's changed box reaches (a segmenter's
    final upsample to 576x768 took 3.8 ms per frame over the whole map); all ones when every input changed."""
    x = step.node.args[0]
    cfg = step.config
    out = ctx.mask_buffer(step.node, (step.shape[0], 1) + tuple(step.shape[2:]))
    box = ctx.box(x)
    if box is None:
        ctx.set_box(step.node, None)
        return out
    _, _, ho, wo = out.shape
    if ctx.fully_changed(x):
        out.fill_(1.0)
        ctx.set_box(step.node, (0, ho, 0, wo))
        return out
    (ri, _), (ci, _) = cfg["rows"], cfg["cols"]
    rt, ct = cfg["row_taps"], cfg["col_taps"]
    (rlo, rhi), (clo, chi) = cfg["row_reach"], cfg["col_reach"]
    y0, y1, x0, x1 = box
    oy0, oy1 = min(rlo[y0:y1]), max(rhi[y0:y1])
    ox0, ox1 = min(clo[x0:x1]), max(chi[x0:x1])
    if oy0 >= oy1 or ox0 >= ox1:
        ctx.set_box(step.node, None)
        return out
    mask = ctx.mask(x)
    rows = None
    for k in range(ri.shape[1]):
        m = mask.index_select(2, ri[oy0:oy1, k]) * rt[oy0:oy1, k].view(1, 1, -1, 1)
        rows = m if rows is None else torch.maximum(rows, m)
    region = out[:, :, oy0:oy1, ox0:ox1]
    for k in range(ci.shape[1]):
        m = rows.index_select(3, ci[ox0:ox1, k]) * ct[ox0:ox1, k].view(1, 1, 1, -1)
        torch.maximum(region, m, out=region)
    ctx.set_box(step.node, (oy0, oy1, ox0, ox1))
    return out


def execute_interpolate(step, ctx, mask):
    out = ctx.cache(step.node)
    inp = ctx.cache(step.node.args[0])
    _, _, ho, wo = out.shape
    dense = ctx.dense_streams(step.node, ho * wo)
    if len(dense):
        run_dense_streams(step, ctx, dense)
        if len(dense) == out.shape[0]:
            return 0
    pos = ctx.positions(step.node)
    if len(dense):
        pos = pos[~torch.isin(pos // (ho * wo), dense)]
    _, _, h, w = inp.shape
    b, y, x = pos // (ho * wo), (pos // wo) % ho, pos % wo
    (ri, rw), (ci, cw) = step.config["rows"], step.config["cols"]
    acc = None
    for i in range(ri.shape[1]):
        for j in range(ci.shape[1]):
            src = (b * h + ri[y, i]) * w + ci[x, j]
            term = inp.buf.index_select(0, src) * (rw[y, i] * cw[x, j]).unsqueeze(1)
            acc = term if acc is None else acc + term
    out.buf.index_copy_(0, pos, acc.to(out.buf.dtype))  # tap weights are float32: bfloat16 rows promote
    return 0


def interpolate_applies(step):
    return _spatial_in_out(step)


register_change_rule(
    ops.interpolate,
    rule=ChangeRule("interpolate", propagate_interpolate, execute_interpolate, prepare_interpolate, interpolate_applies),
)

# -- pad -----------------------------------------------------------------------------


def propagate_pad(step, ctx):
    return F.pad(ctx.mask(step.node.args[0]), step.node.args[1])


def execute_pad(step, ctx, mask):
    out, inp = ctx.cache(step.node), ctx.cache(step.node.args[0])
    pos = ctx.positions(step.node)
    pad = tuple(step.node.args[1]) + (0, 0, 0, 0)
    left, top = pad[0], pad[2]
    _, _, ho, wo = out.shape
    _, _, h, w = inp.shape
    b, y, x = pos // (ho * wo), (pos // wo) % ho, pos % wo
    src = (b * h + (y - top)) * w + (x - left)  # changed positions always lie inside the input
    out.buf.index_copy_(0, pos, inp.buf.index_select(0, src))
    return 0


def pad_applies(step):
    if len(step.node.args[1]) not in (2, 4):
        return "pads more than the two spatial dims"
    return _spatial_in_out(step)


register_change_rule(ops.pad, rule=ChangeRule("pad", propagate_pad, execute_pad, applies=pad_applies))

# -- per-stream lowerings (exact footprint, the changed streams recompute) ----------


def execute_per_stream(step, ctx, mask):
    streams = changed_streams(mask)
    out = ctx.cache(step.node)
    run_dense_streams(step, ctx, streams)
    return len(streams) * out.shape[2] * out.shape[3] * step.macs_per_position


def propagate_conv_transpose(step, ctx):
    _, w, _, stride, padding, output_padding, groups, dilation = step.node.args
    k = step.consts[1].shape[2:]
    ones = torch.ones(1, 1, *k)
    m = F.conv_transpose2d(ctx.mask(step.node.args[0]), ones, None, stride, padding, output_padding, 1, dilation)
    return (m > 0).float()


def _conv_transpose_macs(step) -> int:
    w = step.consts[1]  # [C_in, C_out / groups, kh, kw]
    x_hw = step.input_shape(0)[2] * step.input_shape(0)[3]
    out_hw = step.shape[2] * step.shape[3]
    return w.numel() * x_hw // out_hw  # average MACs per output position


register_change_rule(
    ops.conv_transpose2d,
    rule=ChangeRule(
        "conv_transpose2d", propagate_conv_transpose, execute_per_stream, applies=_spatial_in_out,
        macs_per_position=_conv_transpose_macs,
    ),
)


def propagate_adaptive_avg(step, ctx):
    return F.adaptive_max_pool2d(ctx.mask(step.node.args[0]), step.shape[2:])


register_change_rule(
    ops.adaptive_avg_pool2d,
    rule=ChangeRule("adaptive_avg_pool2d", propagate_adaptive_avg, execute_per_stream, applies=_spatial_in_out),
)
