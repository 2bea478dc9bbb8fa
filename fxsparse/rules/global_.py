"""Global ops: the mean over H and W (``adaptive_avg_pool2d(x, 1)``, ``x.mean((2, 3))``).

Footprint: the vector of a stream changes when any input position of that
stream changed. Exact.

Note [Incremental mean]: the mean is linear, so it is updated from the
changed positions alone: ``sum += new_rows - old_rows``. The old rows must be
read before the producer overwrites them, so the rule registers a
``before_write`` hook on its producer; the runtime calls it between the
producer's mask propagation and its execution. Sums are kept in float64 so
thousands of incremental updates do not drift. A stream with most of its
positions changed is summed afresh.
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


def refresh_mean(step, ctx):
    """The running sums from the producer's cache as it is now."""
    step.state["sum"] = ctx.cache(step.node.args[0]).view().double().sum((2, 3))
    step.state["old"] = None


def prepare_mean(step, ctx):
    x = ctx.cache(step.node.args[0])
    b, c, h, w = x.shape
    refresh_mean(step, ctx)

    def before_write(mask):
        pos = ctx.positions(step.node.args[0])
        if len(pos) <= ctx.dense_switch * x.positions:
            step.state["old"] = _stream_sums(x.buf.index_select(0, pos), pos, h * w, b)
        else:
            step.state["old"] = None

    ctx.add_before_write_hook(step.node.args[0], before_write)


def execute_mean(step, ctx, mask):
    x = ctx.cache(step.node.args[0])
    b, c, h, w = x.shape
    sums = step.state["sum"]
    streams = changed_streams(mask)
    old = step.state.pop("old", None)
    step.state["old"] = None
    if old is not None:
        pos = ctx.positions(step.node.args[0])
        sums += _stream_sums(x.buf.index_select(0, pos), pos, h * w, b) - old
    else:
        sums[streams] = x.view()[streams].double().sum((2, 3))
    mean = (sums[streams] / (h * w)).to(x.buf.dtype)
    if step.kind == "spatial":
        ctx.cache(step.node).buf[streams] = mean  # [B, C, 1, 1]: row b is stream b
    else:
        ctx.value(step.node)[streams] = mean
    return 0


def mean_applies(step):
    if step.input_kind(0) != "spatial":
        return "input is not a [B, C, H, W] activation"
    return None


register_change_rule(
    ops.spatial_mean,
    rule=ChangeRule("global_mean", propagate_mean, execute_mean, prepare_mean, mean_applies, refresh=refresh_mean),
)
