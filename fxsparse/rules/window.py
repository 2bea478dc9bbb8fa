"""Window ops: conv2d, max_pool2d, avg_pool2d.

Footprint: output position changes iff any input in its (dilated, strided,
padded) window changed, i.e. ``max_pool2d(mask, k, s, p, d)``. Exact.

Lowerings (chosen per node in ``prepare``; measured in docs/performance.md):

* ``gemm`` (conv, groups == 1): im2col on exactly the changed positions:
  gather the K = kh*kw input rows of each, one GEMM against the weight laid
  out as ``[C_out, K*C_in]``, scatter. Executes exactly the cone.
* ``taps`` (depthwise conv, pools): per tap, gather one input row per changed
  position and accumulate (multiply-add, max, or sum).
* ``tiles`` (other grouped convs): cover the output mask with tiles, gather
  each tile's input window (halo included) into one batch, run the dense op
  on it, scatter the tiles back.
* box lowerings, chosen per frame when the changed positions fill enough of
  their bounding box: a depthwise conv runs the dense conv on the box's input
  crop (Note [Depthwise on the box]); a 1x1 conv runs one GEMM over the box
  read in place (Note [Pointwise GEMM on the box]).

Every lowering switches a stream to the dense op when more than
``dense_switch`` of its output changed, so a fully changed frame costs about
a dense run (its channels-last result becomes the cache without a copy).
Windows reaching outside the input are filled with the padding value after
the gather (Note [Padding by fill]): no padded copies are made.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import ops
from ..kernels import native
from ..kernels import tiles as T
from ..kernels.buckets import bucket, bucket_span, needs_buckets, pad_index
from ..timing import median_seconds
from . import ChangeRule, register_change_rule
from .masks import box_union, clear_box, mask_contains, mask_shape, window_footprint


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
    x = step.node.args[0]
    if step.config["identity_taps"] and ctx.kind(x) == "spatial" and \
            (_residual(step) is None or step.config["residual_inside"]):
        return ctx.share_mask(step.node, x)  # 1x1, stride 1, no padding: the same positions change
    k, s, (top, _, left, _), d, _ = _geometry(step)
    out, stale = ctx.stale_mask_buffer(step.node, mask_shape(step.shape))
    box, counts = ctx.box(x), []
    if box is not None:
        box = window_footprint(ctx.mask(x), box, out, k, s, (top, left), d, full=ctx.fully_changed(x), counts=counts,
                               stale=stale)
    else:
        clear_box(out, stale)
    res = _residual(step)
    if res is not None:  # conv(x) + residual: the residual's changes show up where they are
        res_box = ctx.box(res)
        if res_box is not None:
            y0, y1, x0, x1 = res_box
            region = out[:, :, y0:y1, x0:x1]
            torch.maximum(region, ctx.mask(res)[:, :, y0:y1, x0:x1], out=region)
            box = box_union([box, res_box])
            counts = []  # the union changed them
    ctx.set_box(step.node, box)
    if counts:
        ctx.set_counts(step.node, counts)  # counted by the native footprint: no sum over the mask later
    return out


# Note [Stems on the box]: a network's first conv reads the frame, 3 channels: im2col gathers K rows of
# 3 floats per position (12-byte rows, the per-row cost dominates), so like a depthwise conv it runs as a
# dense conv on the changed box when the box is compact (same limits as Note [Depthwise on the box]).
STEM_CHANNELS = 4


def covers_window(step, ctx) -> list:
    """Inputs whose mask lies inside this window step's (Note [Residual inside]): the residual of a fused
    ``conv + residual`` (its changes show up where they are), and the input itself when the output is
    the input's size, the stride 1 and one tap of every window its own centre (a 3x3 conv with padding 1,
    a 1x1 conv): a changed input position then changes the output at the same position."""
    x, res = step.node.args[0], _residual(step)
    inside = [] if res is None else [res]
    if ctx.kind(x) != "spatial" or tuple(ctx.cache(x).shape[2:]) != tuple(step.shape[2:]):
        return inside
    k, s, (top, _, left, _), d, _ = _geometry(step)
    if s == (1, 1) and all(p % di == 0 and p // di < ki for p, di, ki in zip((top, left), d, k)):
        inside.append(x)
    return inside


def _residual(step):
    """The residual input of a fused ``conv(x) + residual`` (normalize.fuse_residual), else None."""
    args = step.node.args
    return args[8] if step.node.target is ops.conv2d and len(args) > 8 else None


def _epilogue(step, ctx, rows, residual_rows):
    """Add the residual (rows gathered at the same positions) and apply the fused activation, in place."""
    if residual_rows is not None:
        rows = rows.add_(residual_rows)
    return ops.apply_activation_(rows, step.node.args[7]) if step.node.target is ops.conv2d else rows


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


DEPTHWISE_SWITCH_SCALE = 0.2
# Note [Depthwise on the box]: a depthwise conv runs oneDNN's dense kernel on the crop of its changed box
# (plus halo) when the box holds at most BOX_WASTE times the changed positions: that kernel costs ~0.2 us
# per position of a [576, 36, 48] map, gathered taps 1-2 us (measured, tiny boxes included: a crop conv
# has ~0.05 ms fixed cost). Unchanged positions inside the box are recomputed from unchanged inputs:
# the same values, up to float reassociation. A depthwise conv is memory-bound, and the crop costs more
# passes over memory than the dense conv (crop copy, conv, copy back), so boxes above BOX_MAX_SHARE of the
# map run the dense op instead (a [960, 18, 12] box of an 18x24 map: 0.8 ms against 0.25 ms dense).
BOX_WASTE = 4.0
BOX_MAX_SHARE = 0.3


def prepare_window(step, ctx):
    x = step.node.args[0]
    inp, out = ctx.cache(x), ctx.cache(step.node)
    k, s, (top, _, left, _), d, _ = _geometry(step)
    _, _, ho, wo = out.shape
    cfg = step.config
    cfg["stride"] = s
    cfg["offsets"] = T.kernel_offsets(k, d, (top, left))
    cfg["fill"] = float("-inf") if step.node.target is ops.max_pool2d else 0.0
    cfg["identity_taps"] = k == (1, 1) and s == (1, 1) and (top, left) == (0, 0)
    # Note [Residual inside]: the residual of an inverted-residual or bottleneck block is the block's
    # input, and every layer of the block covers its input, so its changes lie inside the mask of the
    # 1x1 conv that adds it back: that conv shares its input's mask instead of taking the union
    # (0.08-0.13 ms per block on mobilenet_v2, at any change)
    res = _residual(step)
    cfg["residual_inside"] = res is not None and cfg["identity_taps"] and mask_contains(ctx, x, res)
    # stride 1 and an output the size of the input: tap k of output row p is input row p + flat_offsets[k]
    # whenever the window stays inside the image (checked per frame on the changed box, _taps_inside)
    oy, ox = cfg["offsets"]
    same = s == (1, 1) and tuple(inp.shape[2:]) == (ho, wo)
    cfg["flat_offsets"] = oy * inp.shape[3] + ox if same else None
    cfg["tap_span"] = (int(oy.min()), int(oy.max()), int(ox.min()), int(ox.max()))
    target = step.node.target
    if target is ops.conv2d:
        weight, groups = step.consts[1], step.node.args[6]
        c_in, c_out = inp.shape[1], weight.shape[0]
        if groups == 1:
            cfg["lowering"] = "gemm"
            # [K*C_in, C_out], contiguous: MKL's sgemm runs 5-10% faster than on the transposed [C_out, K*C_in]
            # that F.linear takes (e.g. [150, 4608] x [4608, 512]: 3.04 vs 3.27 ms, measured)
            cfg["weight_t"] = weight.permute(2, 3, 1, 0).reshape(-1, c_out).contiguous()
            if c_in <= STEM_CHANNELS and k != (1, 1):
                cfg["box_conv"] = True  # Note [Stems on the box]
            # Note [Native conv]: the changed positions in place, where the kernel runs this conv
            limit = NATIVE_CONV_MAX_WEIGHTS if k == (1, 1) else NATIVE_CONV_MAX_WEIGHTS_TAPS
            cfg["native_conv"] = native.activation_code(step.node.args[7]) is not None and \
                weight.dtype == torch.float32 and weight.numel() <= limit and native.available()
            if cfg["native_conv"]:
                cfg["conv_panels"] = native.conv_panels(cfg["weight_t"])
                cfg["label"] = f"native {k[0]}x{k[1]} at the changed positions"
                if ctx.dense_switch <= 1.0:
                    ctx.switches[step.node] = NATIVE_CONV_SWITCH
            return
        if groups == c_in == c_out:
            cfg["lowering"] = "taps"
            cfg["box_conv"] = True  # Note [Depthwise on the box]
            cfg["tap_weights"] = weight.flatten(1).t().contiguous()  # [K, C]
            # Note [Native depthwise]: the changed positions in place, where the kernel runs this conv
            cfg["native"] = _residual(step) is None and native.activation_code(step.node.args[7]) is not None and \
                weight.dtype == torch.float32 and native.available()
            if cfg["native"]:
                cfg["label"] = "native depthwise at the changed positions"
                ctx.switches[step.node] = 1.0  # in place, it beats oneDNN's dense op even fully changed
            elif ctx.dense_switch <= 1.0:
                # oneDNN's channels-last depthwise conv costs ~0.2 us per position of a 36x48x576 map, the
                # gathered taps ~2 us (measured): switch to dense 5x earlier (mobilenet_v2 576x768,
                # 0.5 -> 0.1: 5-15% faster per frame at 1%, 5% and 20% change over three A/B runs)
                ctx.switches[step.node] = ctx.dense_switch * DEPTHWISE_SWITCH_SCALE
            return
        bias = step.consts[2]
        cfg["kernel"] = lambda win: F.conv2d(win, weight, bias, s, 0, d, groups)  # epilogue in _execute_tiles
        cfg["lowering"] = "tiles"
        cfg["tile"] = (min(ctx.tile_size, ho), min(ctx.tile_size, wo))
        cfg["window"] = tuple((t - 1) * st + dd * (kk - 1) + 1 for t, st, dd, kk in zip(cfg["tile"], s, d, k))
        cfg["pad_tl"] = (top, left)
        return
    cfg["lowering"] = "taps"
    if target is ops.avg_pool2d:
        cfg["divisor"] = _avg_divisor(step, inp.shape[2:], (ho, wo)).view(-1)


def calibrate_window(step, ctx, probes: tuple[float, float] = (0.02, 0.2), repeats: int = 3) -> float:
    """Changed share at which this layer's sparse lowering costs as much as its dense op, measured here.

    Times the lowering on two probes (``probes`` of one stream's positions) and the dense op on one stream
    (medians of ``repeats``), and fits the sparse cost as fixed + per position: a layer whose fixed cost
    (mask bookkeeping, index building, a handful of small calls) is most of its dense op's cost - the
    depthwise convs of a small late map - switches early; a GEMM whose cost grows with the positions late.
    A line through the origin from one probe charged the fixed cost to every position and switched
    resnet50's layers too early (docs/performance.md).
    """
    if step.config.get("lowering") == "tiles":
        return ctx.dense_switch
    if step.config.get("native"):  # Note [Native depthwise]: measured once, above; the gathered path is not run
        return 1.0
    if step.config.get("native_conv"):
        return NATIVE_CONV_SWITCH
    out = ctx.cache(step.node)
    b, _, ho, wo = out.shape
    total = ho * wo
    sizes = sorted({min(total, max(16, int(p * total))) for p in probes})

    def sparse(pos):
        out.buf.index_copy_(0, pos, _window_rows(step, ctx, pos))  # rewrites the values it already holds

    probe_positions = [torch.arange(n) for n in sizes]
    times = [median_seconds(lambda pos=pos: sparse(pos), repeats) for pos in probe_positions]
    streams = None if b == 1 else torch.tensor([0])
    t_dense = median_seconds(lambda: ctx.run_dense(step, streams), repeats)
    if len(sizes) == 1:  # a map smaller than the probes: one point, through the origin
        per_position, fixed = times[0] / sizes[0], 0.0
    else:
        per_position = max((times[1] - times[0]) / (sizes[1] - sizes[0]), 1e-12)
        fixed = max(times[0] - per_position * sizes[0], 0.0)
    return float(min(1.0, max(0.0, (t_dense - fixed) / (per_position * total))))


def run_dense_streams(step, ctx, streams):
    """Recompute ``streams`` of a spatial node with its dense op (all streams: adopt the result)."""
    out = ctx.cache(step.node)
    if len(streams) == out.shape[0]:
        # freed first: the allocator hands the same memory to the op's output, still warm, instead of a
        # fresh block (a depthwise layer of mobilenet_v2 ran at twice its isolated time in the walk)
        out.release()
        out.adopt(ctx.run_dense(step, None))
    else:
        out.write_streams(streams, ctx.run_dense(step, streams))


def execute_window(step, ctx, mask):
    cfg = step.config
    out = ctx.cache(step.node)
    b, _, ho, wo = out.shape
    mpp = step.macs_per_position
    if cfg["lowering"] == "tiles":
        return _execute_tiles(step, ctx, mask)
    if cfg.get("native") and _native_depthwise(step, ctx, mask):
        return sum(ctx.stream_counts(step.node)) * mpp
    # with several streams, those above the switch run natively too (their own dense op would split the call)
    if cfg.get("native_conv") and len(ctx.dense_streams(step.node, ho * wo)) < b and _native_conv(step, ctx, mask):
        return sum(ctx.stream_counts(step.node)) * mpp
    if cfg.get("box_conv"):  # Note [Depthwise on the box]: before the dense switch, which it undercuts
        box = _bucketed(ctx.box(step.node), ho, wo)
        area = (box[1] - box[0]) * (box[3] - box[2])
        if area <= BOX_MAX_SHARE * ho * wo and area * b <= BOX_WASTE * sum(ctx.stream_counts(step.node)):
            _conv_on_box(step, ctx, box)
            return area * b * mpp
    if cfg["identity_taps"] and (ho, wo) == (1, 1) and cfg["lowering"] == "gemm":
        _pointwise_gemm_on_box(step, ctx, (0, 1, 0, 1))  # Note [Vector GEMM]
        return b * mpp
    dense = ctx.dense_streams(step.node, ho * wo)
    # bfloat16 GEMMs compile per shape: they keep the gathered, bucketed rows (Note [Shape buckets])
    if cfg["identity_taps"] and cfg["lowering"] == "gemm" and not len(dense) and not needs_buckets(out.buf.dtype):
        box = ctx.box(step.node)
        area = (box[1] - box[0]) * (box[3] - box[2])
        if area * b <= GEMM_BOX_WASTE * sum(ctx.stream_counts(step.node)):
            _pointwise_gemm_on_box(step, ctx, box)
            return area * b * mpp
    executed = 0
    if len(dense):
        run_dense_streams(step, ctx, dense)
        executed += len(dense) * ho * wo * mpp
        if len(dense) == b:
            return executed
    pos = ctx.positions(step.node)
    if len(dense):
        pos = pos[~torch.isin(pos // (ho * wo), dense)]
    if len(pos):
        out.buf.index_copy_(0, pos, _window_rows(step, ctx, pos, ctx.box(step.node)))
        executed += len(pos) * mpp
    return executed


def _native_depthwise(step, ctx, mask) -> bool:
    """A depthwise conv's changed positions computed in place by the native kernel (Note [Native
    depthwise]); False where it cannot run them."""
    inp, out = ctx.cache(step.node.args[0]), ctx.cache(step.node)
    (kh, kw), s, (pt, _, pl, _), d, _ = _geometry(step)
    return native.depthwise_masked(inp.buf, out.buf, step.config["tap_weights"], step.consts[2], mask, inp.shape[2:],
                                   (kh, kw), s, (pt, pl), d, ctx.box(step.node), sum(ctx.stream_counts(step.node)),
                                   step.node.args[7])


# The native kernel reads a conv's whole weight for every six positions (as panels of 64 output channels:
# native.conv_panels); past a few MiB of weights MKL's blocked GEMM wins (isolated 1x1 convs against gather +
# addmm + scatter: [960, 320] 0.98x, [1024, 256] 0.99x, [256, 1024] 0.91x, [320, 1280] 1.14x; [2048, 512]
# 1.68x, [512, 2048] 1.47x, [2304, 256] 1.49x). In the models 2^19 paid over 2^18 (mobilenet_v2's two
# largest 1x1 convs: 1% 0.905, 5% 0.929; resnet50 5% 0.950) and 2^20 did not (resnet50 5% 0.990; again with
# six-position blocks: 5% 0.922 but 1% 1.068). A conv with taps (3x3) pays more on the GEMM path, which gathers
# K = 9 x Cin values per position first: up to 2^20 weights natively (resnet50's 3x3 convs of 256 channels,
# 589,824 weights: A/B 1% 0.957 / 1.008, 5% 0.965, 20% 0.933, CDnet + clean-up 0.983)
NATIVE_CONV_MAX_WEIGHTS = 1 << 19
NATIVE_CONV_MAX_WEIGHTS_TAPS = 1 << 20
# In place at the changed positions it beats oneDNN's dense 1x1 conv (a fresh output tensor) up to ~85-100%
# changed (isolated, interleaved, random masks: 50% 0.51-0.70x of the dense op's time, 85% 0.71-1.01x, 100%
# 0.65-1.08x, mobilenet_v2's shapes): such a conv switches to dense above this share
NATIVE_CONV_SWITCH = 0.9


def _native_conv(step, ctx, mask) -> bool:
    """A conv's changed positions computed in place by the native kernel (Note [Native conv]); False where it
    cannot run them."""
    inp, out, res = ctx.cache(step.node.args[0]), ctx.cache(step.node), _residual(step)
    (kh, kw), s, (pt, _, pl, _), d, _ = _geometry(step)
    return native.conv_masked(inp.buf, out.buf, step.config["conv_panels"], out.shape[1], step.consts[2],
                              None if res is None else ctx.cache(res).buf, mask, inp.shape[2:], (kh, kw), s, (pt, pl),
                              d, ctx.box(step.node), sum(ctx.stream_counts(step.node)), step.node.args[7])


# Note [Pointwise GEMM on the box]: a 1x1 conv whose changed positions fill at least 1/GEMM_BOX_WASTE of
# their box runs one GEMM over the box read in place instead of gathering rows and scattering results
# (the gather and scatter cost about as much as the GEMM). A box as wide as the map is a contiguous block of
# cache rows: the GEMM reads it and writes its result into the cache with no copy at all.
GEMM_BOX_WASTE = 1.3


def _pointwise_gemm_on_box(step, ctx, box):
    """Recompute a 1x1 conv on output ``box`` of every stream (Note [Pointwise GEMM on the box])."""
    inp, out = ctx.cache(step.node.args[0]), ctx.cache(step.node)
    b, c_out, h, w = out.shape
    y0, y1, x0, x1 = box
    weight_t, bias, res = step.config["weight_t"], step.consts[2], _residual(step)
    if (x0, x1) == (0, w) and (b == 1 or (y0, y1) == (0, h)):  # the box is one contiguous block of cache rows
        rows = slice(y0 * w, y1 * w) if b == 1 else slice(0, b * h * w)
        dst = out.buf[rows]
        if bias is None:
            torch.mm(inp.buf[rows], weight_t, out=dst)
        else:
            torch.addmm(bias, inp.buf[rows], weight_t, out=dst)
        y = _epilogue(step, ctx, dst, None if res is None else ctx.cache(res).buf[rows])
        if y is not dst:  # an activation without an in-place form (gelu) returned a new tensor
            dst.copy_(y)
        return
    y = _gemm(inp.nhwc()[:, y0:y1, x0:x1].reshape(-1, inp.shape[1]), weight_t, bias).view(b, y1 - y0, x1 - x0, c_out)
    residual = None if res is None else ctx.cache(res).nhwc()[:, y0:y1, x0:x1]  # added as a view: no copy
    out.nhwc()[:, y0:y1, x0:x1].copy_(_epilogue(step, ctx, y, residual))


# Note [Vector GEMM]: a 1x1 conv on a 1x1 map (squeeze-excite's two convs, a pooled head) is a linear layer
# on the streams' rows. Its one position changes whenever anything upstream did, so the dense switch sent it
# to the general dense path (a new tensor, adopted as the cache): 0.08-0.18 ms against 0.03-0.04 ms for the
# op alone, 16 times per MobileNetV3 frame. It runs as the in-place GEMM of a box covering the whole map.


def _gemm(rows: torch.Tensor, weight_t: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``rows @ weight_t + bias``: a 1x1 / im2col conv on gathered rows."""
    return torch.mm(rows, weight_t) if bias is None else torch.addmm(bias, rows, weight_t)


