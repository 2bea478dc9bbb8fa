"""Conv chains: a run of convs executed as one unit on gathered tiles.

Note [Conv chains]: per-layer sparse execution pays a fixed cost per layer and frame (mask
footprint, positions, index arithmetic, gather, scatter: ~30-100 small torch ops, 0.2-1.5 ms
measured per mobilenet_v2 layer at 1% change), which dominates for networks of many thin layers.
A *chain* is a run of convs ``c1 -> c2 -> ... -> ck`` where each inner output has the next conv
as its only user (an inverted-residual or bottleneck block; only the last conv may add a
residual). Its changed outputs are covered by ``t x t`` tiles; each tile's input window (the
chain's composed receptive field) is gathered once from the chain input's cache, the convs run
densely on the batch of windows with no padding ("valid"), and only the last conv's tiles are
written back. So the inner activations are never cached (their memory is freed) and a block
costs one gather, k conv calls and one scatter.

Exactness: a valid conv on a window computes exactly the outputs whose receptive field lies in
the window. Image-border zero padding is reproduced by gathering zeros outside the image for the
chain input and, after every inner conv, zeroing the positions that lie outside that layer's
image (its successor would read padding zeros there, not ``act(bias)``). Tiles overlap at image
edges (shifted inward) and in halos; overlapping writes hold identical values.

Masks still propagate layer by layer (stats and change_masks() stay per layer); the executed
MACs of the whole chain are reported on its last layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from . import ops
from .kernels import tiles as T
from .kernels.buckets import bucket, bucket_span, pad_index
from .rules import get_change_rule
from .rules.window import _epilogue, _gemm


@dataclass
class Level:
    """Geometry of one conv's output inside a tile window: window start = ``o * stride - offset``."""

    stride: tuple[int, int]
    offset: tuple[int, int]
    window: tuple[int, int]
    hw: tuple[int, int]  # the layer's output (image) size


@dataclass
class Chain:
    steps: list  # runtime.Step, first to last
    tile: tuple[int, int]
    levels: list[Level]  # levels[0]: chain input; levels[i]: output of steps[i - 1]
    tile_macs: int  # MACs of one tile through the chain, halos included
    frame_macs: int  # MACs of one stream's whole frame through the chain

    @property
    def input_node(self):
        return self.steps[0].node.args[0]

    @property
    def output_step(self):
        return self.steps[-1]


def _conv_geometry(step):
    a = step.node.args
    k = tuple(step.consts[1].shape[2:])
    return k, tuple(a[3]), (a[4][0], a[4][2]), tuple(a[5])


def _chainable(step) -> bool:
    return step.node.target is ops.conv2d and step.rule is get_change_rule(ops.conv2d) and step.kind == "spatial"


def find_chains(steps, tile_size: int) -> list[Chain]:
    """Maximal conv chains of two or more convs among ``steps`` (Note [Conv chains])."""
    by_node = {s.node: s for s in steps}
    chains, used = [], set()
    for step in steps:
        if step.node in used or not _chainable(step) or len(step.node.args) > 8:
            continue
        run = [step]
        while True:
            node = run[-1].node
            users = list(node.users)
            if len(users) != 1:
                break
            nxt = by_node.get(users[0])
            if nxt is None or not _chainable(nxt) or nxt.node.args[0] is not node or nxt.node in used:
                break
            if node in nxt.node.args[1:]:  # conv(x) + x: x is read again as the residual, so it stays cached
                break
            run.append(nxt)
            if len(nxt.node.args) > 8:  # a residual add ends the chain
                break
        if len(run) >= 2:
            chains.append(_build(run, tile_size))
            used.update(s.node for s in run)
    return chains


