"""Tracing a user's model into a ``torch.fx.GraphModule``.

The tracer keeps qualified module paths as node names (like torchvision's
``NodePathTracer``) and turns any tracing failure into a :class:`TraceFailedError`
that names the user's line that broke the trace and how to get past it.
"""

from __future__ import annotations

import os
import traceback
from collections.abc import Callable, Iterable

import torch.fx as fx
from torch import nn

from .errors import TraceFailedError

# Frames inside torch.fx (the tracer's machinery) never explain a trace failure.
_FX_DIR = os.path.dirname(fx.__file__)


class LeafAwareTracer(fx.Tracer):
    """``fx.Tracer`` that also treats the user's ``leaf_modules`` as leaves."""

    def __init__(self, leaf_modules: Iterable[type[nn.Module]] = (), autowrap_functions: Iterable[Callable] = ()):
        super().__init__(autowrap_functions=tuple(autowrap_functions))
        self.leaf_types = tuple(leaf_modules)

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if self.leaf_types and isinstance(m, self.leaf_types):
            return True
        return super().is_leaf_module(m, module_qualified_name)


def _user_frame(exc: BaseException) -> traceback.FrameSummary | None:
    """The innermost traceback frame outside torch.fx and fxsparse: the call that broke."""
    here = os.path.dirname(__file__)
    frames = traceback.extract_tb(exc.__traceback__)
    for frame in reversed(frames):
        if not frame.filename.startswith((_FX_DIR, here)):
            return frame
    return None


def trace_model(
    model: nn.Module,
    *,
    leaf_modules: Iterable[type[nn.Module]] = (),
    autowrap_functions: Iterable[Callable] = (),
) -> fx.GraphModule:
    """Trace ``model`` with ``torch.fx`` (or return it if it already is a GraphModule).

    Args:
        model: any ``nn.Module`` whose ``forward`` ``torch.fx.symbolic_trace`` can follow.
        leaf_modules: module types to keep as opaque calls (they run dense).
        autowrap_functions: free functions to record as calls instead of tracing into.

    Raises:
        TraceFailedError: the trace broke; the message names the line and the fix.
    """
    if isinstance(model, fx.GraphModule):
        return model
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"fxsparse.transform expects a torch.nn.Module, got {type(model).__name__}. "
            "Hint: pass the model object itself, e.g. torchvision.models.resnet18()."
        )
    tracer = LeafAwareTracer(leaf_modules, autowrap_functions)
    if tracer.is_leaf_module(model, ""):
        # A bare nn.Conv2d / nn.ConvTranspose2d: trace it as one call, not its forward's internals.
        model = nn.Sequential(model)
    try:
        graph = tracer.trace(model)
    except Exception as e:  # torch.fx raises many types (TraceError, TypeError, ...)
        frame = _user_frame(e)
        where = f"{frame.filename}:{frame.lineno} `{(frame.line or '').strip()}`" if frame else "unknown location"
        raise TraceFailedError(
            f"torch.fx could not trace {type(model).__name__}: {type(e).__name__}: {e}\n"
            f"  The call that broke the trace: {where}\n"
            "Hint: data-dependent Python control flow (if/for on tensor values) cannot be traced. "
            "Mark the submodule that contains it as a leaf, e.g. "
            "fxsparse.transform(model, leaf_modules=[MyBlock]) (it then runs dense), "
            "or wrap a free function with autowrap_functions=[fn] so it is recorded as one call."
        ) from e
    name = model.__class__.__name__
    return fx.GraphModule(tracer.root, graph, name)