def _bucketed(box, ho: int, wo: int):
    """``box`` grown to bucket sizes inside the ``ho x wo`` output (Note [Shape buckets])."""
    return bucket_span(box[0], box[1], ho) + bucket_span(box[2], box[3], wo)


def _conv_on_box(step, ctx, box):
    """Recompute output ``box`` (y0, y1, x0, x1) of every stream with the dense conv on the input crop that
    box reads (zero-padded where it reaches outside the image)."""
    inp, out = ctx.cache(step.node.args[0]), ctx.cache(step.node)
    (kh, kw), (sh, sw), (pt, _, pl, _), (dh, dw), _ = _geometry(step)
    oy0, oy1, ox0, ox1 = box
    h, w = inp.shape[2:]
    res = _residual(step)
    a = step.node.args
    iy0, iy1 = oy0 * sh - pt, (oy1 - 1) * sh - pt + (kh - 1) * dh + 1
    ix0, ix1 = ox0 * sw - pl, (ox1 - 1) * sw - pl + (kw - 1) * dw + 1
    x = inp.view()[:, :, max(iy0, 0) : min(iy1, h), max(ix0, 0) : min(ix1, w)]
    top, bottom, left, right = max(-iy0, 0), max(iy1 - h, 0), max(-ix0, 0), max(ix1 - w, 0)
    residual = None if res is None else ctx.cache(res).view()[:, :, oy0:oy1, ox0:ox1]
    # zero padding where the crop reaches outside the image: the conv's own when symmetric (no padded copy);
    # else ops.conv2d pads the crop view, and that copy is the contiguous channels-last one the conv needs
    if top == bottom and left == right:
        x = x.contiguous(memory_format=torch.channels_last)
    y = ops.conv2d(x, step.consts[1], step.consts[2], (sh, sw), (top, bottom, left, right), (dh, dw), a[6], a[7],
                   residual)
    out.nhwc()[:, oy0:oy1, ox0:ox1].copy_(y.permute(0, 2, 3, 1))


