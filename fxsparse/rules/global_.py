"""Global ops: the mean over H and W (``adaptive_avg_pool2d(x, 1)``, ``x.mean((2, 3))``).

Footprint: the vector of a stream changes when any input position of that
stream changed. Exact.

Note [Incremental mean]: the mean is linear, so it is updated from the
changed positions alone: ``sum += new_rows - old_rows``. The old rows must be
read before the producer overwrites them, so the rule registers a
``before_write`` hook on its producer; the runtime calls it between the
producer's mask propagation and its execution. Sums are kept in float64 so
thousands of incremental updates do not drift.

Summing afresh is one float32 pass over the map, and cheap: on this project's
machine a gathered, float64 incremental update (old and new rows) costs ~45 us
plus ~10x the plain sum per element (measured on [C, H, W] maps from
[1280, 18, 24] to [72, 144, 192]). It won only on maps of 2^20 elements or more
with under 5% of the positions changed ([72, 144, 192] at 1%: 72 vs 296 us;
at 5%: 205 vs 297; at 10%: 435 vs 297), so only those update incrementally
(MobileNetV2's final [1280, 18, 24] pool at 40% changed: 0.35 ms incremental,
0.03 ms afresh).
"""

from __future__ import annotations

import torch

from .. import ops
from . import ChangeRule, register_change_rule
from .masks import changed_streams, per_stream


def propagate_mean(step, ctx):
    m = per_stream(ctx.mask(step.node.args[0]))
    return m.view(-1, 1, 1, 1) if step.kind == "spatial" else m


def _stream_sums(rows: torch.Tensor, pos: torch.Tensor, hw: int, batch: int) -> torch.Tensor:
    sums = torch.zeros(batch, rows.shape[1], dtype=torch.float64)
    return sums.index_add_(0, pos // hw, rows.double())


def _full_sums(x, streams=None) -> torch.Tensor:
    """float64 sums over H, W of ``streams`` (all when None) of a cache, summed afresh. The sum runs in
    float32 like the dense model's mean (a float64 pass costs 5x: 1.4 vs 0.3 ms for [960, 36, 48]); only
    the incremental updates need float64 not to drift."""
    v = x.view() if streams is None else x.view()[streams]
    return v.sum((2, 3), dtype=torch.float32).double()


def refresh_mean(step, ctx):
    """After a dense pass the running sums are out of date: forget them; the next frame that changes the
    producer sums it afresh (it would anyway unless few positions changed), rather than every dense frame
    summing every producer again (LR-ASPP: ~2.8 ms of a dense frame, the pass had computed the means)."""
    step.state["sum"] = None
    step.state["old"] = None


# Note [Incremental mean]: where an incremental update beats summing afresh (measured)
INCREMENTAL_MIN_MAP = 1 << 20  # elements of one stream's map
INCREMENTAL_MAX_SHARE = 0.05  # of the changed streams' positions


def incremental_pays(counts: list[int], hw: int, channels: int) -> bool:
    """Is updating the sums from ``counts`` changed positions per stream cheaper than summing the changed
    streams afresh (Note [Incremental mean])?"""
    changed, streams = sum(counts), sum(1 for c in counts if c)
    return hw * channels >= INCREMENTAL_MIN_MAP and changed < INCREMENTAL_MAX_SHARE * streams * hw


def prepare_mean(step, ctx):
    x = ctx.cache(step.node.args[0])
    b, c, h, w = x.shape
    step.state["sum"] = _full_sums(x)
    step.state["old"] = None

    def before_write(mask):
        if step.state["sum"] is not None and incremental_pays(ctx.stream_counts(step.node.args[0]), h * w, c):
            pos = ctx.positions(step.node.args[0])
            step.state["old"] = _stream_sums(x.buf.index_select(0, pos), pos, h * w, b)
        else:
            step.state["old"] = None

    ctx.add_before_write_hook(step.node.args[0], before_write)


def execute_mean(step, ctx, mask):
    x = ctx.cache(step.node.args[0])
    b, c, h, w = x.shape
    sums = step.state["sum"]
    old = step.state.pop("old", None)
    step.state["old"] = None
    dst = ctx.cache(step.node).buf if step.kind == "spatial" else ctx.value(step.node)  # [B, C]: row b, stream b
    if old is None and all(ctx.stream_counts(step.node.args[0])):
        # every stream summed afresh (squeeze-excite pools, mostly): no stream indices, no float64 division
        fresh = x.view().sum((2, 3), dtype=torch.float32)
        if sums is None:
            step.state["sum"] = fresh.double()
        else:
            sums.copy_(fresh)
        dst.copy_(fresh.div_(h * w))
        return 0
    streams = changed_streams(mask)
    if sums is None:  # forgotten after a dense pass (refresh_mean): every stream afresh, once
        sums = step.state["sum"] = _full_sums(x)
    elif old is not None:
        pos = ctx.positions(step.node.args[0])
        sums += _stream_sums(x.buf.index_select(0, pos), pos, h * w, b) - old
    elif len(streams) == b:
        sums.copy_(_full_sums(x))  # no per-stream indexing: that copies the whole map
    else:
        sums[streams] = _full_sums(x, streams)
    dst[streams] = (sums[streams] / (h * w)).to(x.buf.dtype)
    return 0


def mean_applies(step):
    if step.input_kind(0) != "spatial":
        return "input is not a [B, C, H, W] activation"
    return None


register_change_rule(
    ops.spatial_mean,
    rule=ChangeRule("global_mean", propagate_mean, execute_mean, prepare_mean, mean_applies, refresh=refresh_mean),
)
