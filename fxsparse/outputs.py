"""Model outputs as flat lists of tensors, and how far two outputs are apart."""

from __future__ import annotations

from collections.abc import Callable

import torch


def flat_tensors(y) -> list[torch.Tensor]:
    """Every tensor in a model output (a tensor, or nested dicts / tuples / lists of them), in order."""
    if isinstance(y, torch.Tensor):
        return [y]
    if isinstance(y, dict):
        return [t for v in y.values() for t in flat_tensors(v)]
    if isinstance(y, (tuple, list)):
        return [t for v in y for t in flat_tensors(v)]
    return []


def first_tensor(y, accept: Callable[[torch.Tensor], bool]) -> torch.Tensor | None:
    """The first tensor of an output that ``accept`` takes, else None."""
    return next((t for t in flat_tensors(y) if accept(t)), None)


def max_rel_error(actual, expected) -> float:
    """max |actual - expected| / max |expected| over all output tensors."""
    worst = 0.0
    for a, e in zip(flat_tensors(actual), flat_tensors(expected)):
        scale = float(e.abs().max()) or 1.0
        worst = max(worst, float((a - e).abs().max()) / scale)
    return worst