def _window_rows(step, ctx, pos, box=None):
    """The op's output rows ``[N, C_out]`` at output positions ``pos`` (gemm / taps lowerings); ``box``, when
    given, contains every position (it lets a window that stays inside the image skip the border checks)."""
    cfg = step.config
    inp, out = ctx.cache(step.node.args[0]), ctx.cache(step.node)
    target = step.node.target
    if cfg["identity_taps"]:
        src, outside = pos[:, None], None
    elif box is not None and cfg["flat_offsets"] is not None and _taps_inside(box, cfg["tap_span"], inp.shape[2:]):
        src, outside = pos[:, None] + cfg["flat_offsets"], None  # stride 1, same size: taps are fixed row offsets
    else:
        src, outside = T.neighbour_rows(pos, out.shape[2:], inp.shape[2:], cfg["stride"], cfg["offsets"])
    if target is ops.conv2d and cfg["lowering"] == "gemm":
        n = len(pos)
        if needs_buckets(inp.buf.dtype):  # Note [Shape buckets]
            size = bucket(n)
            src = pad_index(src, size)
            outside = None if outside is None else pad_index(outside, size)
        cols = T.gather(inp.buf, src, outside, 0.0).view(len(src), -1)  # [N, K*C_in]
        rows = _gemm(cols, cfg["weight_t"], step.consts[2])[:n]
        return _epilogue(step, ctx, rows, _residual_rows(step, ctx, pos))

    # which taps reach outside the image for some position: only those pay for the fill (one sync here,
    # instead of a boolean-index write per tap: those cost ~50 us each, 8 ms per mobilenet_v2 frame)
    partial = [False] * src.shape[1] if outside is None else outside.any(0).tolist()

    def tap(k):
        rows = inp.buf.index_select(0, src[:, k])
        if partial[k]:
            rows.masked_fill_(outside[:, k, None], cfg["fill"])
        return rows

    if target is ops.conv2d:  # depthwise: multiply-add over the taps
        w, bias = cfg["tap_weights"], step.consts[2]
        acc = tap(0).mul_(w[0])
        for k in range(1, src.shape[1]):
            acc.addcmul_(tap(k), w[k])
        if bias is not None:
            acc += bias
        return _epilogue(step, ctx, acc, _residual_rows(step, ctx, pos))
    acc = tap(0)
    for k in range(1, src.shape[1]):
        acc = torch.maximum(acc, tap(k)) if target is ops.max_pool2d else acc.add_(tap(k))
    if target is ops.avg_pool2d:
        acc /= cfg["divisor"][pos % (out.shape[2] * out.shape[3])].unsqueeze(1)
    return acc


