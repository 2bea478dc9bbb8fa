"""Graph passes that bring a traced model into canonical form.

``normalize(gm)`` runs, in order:

1. ``canonicalize``: every known module / function / method / in-place spelling
   becomes a call of the one function in :mod:`fxsparse.ops`, hyper-parameters
   resolved to tuples, parameters lifted to ``get_attr`` buffers on the root.
   Unknown calls are left untouched: they become dense fallbacks later.
2. ``fold_batchnorm``: ``affine`` (an eval BatchNorm) right after a conv is
   folded into the conv's weight and bias.
3. ``fuse_residual``: ``conv(x) + r`` becomes the conv with ``residual=r``.
4. ``fuse_activation``: an activation whose only producer is a conv (with no
   other user) is fused into it, so one gather runs conv+bias(+residual)+activation.

The result is an ordinary ``GraphModule``: running it densely gives the
original model's output, which the tests check.
"""

from __future__ import annotations

import itertools
import operator
from collections.abc import Callable

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from . import ops

# -- helpers -------------------------------------------------------------------


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


class _Consts:
    """Registers constant tensors as buffers on the root module, one name each."""

    def __init__(self, gm: fx.GraphModule):
        self.gm = gm
        self.counter = itertools.count()

    def add(self, graph: fx.Graph, tensor: torch.Tensor | None, hint: str) -> fx.Node | None:
        if tensor is None:
            return None
        name = f"_fxs_{hint.replace('.', '_')}_{next(self.counter)}"
        self.gm.register_buffer(name, tensor.detach())
        return graph.get_attr(name)