def _build(run, tile_size: int) -> Chain:
    _, _, ho, wo = run[-1].shape
    # small maps get small tiles: an 8x8 tile (10x10 with its halo) covers a third of a 36x48 map
    edge = min(tile_size, max(2, min(ho, wo) // 8))
    tile = (min(edge, ho), min(edge, wo))
    levels = _levels(run, tile)
    frame_macs = sum(s.macs_per_position * s.shape[2] * s.shape[3] for s in run)
    return Chain(list(run), tile, levels, _window_macs(run, levels), frame_macs)


def _levels(run, window: tuple[int, int]) -> list[Level]:
    """Geometry of every level for an output window of ``window`` positions: walking back from the
    output, each level's window start is affine in the output window's origin."""
    _, _, ho, wo = run[-1].shape
    levels = [Level((1, 1), (0, 0), window, (ho, wo))]
    for step in reversed(run):
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = _conv_geometry(step)
        out = levels[0]
        _, _, h, w = step.input_shape(0)
        levels.insert(0, Level(
            (out.stride[0] * sh, out.stride[1] * sw),
            (out.offset[0] * sh + ph, out.offset[1] * sw + pw),
            ((out.window[0] - 1) * sh + (kh - 1) * dh + 1, (out.window[1] - 1) * sw + (kw - 1) * dw + 1),
            (h, w),
        ))
    return levels


def _window_macs(run, levels) -> int:
    """MACs of one output window through the chain, halos included."""
    return sum(s.macs_per_position * lv.window[0] * lv.window[1] for s, lv in zip(run, levels[1:]))


def _inside(level: Level, oy, ox):
    """``[N, 1, wh, ww]`` bool: which positions of each tile's window lie inside the image (None: all)."""
    rows = oy[:, None] * level.stride[0] - level.offset[0] + torch.arange(level.window[0])
    cols = ox[:, None] * level.stride[1] - level.offset[1] + torch.arange(level.window[1])
    h, w = level.hw
    if bool(rows.min() >= 0) and bool(rows.max() < h) and bool(cols.min() >= 0) and bool(cols.max() < w):
        return None
    return (((rows >= 0) & (rows < h))[:, None, :, None]) & (((cols >= 0) & (cols < w))[:, None, None, :])


def _conv(step, z, padding, residual=None):
    a = step.node.args
    weight_t = step.config.get("weight_t")
    if weight_t is not None and tuple(step.consts[1].shape[2:]) == (1, 1) and tuple(a[3]) == (1, 1) and \
            z.is_contiguous(memory_format=torch.channels_last) and not any(padding):
        return _pointwise_gemm(step, z, weight_t, residual)
    return ops.conv2d(z, step.consts[1], step.consts[2], a[3], padding, a[5], a[6], a[7], residual)


def _pointwise_gemm(step, z, weight_t, residual):
    """A 1x1 conv on a channels-last crop as one GEMM over its rows (MKL's sgemm compiles nothing per shape;
    oneDNN's conv costs a primitive per crop shape, 0.1-0.3 ms per call in the walk)."""
    b, c, h, w = z.shape
    rows = z.permute(0, 2, 3, 1).reshape(-1, c)  # a view: the crop is channels-last contiguous
    y = _gemm(rows, weight_t, step.consts[2]).view(b, h, w, -1).permute(0, 3, 1, 2)  # channels-last, no copy
    return _epilogue(step, None, y, residual)  # the per-layer GEMM's residual add and activation


def run_dense(chain: Chain, ctx) -> int:
    """Whole frames of every stream through the chain; the last output is adopted as its cache."""
    z = ctx.cache(chain.input_node).read_streams(None)
    macs = 0
    for i, step in enumerate(chain.steps):
        last = i == len(chain.steps) - 1
        residual = None
        if last and len(step.node.args) > 8:
            residual = ctx.cache(step.node.args[8]).read_streams(None)
        z = _conv(step, z, step.node.args[4], residual)
        macs += step.macs_per_position * z.shape[0] * z.shape[2] * z.shape[3]
    ctx.cache(chain.output_step.node).adopt(z)
    return macs


def run_tiles(chain: Chain, ctx, b, oy, ox) -> int:
    """The chain on the tiles with origins ``(b, oy, ox)`` (output coordinates); returns executed MACs."""
    first = chain.levels[0]
    inp = ctx.cache(chain.input_node)
    src, outside = T.window_rows(b, oy, ox, stride=first.stride, pad_top_left=first.offset, window=first.window,
                                 in_hw=first.hw)
    z = T.gather_windows(inp.buf, src, outside, 0.0)
    macs = 0
    no_pad = (0, 0, 0, 0)
    for i, step in enumerate(chain.steps):
        level = chain.levels[i + 1]
        if i == len(chain.steps) - 1:
            out = ctx.cache(step.node)
            dst = T.tile_rows(b, oy, ox, chain.tile, out.shape[2:])
            residual = None
            if len(step.node.args) > 8:
                residual = T.gather_windows(ctx.cache(step.node.args[8]).buf, dst, None, 0.0)
            z = _conv(step, z, no_pad, residual)
            T.scatter_tiles(out.buf, dst, z)
        else:
            z = _conv(step, z, no_pad)
            inside = _inside(level, oy, ox)
            if inside is not None:  # the next conv must read zero padding outside this layer's image
                z = z.mul_(inside.to(z.dtype))  # a broadcast multiply: 10x faster than masked_fill_ here
        macs += step.macs_per_position * z.shape[0] * z.shape[2] * z.shape[3]
    return macs


def run_box(chain: Chain, ctx, box, levels) -> int:
    """The chain on output ``box`` of every stream: one window, convs on whole crops (Note [Chains on a box])."""
    y0, y1, x0, x1 = box
    first = levels[0]
    iy0, ix0 = y0 * first.stride[0] - first.offset[0], x0 * first.stride[1] - first.offset[1]
    iy1, ix1 = iy0 + first.window[0], ix0 + first.window[1]
    h, w = first.hw
    z = ctx.cache(chain.input_node).view()[:, :, max(iy0, 0) : min(iy1, h), max(ix0, 0) : min(ix1, w)]
    pad = (max(-ix0, 0), max(ix1 - w, 0), max(-iy0, 0), max(iy1 - h, 0))
    z = F.pad(z, pad) if any(pad) else z  # zeros outside the image, as the first conv's own padding reads
    z = z.contiguous(memory_format=torch.channels_last)
    oy, ox = torch.tensor([y0]), torch.tensor([x0])
    macs, no_pad, batch = 0, (0, 0, 0, 0), z.shape[0]
    for i, step in enumerate(chain.steps):
        if i == len(chain.steps) - 1:
            residual = None
            if len(step.node.args) > 8:
                residual = ctx.cache(step.node.args[8]).view()[:, :, y0:y1, x0:x1]
                residual = residual.contiguous(memory_format=torch.channels_last)
            z = _conv(step, z, no_pad, residual)
            ctx.cache(step.node).nhwc()[:, y0:y1, x0:x1].copy_(z.permute(0, 2, 3, 1))
        else:
            z = _conv(step, z, no_pad)
            inside = _inside(levels[i + 1], oy, ox)
            if inside is not None:  # the next conv must read zero padding outside this layer's image
                z = z.mul_(inside.to(z.dtype))
        macs += step.macs_per_position * batch * z.shape[2] * z.shape[3]
    return macs


# Note [Chains on a box]: a block whose changes sit in one compact box runs as one crop of the chain input
# (the box plus the chain's composed halo) through every conv, as whole-crop dense convs: one call per
# conv, no gathered tiles. Chosen when its MACs, halos included, are at most BOX_OVER_TILES times those
# of the tiles (oneDNN runs one large crop far better than a batch of small windows).
BOX_OVER_TILES = 2.0


def execute(chain: Chain, ctx, mask) -> int:
    """Recompute the chain's changed output: on one box, on tiles, or all of it above the dense switch."""
    out_step = chain.output_step
    th, tw = chain.tile
    b, oy, ox = T.active_tiles(mask, th, tw)
    if not len(b):
        return 0
    n = bucket(len(b))  # repeat tile 0 up to a bucketed count: oneDNN compiles per shape (Note [Shape buckets])
    tile_macs = n * chain.tile_macs
    dense_macs = ctx.switch(out_step.node) * out_step.shape[0] * chain.frame_macs
    box = ctx.box(out_step.node)
    if box is not None:
        _, _, ho, wo = out_step.shape
        box = bucket_span(box[0], box[1], ho) + bucket_span(box[2], box[3], wo)
        levels = _levels(chain.steps, (box[1] - box[0], box[3] - box[2]))
        box_macs = out_step.shape[0] * _window_macs(chain.steps, levels)
        if box_macs <= BOX_OVER_TILES * tile_macs and box_macs <= dense_macs:
            return run_box(chain, ctx, box, levels)
    if tile_macs > dense_macs:
        return run_dense(chain, ctx)  # the tiles and their halos would cost more than the switch's share
    b, oy, ox = (pad_index(t, n) for t in (b, oy, ox))
    return run_tiles(chain, ctx, b, oy, ox)


__all__ = ["Chain", "find_chains", "execute"]