def _execute_tiles(step, ctx, mask):
    cfg = step.config
    out, inp = ctx.cache(step.node), ctx.cache(step.node.args[0])
    b, _, ho, wo = out.shape
    th, tw = cfg["tile"]
    tb, oy, ox = T.active_tiles(mask, th, tw)
    n_tiles = -(-ho // th) * -(-wo // tw)
    dense = ctx.dense_streams(step.node, n_tiles, torch.bincount(tb, minlength=b).tolist())
    executed = 0
    if len(dense):
        run_dense_streams(step, ctx, dense)
        executed += len(dense) * ho * wo * step.macs_per_position
        keep = ~torch.isin(tb, dense)
        tb, oy, ox = tb[keep], oy[keep], ox[keep]
    if len(tb):
        src, outside = T.window_rows(
            tb, oy, ox, stride=cfg["stride"], pad_top_left=cfg["pad_tl"], window=cfg["window"], in_hw=inp.shape[2:]
        )
        result = cfg["kernel"](T.gather_windows(inp.buf, src, outside, cfg["fill"]))
        dst = T.tile_rows(tb, oy, ox, cfg["tile"], (ho, wo))
        if step.node.target is ops.conv2d:
            res = _residual(step)
            res_tiles = None
            if res is not None:
                res_tiles = T.gather_windows(ctx.cache(res).buf, dst, None, 0.0)
            result = _epilogue(step, ctx, result, res_tiles)
        T.scatter_tiles(out.buf, dst, result)
        executed += len(tb) * th * tw * step.macs_per_position
    return executed


def _taps_inside(box, span, hw) -> bool:
    """Do the windows of every position in ``box`` (y0, y1, x0, x1) stay inside an ``hw`` image?"""
    dy0, dy1, dx0, dx1 = span
    return box[0] + dy0 >= 0 and box[1] - 1 + dy1 < hw[0] and box[2] + dx0 >= 0 and box[3] - 1 + dx1 < hw[1]


def _residual_rows(step, ctx, pos):
    res = _residual(step)
    return None if res is None else ctx.cache(res).buf.index_select(0, pos)


def window_applies(step):
    if step.kind != "spatial" or step.input_kind(0) != "spatial":
        return "input or output is not a [B, C, H, W] activation"
    res = _residual(step)
    if res is not None:
        i = step.tensor_inputs.index(res)
        if step.input_kind(i) != "spatial" or tuple(step.input_shape(i)) != tuple(step.shape):
            return "the fused residual is not a [B, C, H, W] activation of the conv's output shape"
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
        macs_per_position=_conv_macs_per_position, calibrate=calibrate_window, covers=covers_window,
    ),
)
register_change_rule(
    ops.max_pool2d,
    rule=ChangeRule("max_pool2d", propagate_window, execute_window, prepare_window, window_applies,
                    calibrate=calibrate_window, covers=covers_window),
)
register_change_rule(
    ops.avg_pool2d,
    rule=ChangeRule("avg_pool2d", propagate_window, execute_window, prepare_window, window_applies,
                    calibrate=calibrate_window, covers=covers_window),
)