def _conv_padding(padding, kernel_size, dilation) -> tuple[int, int, int, int]:
    """Resolve nn.Conv2d padding ('same', 'valid', int, pair) to (top, bottom, left, right)."""
    if padding == "valid":
        return (0, 0, 0, 0)
    if padding == "same":
        out = []
        for k, d in zip(kernel_size, dilation):
            total = d * (k - 1)
            out += [total // 2, total - total // 2]
        return tuple(out)
    ph, pw = _pair(padding)
    return (ph, ph, pw, pw)


# -- canonical forms of module calls ---------------------------------------------
# Each builder gets (graph, consts, module, qualname, input_node) and returns a
# (target, args) pair, or None to keep the module as an opaque (dense) call.

_ACT_MODULES: dict[type, Callable[[nn.Module], tuple]] = {
    nn.ReLU: lambda m: ("relu",),
    nn.ReLU6: lambda m: ("hardtanh", 0.0, 6.0),
    nn.Hardtanh: lambda m: ("hardtanh", float(m.min_val), float(m.max_val)),
    nn.LeakyReLU: lambda m: ("leaky_relu", float(m.negative_slope)),
    nn.ELU: lambda m: ("elu", float(m.alpha)),
    nn.Hardswish: lambda m: ("hardswish",),
    nn.Hardsigmoid: lambda m: ("hardsigmoid",),
    nn.Sigmoid: lambda m: ("sigmoid",),
    nn.SiLU: lambda m: ("silu",),
    nn.Mish: lambda m: ("mish",),
    nn.GELU: lambda m: ("gelu", m.approximate),
    nn.Tanh: lambda m: ("tanh",),
}

_IDENTITY_MODULES = (nn.Identity, nn.Dropout, nn.Dropout2d, nn.Dropout1d, nn.AlphaDropout)


def _module_form(graph, consts, m: nn.Module, qualname: str, x: fx.Node, args, kwargs):
    if len(args) != 1 or kwargs:
        return None
    if type(m) in _ACT_MODULES:
        return ops.activation, (x, _ACT_MODULES[type(m)](m))
    if isinstance(m, nn.PReLU):
        return ops.prelu, (x, consts.add(graph, m.weight, qualname + ".weight"))
    if isinstance(m, (nn.Softmax, nn.LogSoftmax)) and m.dim is not None:
        return ops.softmax, (x, m.dim, isinstance(m, nn.LogSoftmax))
    if isinstance(m, _IDENTITY_MODULES):
        return "identity", (x,)
    if isinstance(m, nn.Conv2d) and m.padding_mode == "zeros":
        w = consts.add(graph, m.weight, qualname + ".weight")
        b = consts.add(graph, m.bias, qualname + ".bias")
        padding = _conv_padding(m.padding, m.kernel_size, m.dilation)
        return ops.conv2d, (x, w, b, tuple(m.stride), padding, tuple(m.dilation), m.groups, None)
    if isinstance(m, nn.ConvTranspose2d) and m.padding_mode == "zeros":
        w = consts.add(graph, m.weight, qualname + ".weight")
        b = consts.add(graph, m.bias, qualname + ".bias")
        return ops.conv_transpose2d, (
            x, w, b, tuple(m.stride), tuple(m.padding), tuple(m.output_padding), m.groups, tuple(m.dilation)
        )
    if isinstance(m, nn.BatchNorm2d) and m.track_running_stats and m.running_mean is not None:
        scale = m.running_var.add(m.eps).rsqrt()
        if m.weight is not None:
            scale = scale * m.weight
        shift = -m.running_mean * scale
        if m.bias is not None:
            shift = shift + m.bias
        return ops.affine, (x, consts.add(graph, scale, qualname + ".scale"), consts.add(graph, shift, qualname + ".shift"))
    if isinstance(m, nn.MaxPool2d) and not m.return_indices:
        stride = m.stride if m.stride is not None else m.kernel_size
        return ops.max_pool2d, (
            x, _pair(m.kernel_size), _pair(stride), _pair(m.padding), _pair(m.dilation), bool(m.ceil_mode)
        )
    if isinstance(m, nn.AvgPool2d):
        stride = m.stride if m.stride is not None else m.kernel_size
        return ops.avg_pool2d, (
            x, _pair(m.kernel_size), _pair(stride), _pair(m.padding), bool(m.ceil_mode),
            bool(m.count_include_pad), m.divisor_override,
        )
    if isinstance(m, nn.AdaptiveAvgPool2d):
        return _adaptive_avg(x, m.output_size)
    if isinstance(m, nn.Linear):
        w = consts.add(graph, m.weight, qualname + ".weight")
        b = consts.add(graph, m.bias, qualname + ".bias")
        return ops.linear, (x, w, b)
    if isinstance(m, nn.Flatten):
        return ops.flatten, (x, m.start_dim, m.end_dim)
    if isinstance(m, nn.Upsample):
        return ops.interpolate, (x, m.size, m.scale_factor, m.mode, m.align_corners, m.recompute_scale_factor)
    if isinstance(m, (nn.ZeroPad2d, nn.ConstantPad2d)):
        return ops.pad, (x, tuple(m.padding), float(getattr(m, "value", 0.0)))
    return None


def _adaptive_avg(x, output_size):
    size = _pair(output_size)
    if size == (1, 1):
        return ops.spatial_mean, (x, True)
    return ops.adaptive_avg_pool2d, (x, size)


# -- canonical forms of function and method calls ---------------------------------


def _arg(args, kwargs, i, name, default=None):
    if len(args) > i:
        return args[i]
    return kwargs.get(name, default)


def get_attr_value(gm: fx.GraphModule, node) -> torch.Tensor | None:
    """The tensor behind a ``get_attr`` node (a parameter or buffer), else None."""
    if not (isinstance(node, fx.Node) and node.op == "get_attr"):
        return None
    obj = gm
    for part in node.target.split("."):
        obj = getattr(obj, part)
    return obj if isinstance(obj, torch.Tensor) else None


def _functional_conv(gm, args, kwargs):
    """``F.conv2d`` with constant (get_attr) weights: the canonical conv2d."""
    weight = get_attr_value(gm, _arg(args, kwargs, 1, "weight"))
    if weight is None or weight.dim() != 4:
        return None
    bias = _arg(args, kwargs, 2, "bias")
    if bias is not None and get_attr_value(gm, bias) is None:
        return None
    stride = _pair(_arg(args, kwargs, 3, "stride", 1))
    dilation = _pair(_arg(args, kwargs, 5, "dilation", 1))
    padding = _conv_padding(_arg(args, kwargs, 4, "padding", 0), tuple(weight.shape[2:]), dilation)
    return ops.conv2d, (args[0], args[1], bias, stride, padding, dilation, _arg(args, kwargs, 6, "groups", 1), None)


def _function_form(target, args, kwargs, gm=None):
    """Canonical (target, args) for a call_function / call_method, or None to keep it."""
    name = target if isinstance(target, str) else None
    x = args[0] if args else None

    def is_(*fns, methods=()):
        return (name is None and target in fns) or (name is not None and name in methods)

    # activations
    unary = {
        "relu": ((F.relu, torch.relu, torch.relu_, F.relu_), ("relu", "relu_")),
        "sigmoid": ((torch.sigmoid, F.sigmoid, torch.sigmoid_), ("sigmoid", "sigmoid_")),
        "tanh": ((torch.tanh, F.tanh, torch.tanh_), ("tanh", "tanh_")),
        "hardswish": ((F.hardswish,), ()),
        "hardsigmoid": ((F.hardsigmoid,), ()),
        "silu": ((F.silu,), ()),
        "mish": ((F.mish,), ()),
    }
    for act, (fns, methods) in unary.items():
        if is_(*fns, methods=methods):
            if len(args) != 1 or any(k != "inplace" for k in kwargs):
                return None
            return ops.activation, (x, (act,))
    if is_(F.softmax, torch.softmax, F.log_softmax, torch.log_softmax, methods=("softmax", "log_softmax")):
        dim = _arg(args, kwargs, 1, "dim")
        if dim is None or kwargs.get("dtype") is not None or kwargs.get("_stacklevel") not in (None, 3):
            return None
        log = target in (F.log_softmax, torch.log_softmax) or name == "log_softmax"
        return ops.softmax, (x, dim, log)
    if is_(F.prelu, torch.prelu):
        return ops.prelu, (x, _arg(args, kwargs, 1, "weight"))
    if is_(F.relu6):
        return ops.activation, (x, ("hardtanh", 0.0, 6.0))
    if is_(F.hardtanh, F.hardtanh_):
        lo, hi = _arg(args, kwargs, 1, "min_val", -1.0), _arg(args, kwargs, 2, "max_val", 1.0)
        return ops.activation, (x, ("hardtanh", float(lo), float(hi)))
    if is_(F.leaky_relu, F.leaky_relu_):
        return ops.activation, (x, ("leaky_relu", float(_arg(args, kwargs, 1, "negative_slope", 0.01))))
    if is_(F.elu, F.elu_):
        return ops.activation, (x, ("elu", float(_arg(args, kwargs, 1, "alpha", 1.0))))
    if is_(F.gelu, methods=()):
        return ops.activation, (x, ("gelu", kwargs.get("approximate", "none")))
    # binary arithmetic (no alpha, no rounding mode)
    binary = {
        operator.add: ((operator.add, operator.iadd, torch.add), ("add", "add_")),
        operator.sub: ((operator.sub, operator.isub, torch.sub), ("sub", "sub_")),
        operator.mul: ((operator.mul, operator.imul, torch.mul), ("mul", "mul_")),
        operator.truediv: ((operator.truediv, operator.itruediv, torch.div), ("div", "div_")),
    }
    for canon, (fns, methods) in binary.items():
        if is_(*fns, methods=methods):
            if len(args) != 2 or kwargs:
                return None
            return canon, tuple(args)
    if is_(torch.cat, torch.concat, torch.concatenate):
        tensors = _arg(args, kwargs, 0, "tensors")
        dim = _arg(args, kwargs, 1, "dim", 0)
        return ops.cat, (list(tensors), dim)
    if is_(F.interpolate, F.upsample):
        return ops.interpolate, (
            x,
            _arg(args, kwargs, 1, "size"),
            _arg(args, kwargs, 2, "scale_factor"),
            _arg(args, kwargs, 3, "mode", "nearest"),
            _arg(args, kwargs, 4, "align_corners"),
            _arg(args, kwargs, 5, "recompute_scale_factor"),
        ) if not _arg(args, kwargs, 6, "antialias", False) else None
    if is_(F.conv2d, torch.conv2d) and gm is not None:
        return _functional_conv(gm, args, kwargs)
    if is_(F.pad):
        mode = _arg(args, kwargs, 2, "mode", "constant")
        if mode != "constant":
            return None
        value = _arg(args, kwargs, 3, "value", None)
        return ops.pad, (x, tuple(_arg(args, kwargs, 1, "pad")), float(value or 0.0))
    if is_(F.max_pool2d, torch.max_pool2d):
        if _arg(args, kwargs, 6, "return_indices", False):
            return None
        k = _pair(_arg(args, kwargs, 1, "kernel_size"))
        s = _arg(args, kwargs, 2, "stride") or k
        return ops.max_pool2d, (
            x, k, _pair(s), _pair(_arg(args, kwargs, 3, "padding", 0)),
            _pair(_arg(args, kwargs, 4, "dilation", 1)), bool(_arg(args, kwargs, 5, "ceil_mode", False)),
        )
    if is_(F.avg_pool2d, torch._C._nn.avg_pool2d):
        k = _pair(_arg(args, kwargs, 1, "kernel_size"))
        s = _arg(args, kwargs, 2, "stride") or k
        return ops.avg_pool2d, (
            x, k, _pair(s), _pair(_arg(args, kwargs, 3, "padding", 0)),
            bool(_arg(args, kwargs, 4, "ceil_mode", False)), bool(_arg(args, kwargs, 5, "count_include_pad", True)),
            _arg(args, kwargs, 6, "divisor_override"),
        )
    if is_(F.adaptive_avg_pool2d):
        return _adaptive_avg(x, _arg(args, kwargs, 1, "output_size"))
    if is_(torch.flatten, methods=("flatten",)):
        return ops.flatten, (x, _arg(args, kwargs, 1, "start_dim", 0), _arg(args, kwargs, 2, "end_dim", -1))
    if is_(torch.mean, methods=("mean",)):
        dim = _arg(args, kwargs, 1, "dim")
        keepdim = bool(_arg(args, kwargs, 2, "keepdim", False))
        if dim is not None and not isinstance(dim, int) and sorted(d % 4 for d in dim) == [2, 3] and "dtype" not in kwargs:
            return ops.spatial_mean, (x, keepdim)
        return None
    if is_(F.dropout, F.dropout2d, F.alpha_dropout):
        if _arg(args, kwargs, 2, "training", True) is False:
            return "identity", (x,)
        return None
    # dtype conversions (x.float(), x.to(torch.float32), x.type(torch.float32)): the integer frames of decoded
    # video converted inside the model (Note [Integer frames])
    casts = {"float": torch.float32, "double": torch.float64, "half": torch.float16, "bfloat16": torch.bfloat16}
    if name in casts and len(args) == 1 and not kwargs:
        return ops.cast, (x, casts[name])
    if name in ("to", "type"):
        dtype = _arg(args, kwargs, 1, "dtype")
        if isinstance(dtype, torch.dtype) and len(args) + len(kwargs) == 2:
            return ops.cast, (x, dtype)
        return None
    if is_(methods=("contiguous",)) and len(args) == 1:
        return "identity", (x,)
    if is_(methods=("view",)) and len(args) >= 2 and not kwargs and not isinstance(args[1], torch.dtype):
        # activations are channels-last here (Note [Row caches]): a view merging C with H, W (a head's
        # ``x.view(x.size(0), -1)`` after a pool wider than 1x1) has no view of that layout; reshape gives
        # the same values, copying where it must
        shape = args[1] if len(args) == 2 and isinstance(args[1], (tuple, list)) else args[1:]
        return torch.reshape, (x, tuple(shape))
    if getattr(target, "__name__", None) == "stochastic_depth" and _arg(args, kwargs, 3, "training", True) is False:
        return "identity", (x,)  # torchvision's StochasticDepth in eval mode
    return None


# -- passes ----------------------------------------------------------------------


def canonicalize(gm: fx.GraphModule) -> fx.GraphModule:
    """Rewrite every known op into its :mod:`fxsparse.ops` form (see module doc)."""
    graph = gm.graph
    consts = _Consts(gm)
    modules = dict(gm.named_modules())
    for node in list(graph.nodes):
        if node.op == "call_module":
            m = modules[node.target]
            with graph.inserting_before(node):
                x = node.args[0] if node.args else None
                form = _module_form(graph, consts, m, node.target, x, node.args, node.kwargs)
        elif node.op in ("call_function", "call_method"):
            form = _function_form(node.target, node.args, node.kwargs, gm)
        else:
            continue
        if form is None:
            continue
        target, args = form
        if target == "identity":
            node.replace_all_uses_with(args[0])
            graph.erase_node(node)
            continue
        with graph.inserting_before(node):
            new = graph.call_function(target, tuple(args))
        new.meta = dict(node.meta)
        # reports show the user's module path (layer1.0.conv1), not fx's generated name
        own_name = node.target if node.op == "call_module" else node.name
        new.meta["fxsparse_name"] = node.meta.get("fxsparse_name") or own_name
        _functionalize_inplace(graph, node, new)
        node.replace_all_uses_with(new)
        graph.erase_node(node)
    graph.lint()
    gm.recompile()
    return gm


_INPLACE_FUNCTIONS = {operator.iadd, operator.isub, operator.imul, operator.itruediv}


def _functionalize_inplace(graph: fx.Graph, old: fx.Node, new: fx.Node) -> None:
    """An in-place op mutated its first input; later readers of that input must read ``new``.

    Note [In-place ops]: canonical ops are functional (each node owns its value).
    ``relu_(x)`` or ``x += y`` also change ``x`` for every later reader of ``x``,
    so those readers are rewired to the in-place node's result.
    """
    inplace = (
        old.target in _INPLACE_FUNCTIONS
        or (isinstance(old.target, str) and old.target.endswith("_"))
        or getattr(old.target, "__name__", "").endswith("_")
        or old.kwargs.get("inplace", False)
        or (old.op == "call_module" and getattr(old.graph.owning_module.get_submodule(old.target), "inplace", False))
    )
    if not inplace or not old.args or not isinstance(old.args[0], fx.Node):
        return
    order = {n: i for i, n in enumerate(graph.nodes)}
    for user in list(old.args[0].users):
        if user is not new and user is not old and order[user] > order[old]:
            user.replace_input_with(old.args[0], new)


def _bare_conv_input(node: fx.Node) -> fx.Node | None:
    """The conv feeding ``node``, if it has no fused activation and no other user (so it can absorb ``node``)."""
    conv = node.args[0]
    if isinstance(conv, fx.Node) and conv.target is ops.conv2d and conv.args[7] is None and len(conv.users) == 1:
        return conv
    return None


def fold_batchnorm(gm: fx.GraphModule) -> fx.GraphModule:
    """Fold ``affine`` (eval BatchNorm) into the conv before it, when the conv has no other user."""
    graph = gm.graph
    for node in list(graph.nodes):
        conv = _bare_conv_input(node) if node.target is ops.affine else None
        if conv is None:
            continue
        scale = get_attr_value(gm, node.args[1])
        shift = get_attr_value(gm, node.args[2])
        w_node, b_node = conv.args[1], conv.args[2]
        weight = get_attr_value(gm, w_node)
        bias = get_attr_value(gm, b_node) if b_node is not None else torch.zeros_like(shift)
        new_w = weight * scale.view(-1, 1, 1, 1)
        new_b = bias * scale + shift
        consts = _Consts(gm)
        with graph.inserting_before(conv):
            wn = consts.add(graph, new_w, conv.name + "_folded_w")
            bn = consts.add(graph, new_b, conv.name + "_folded_b")
        args = list(conv.args)
        args[1], args[2] = wn, bn
        conv.args = tuple(args)
        conv.meta["fxsparse_folded"] = node.meta.get("fxsparse_name", node.name)
        node.replace_all_uses_with(conv)
        graph.erase_node(node)
    graph.eliminate_dead_code()
    gm.delete_all_unused_submodules()
    _drop_unused_buffers(gm)
    gm.recompile()
    return gm


def fuse_residual(gm: fx.GraphModule) -> fx.GraphModule:
    """Fuse ``conv(x) + r`` into the conv (a residual block's last conv): ``conv2d(..., residual=r)``.

    The add then costs no gather / scatter of its own and needs no cache; an activation after it is
    fused too (``fuse_activation`` runs next). Only a bare conv (no activation, no other user) is fused.
    """
    graph = gm.graph
    for node in list(graph.nodes):
        if node.target is not operator.add or len(node.args) != 2:
            continue
        a, b = node.args
        for conv, other in ((a, b), (b, a)):
            if (isinstance(conv, fx.Node) and isinstance(other, fx.Node) and other is not conv
                    and conv.target is ops.conv2d and conv.args[7] is None and len(conv.args) < 9
                    and len(conv.users) == 1):
                node.prepend(conv)  # the residual may be computed after the conv: run the conv just before the add
                conv.args = tuple(conv.args[:8]) + (other,)
                conv.meta["fxsparse_residual"] = node.meta.get("fxsparse_name", node.name)
                node.replace_all_uses_with(conv)
                graph.erase_node(node)
                break
    graph.lint()
    gm.recompile()
    return gm


def fuse_activation(gm: fx.GraphModule) -> fx.GraphModule:
    """Fuse an activation into the conv that feeds only it."""
    graph = gm.graph
    for node in list(graph.nodes):
        conv = _bare_conv_input(node) if node.target is ops.activation else None
        if conv is not None:
            args = list(conv.args)
            args[7] = node.args[1]
            conv.args = tuple(args)
            conv.meta["fxsparse_fused"] = node.meta.get("fxsparse_name", node.name)
            node.replace_all_uses_with(conv)
            graph.erase_node(node)
    gm.recompile()
    return gm


def _drop_unused_buffers(gm: fx.GraphModule) -> None:
    used = {n.target for n in gm.graph.nodes if n.op == "get_attr"}
    for name in [n for n, _ in gm.named_buffers(recurse=False)]:
        if name.startswith("_fxs_") and name not in used:
            delattr(gm, name)


def normalize(gm: fx.GraphModule) -> fx.GraphModule:
    """Run all passes; ``gm`` is changed in place and returned."""
    for p in (canonicalize, fold_batchnorm, fuse_residual, fuse_activation):
        gm = p(gm)
    return gm


__all__ = ["normalize", "canonicalize", "fold_batchnorm", "fuse_activation"]


GLOBAL_KEY = "global"

# single-input ops a pooled vector may pass through before a layer reads it
_VECTOR_PASSTHROUGH = (ops.flatten, ops.activation, ops.prelu, ops.affine)


def reads_global_vector(node: fx.Node) -> bool:
    """Does this conv / linear read a pooled vector (squeeze-excite, ASPP pooling, a classifier head)?"""
    x = node.args[0]
    while isinstance(x, fx.Node) and x.target in _VECTOR_PASSTHROUGH:
        x = x.args[0]
    return isinstance(x, fx.Node) and x.target is ops.spatial_mean


def insert_gates(gm: fx.GraphModule, threshold_of: Callable[[str], float | None],
                 test: str = "max") -> list[tuple[str, float]]:
    """Put a threshold gate (Note [Gates] in rules/gate.py) on the data input of every conv / linear layer
    whose name ``threshold_of`` gives a positive threshold. The image input is left to ``input_threshold``.

    Layers that read the same value with the same threshold share one gate. Returns (layer, threshold) pairs.
    """
    graph = gm.graph
    gates: dict[tuple[fx.Node, float], fx.Node] = {}
    placed = []
    for node in list(graph.nodes):
        if node.target not in (ops.conv2d, ops.linear):
            continue
        name = node.meta.get("fxsparse_name", node.name)
        t = threshold_of(name)
        if t is None and reads_global_vector(node):
            t = threshold_of(GLOBAL_KEY)
        x = node.args[0]
        if t is None or t <= 0 or not isinstance(x, fx.Node) or x.op == "placeholder":
            continue
        key = (x, float(t))
        if key not in gates:
            with graph.inserting_after(x):
                gate = graph.call_function(ops.gate, (x, float(t), test))
            gate.meta["fxsparse_name"] = f"{x.meta.get('fxsparse_name', x.name)}>gate"
            gates[key] = gate
        node.args = (gates[key],) + tuple(node.args[1:])
        placed.append((name, float(t)))
    graph.lint()
    gm.recompile()
    return placed
