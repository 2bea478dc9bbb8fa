"""Window ops: conv2d, max_pool2d, avg_pool2d.

Footprint: output position changes iff any input in its (dilated, strided,
padded) window changed, i.e. ``max_pool2d(mask, k, s, p, d)``. Exact.

Lowerings (chosen per node in ``prepare``):

* ``rows`` (1x1 conv, no groups): gather the changed positions' input rows,
  one GEMM, scatter. Executes exactly the cone.
* ``tiles`` (everything else): cover the output mask with tiles, gather each
  tile's input window (halo included, padding rows for the border) into one
  batch, run the dense op once on it, scatter the tiles back.

Both switch a stream to the dense op when more than ``dense_switch`` of its
output changed, so a fully changed frame costs about a dense run.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import ops
from ..kernels import tiles as T
from . import ChangeRule, register_change_rule

def _geometry(step):
    """(kernel, stride, (top, bottom, left, right) padding, dilation, ceil_mode) of a window node."""
    a = step.node.args
    if step.node.target is ops.conv2d:
        k = tuple(step.consts[1].shape[2:])
        return k, a[3], a[4], a[5], False
    if step.node.target is ops.max_pool2d:
        p = a[3]
        return a[1], a[2], (p[0], p[0], p[1], p[1]), a[4], a[5]
    p = a[3]  # avg_pool2d
    return a[1], a[2], (p[0], p[0], p[1], p[1]), (1, 1), a[4]


def propagate_window(step, ctx):
    mask = ctx.mask(step.node.args[0])
    k, s, (top, bottom, left, right), d, ceil_mode = _geometry(step)
    if step.node.target is ops.conv2d:
        if top or bottom or left or right:
            mask = F.pad(mask, (left, right, top, bottom))
        return F.max_pool2d(mask, k, s, 0, d)
    return F.max_pool2d(mask, k, s, (top, left), d, ceil_mode)


def _avg_divisor(step, in_hw, out_hw) -> torch.Tensor:
    """The per-output-position divisor PyTorch's avg_pool2d uses ([Ho, Wo])."""
    (kh, kw), (sh, sw), (ph, _, pw, _), _, _ = _geometry(step)
    count_include_pad, override = step.node.args[5], step.node.args[6]
    if override:
        return torch.full(out_hw, float(override))

    def extent(n_out, k, s, p, n_in):
        start = torch.arange(n_out) * s - p
        end = torch.clamp(start + k, max=n_in + p)
        full = end - start
        clipped = end.clamp(max=n_in) - start.clamp(min=0)
        return full, clipped

    fh, ch = extent(out_hw[0], kh, sh, ph, in_hw[0])
    fw, cw = extent(out_hw[1], kw, sw, pw, in_hw[1])
    if count_include_pad:
        return (fh[:, None] * fw[None, :]).float()
    return (ch[:, None] * cw[None, :]).float()


def prepare_window(step, ctx):
    x = step.node.args[0]
    inp, out = ctx.cache(x), ctx.cache(step.node)
    k, s, (top, _, left, _), d, _ = _geometry(step)
    _, _, h, w = inp.shape
    _, _, ho, wo = out.shape
    cfg = step.config
    target = step.node.target
    if target is ops.conv2d:
        weight, bias = step.consts[1], step.consts[2]
        groups, act = step.node.args[6], step.node.args[7]
        if k == (1, 1) and groups == 1 and (top, left) == (0, 0):
            cfg["lowering"] = "rows"
            cfg["weight2d"] = weight.flatten(1)
            cfg["stride"] = s
            return
        cfg["kernel"] = lambda win: ops.apply_activation(F.conv2d(win, weight, bias, s, 0, d, groups), act)
        cfg["pad_row"] = inp.zero_row
    elif target is ops.max_pool2d:
        cfg["kernel"] = lambda win: F.max_pool2d(win, k, s, 0, d)
        cfg["pad_row"] = inp.neg_inf_row
    else:
        divisor = _avg_divisor(step, (h, w), (ho, wo))
        cfg["divisor"] = divisor
        cfg["kernel"] = lambda win: F.avg_pool2d(win, k, s, 0, divisor_override=1)
        cfg["pad_row"] = inp.zero_row
    tile = ctx.tile_size
    cfg["lowering"] = "tiles"
    cfg["tile"] = (min(tile, ho), min(tile, wo))
    cfg["window"] = ((cfg["tile"][0] - 1) * s[0] + d[0] * (k[0] - 1) + 1, (cfg["tile"][1] - 1) * s[1] + d[1] * (k[1] - 1) + 1)
    cfg["pad_tl"] = (top, left)
    cfg["stride"] = s


