"""Change rules: for each canonical op, how a change mask flows through it and
how the op is recomputed on the changed part only.

Note [Change rules]: a rule has two halves.

* ``propagate(step, ctx) -> mask``: from the masks of the node's inputs, the
  exact set of output positions that can have changed (the receptive-field
  footprint). Masks are float tensors ``[B, 1, H, W]`` for spatial values,
  ``[B, 1]`` for per-stream rows (vectors, logits).
* ``execute(step, ctx, mask) -> macs``: recompute at least the masked
  positions and write them into the node's cache; return the MACs the
  kernels actually ran (tile waste included).

Rules are keyed by the canonical op (:mod:`fxsparse.ops`) only, so one rule
covers every spelling of an op. ``applies(step)`` may decline a configuration
(returning the reason); the node then falls back to dense, and the coverage
report says why. Nothing is silent.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

CHANGE_RULES: dict[object, ChangeRule] = {}


def _always(step) -> str | None:
    return None


@dataclass(frozen=True)
class ChangeRule:
    """How one canonical op propagates change and runs sparsely.

    Attributes:
        name: short name shown in reports.
        propagate: ``(step, ctx) -> mask`` (see Note [Change rules]).
        execute: ``(step, ctx, mask) -> executed MACs``.
        prepare: ``(step, ctx) -> None``, run once when the caches are built,
            to precompute geometry (tiles, taps, constants) into ``step.config``.
        applies: ``(step) -> reason or None``; a reason sends the node to the dense fallback.
        macs_per_position: ``(step) -> MACs`` per output position (per stream for row values).
        calibrate: optional ``(step, ctx) -> share``: time the lowering against the dense op on this
            machine and return the changed share above which the dense op is faster (``dense_switch="auto"``).
        exact: the sparse result equals the dense op's (up to float reassociation).
        refresh: optional ``(step, ctx) -> None``: re-derive state the rule keeps besides the caches
            (running sums) after the engine refilled every cache with a dense pass.
        covers: optional ``(step, ctx) -> [input nodes]``: inputs whose change mask lies inside the
            step's own on every frame, known from the geometry (Note [Residual inside]).
    """

    name: str
    propagate: Callable
    execute: Callable
    prepare: Callable = lambda step, ctx: None
    applies: Callable = _always
    macs_per_position: Callable = lambda step: 0
    calibrate: Callable | None = None
    exact: bool = True
    refresh: Callable | None = None
    covers: Callable | None = None


def register_change_rule(*targets, rule: ChangeRule, registry: dict | None = None) -> ChangeRule:
    """Register ``rule`` for each canonical op in ``targets``; duplicates are an error."""
    registry = CHANGE_RULES if registry is None else registry
    for target in targets:
        if target in registry:
            raise ValueError(f"duplicate change rule for {target!r}: {registry[target].name} and {rule.name}")
        registry[target] = rule
    return rule


def get_change_rule(target) -> ChangeRule | None:
    """The rule of a canonical op, or None (the node then runs as a dense fallback)."""
    return CHANGE_RULES.get(target)


# The families register themselves on import; imported explicitly, in one place.
from . import gate, global_, pointwise, resample, rowwise, structural, window  # noqa: E402,F401
