"""Structural nodes: ``getitem`` on a tuple / list / dict value.

A container (the tuple a leaf module returns, say) is one opaque value that
changed or not; an element taken from it carries that whole flag. Executing
re-reads the element from the freshly computed container.
"""

from __future__ import annotations

import operator

import torch

from . import ChangeRule, register_change_rule


def propagate_getitem(step, ctx):
    changed = bool(ctx.mask(step.node.args[0]))
    if step.kind == "spatial":
        b, _, h, w = step.shape
        return torch.full((b, 1, h, w), float(changed))
    if step.kind == "rows":
        return torch.full((step.shape[0], 1), float(changed))
    return changed


def execute_getitem(step, ctx, mask):
    ctx.store(step.node, ctx.run_dense(step, None))
    return 0


def getitem_applies(step):
    if step.input_kind(0) != "container":
        return "indexes into a tensor (slicing an activation)"
    return None


register_change_rule(
    operator.getitem,
    rule=ChangeRule("getitem", propagate_getitem, execute_getitem, applies=getitem_applies),
)