def _dense_streams(ctx, covered: torch.Tensor, per_stream_total: int) -> torch.Tensor:
    """Streams whose active tiles cover more than ``ctx.dense_switch`` of their output run dense."""
    frac = covered.float() / per_stream_total
    return (frac > ctx.dense_switch).nonzero().view(-1)


def _run_dense(step, ctx, streams):
    out = ctx.cache(step.node)
    all_streams = len(streams) == out.shape[0]
    value = ctx.run_dense(step, None if all_streams else streams)
    out.write_streams(None if all_streams else streams, value)


def execute_window(step, ctx, mask):
    cfg = step.config
    out = ctx.cache(step.node)
    inp = ctx.cache(step.node.args[0])
    b, _, ho, wo = out.shape
    mpp = step.macs_per_position
    if cfg["lowering"] == "rows":
        return _execute_rows(step, ctx, mask, inp, out, mpp)
    tb, oy, ox = T.active_tiles(mask, *cfg["tile"])
    th, tw = cfg["tile"]
    covered = torch.bincount(tb, minlength=b) * (th * tw)
    dense = _dense_streams(ctx, covered, ho * wo)
    executed = 0
    if len(dense):
        _run_dense(step, ctx, dense)
        executed += len(dense) * ho * wo * mpp
        keep = ~torch.isin(tb, dense)
        tb, oy, ox = tb[keep], oy[keep], ox[keep]
    if len(tb):
        src = T.window_rows(
            tb, oy, ox, stride=cfg["stride"], pad_top_left=cfg["pad_tl"], window=cfg["window"],
            in_hw=inp.shape[2:], pad_row=cfg["pad_row"],
        )
        result = cfg["kernel"](T.gather_windows(inp.buf, src))
        if "divisor" in cfg:
            rows = oy[:, None] + torch.arange(th)
            cols = ox[:, None] + torch.arange(tw)
            result = result / cfg["divisor"][rows[:, :, None], cols[:, None, :]].unsqueeze(1)
        T.scatter_tiles(out.buf, T.tile_rows(tb, oy, ox, cfg["tile"], (ho, wo)), result)
        executed += len(tb) * th * tw * mpp
    return executed


def _execute_rows(step, ctx, mask, inp, out, mpp):
    """1x1 conv on exactly the changed positions: gather rows, GEMM, scatter."""
    b, _, ho, wo = out.shape
    pos = ctx.positions(step.node)
    if len(pos) > ctx.dense_switch * b * ho * wo:
        _run_dense(step, ctx, torch.arange(b))
        return b * ho * wo * mpp
    s = step.config["stride"]
    src = pos
    if s != (1, 1):
        _, _, h, w = inp.shape
        pb, py, px = pos // (ho * wo), (pos // wo) % ho, pos % wo
        src = (pb * h + py * s[0]) * w + px * s[1]
    rows = torch.nn.functional.linear(inp.buf.index_select(0, src), step.config["weight2d"], step.consts[2])
    out.buf.index_copy_(0, pos, ops.apply_activation(rows, step.node.args[7]))
    return len(pos) * mpp


def window_applies(step):
    if step.kind != "spatial" or step.input_kind(0) != "spatial":
        return "input or output is not a [B, C, H, W] activation"
    if step.node.target is ops.conv2d and any(step.consts[i] is None for i in (1,)):
        return "conv weight is not a constant (computed at run time)"
    return None


def _conv_macs_per_position(step) -> int:
    w = step.consts[1]
    return w.shape[0] * w.shape[1] * w.shape[2] * w.shape[3]


register_change_rule(
    ops.conv2d,
    rule=ChangeRule(
        "conv2d", propagate_window, execute_window, prepare_window, window_applies,
        macs_per_position=_conv_macs_per_position,
    ),
)
register_change_rule(
    ops.max_pool2d, rule=ChangeRule("max_pool2d", propagate_window, execute_window, prepare_window, window_applies)
)
register_change_rule(
    ops.avg_pool2d, rule=ChangeRule("avg_pool2d", propagate_window, execute_window, prepare_window, window_applies)
)
