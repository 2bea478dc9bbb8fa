"""``transform``: trace, normalize, and wrap a model as a :class:`SparseModule`."""

from __future__ import annotations

import fnmatch
import warnings
from collections.abc import Callable, Iterable

import torch
import torch.fx as fx
from torch import nn

from . import ops
from .errors import FxSparseError
from .input_policy import InputPolicy
from .normalize import GLOBAL_KEY, get_attr_value, insert_gates, normalize
from .runtime import SparseModule
from .tail_engines import check_tail_engine
from .trace import trace_model


def _in_channels(gm: fx.GraphModule) -> int | None:
    """Channel count the first conv expects of the input, if the input feeds a conv directly."""
    placeholder = next(n for n in gm.graph.nodes if n.op == "placeholder")
    for user in placeholder.users:
        if user.target is ops.conv2d and user.args[0] is placeholder:
            w = get_attr_value(gm, user.args[1])
            return w.shape[1] * user.args[6]
    return None


def _native_bfloat16() -> bool:
    """Does oneDNN run bfloat16 natively on this CPU (else emulated, slower than float32)?"""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # an op that moved or a build without oneDNN: assume not
        return False


def threshold_lookup(threshold: float | dict[str, float] | None) -> Callable[[str], float | None]:
    """Layer name -> threshold: a float for every layer, or a dict of names / glob patterns (first match wins,
    exact names before patterns)."""
    if threshold is None:
        return lambda name: None
    if isinstance(threshold, (int, float)):
        if threshold < 0:
            raise ValueError(f"threshold must be >= 0, got {threshold}")
        return lambda name: float(threshold)
    if not isinstance(threshold, dict):
        raise TypeError(f"threshold must be a float or a dict of layer name / glob -> float, got {type(threshold).__name__}")
    for key, value in threshold.items():
        if value < 0:
            raise ValueError(f"threshold for {key!r} must be >= 0, got {value}")

    def lookup(name: str) -> float | None:
        if name in threshold:
            return float(threshold[name])
        for pattern, value in threshold.items():
            if pattern != GLOBAL_KEY and fnmatch.fnmatchcase(name, pattern):
                return float(value)
        return None

    return lookup


def transform(
    model: nn.Module,
    *,
    input_threshold: float = 0.0,
    threshold: float | dict[str, float] | None = None,
    input_open: int = 0,
    input_min_area: int = 0,
    input_dilate: int = 0,
    tile_size: int = 8,
    dense_switch: float | str = 0.5,
    dtype: torch.dtype | None = None,
    fuse_chains: bool = False,
    dense_tail: bool = True,
    tail_engine: str = "torch",
    copy_outputs: bool = True,
    gate_test: str = "max",
    leaf_modules: Iterable[type[nn.Module]] = (),
    autowrap_functions: Iterable[Callable] = (),
) -> SparseModule:
    """Turn ``model`` into a streaming model that recomputes only what changed.

    Args:
        model: an ``nn.Module`` that ``torch.fx.symbolic_trace`` can trace, or a
            ``GraphModule``. It is traced in eval mode and its mode is restored;
            weights are snapshotted (later edits to ``model`` are not seen).
        input_threshold: a pixel counts as changed when
            ``max over channels |x - reference| > input_threshold``; the
            reference is updated only there. ``0.0`` (default) is exact: the
            output equals ``model(x)``. Above 0 the output equals the model on
            the reference frame.
        input_open, input_min_area, input_dilate: clean-up of the input change mask (pixels): opening
            radius, minimum blob area (8-connected; needs scipy), dilation radius. The reference is
            updated only where the cleaned mask says (fxsparse.input_policy).
        threshold: layer thresholds (approximate mode): a float for every conv / linear layer, or a
            dict from layer name or glob pattern (``"features.1*"``) to float; the key ``"global"``
            matches every layer that reads a pooled vector (squeeze-excite, ASPP pooling, heads). A gate on the layer's
            input passes on only positions whose value moved by more than the threshold since the
            last value it let through (see docs/thresholds.md). None or 0: exact.
        tile_size: output tile edge of the tiled conv lowering.
        dense_switch: a layer whose changed share of a stream's output exceeds
            this runs the dense op for that stream instead of gathering tiles
            (above 1.0: never, which tests use to exercise the sparse path). ``"auto"``: measure, per
            conv / pool layer at the first frame, where its sparse lowering stops beating the dense op
            on this machine (the first frame then takes a few dense passes longer).
        gate_test: how a layer-threshold gate measures a position's change: ``"max"`` (default) over
            channels of ``|new - kept|``, which bounds every kept element within the threshold; or
            ``"mean"`` over channels, which passes fewer positions on wide noisy layers and bounds each
            kept element only by ``C x threshold`` (C channels; see docs/thresholds.md).
        dtype: compute dtype. ``torch.bfloat16`` runs weights, caches and kernels in bfloat16 (on CPUs
            with AMX or AVX512-BF16 the matmuls run 3-4x faster) while the caller keeps feeding float32
            frames and gets float32 outputs. Not exact: results differ from the float32 model by
            bfloat16 rounding, like a dense bfloat16 run (ONNX Runtime / OpenVINO's default on such CPUs);
            measure with fxsparse.evaluate. None (default): the model's own dtype.
        fuse_chains: run each chain of convs (a block whose inner outputs feed only the next conv, as in
            bottleneck and inverted-residual blocks) as one unit on gathered tiles, without caching
            its inner activations (fxsparse/chains.py). Same results; False runs every layer alone.
        dense_tail: True (default): the layers a global mean makes change everywhere in exact mode
            (everything after a squeeze-excite or pooled branch that is broadcast back onto a map) run
            as one dense graph on the changed streams, their activations not cached (Note [Dense tails],
            fxsparse/tails.py). Same results; False walks them layer by layer like the rest.
        tail_engine: what runs a dense tail: ``"torch"`` (default, the normalized graph in PyTorch),
            ``"openvino"`` (OpenVINO's CPU plugin in float32: equal to float rounding, faster on these
            tails), or ``"openvino-bf16"`` (OpenVINO in bfloat16 where the CPU has it: a bounded error,
            for the tail only), or ``"auto"``: PyTorch or OpenVINO in float32, whichever ran the tail faster
            on the first frame (PyTorch where OpenVINO is not installed; the choice and times are in
            ``coverage()``). OpenVINO needs ``pip install 'fxsparse[openvino]'`` and a float32 model (Note [Tail
            engines], fxsparse/tail_engines.py). No effect on a model without a tail.
        copy_outputs: True (default): every call returns tensors of its own, like the dense model (written
            into earlier outputs the caller has let go of, never into one it still holds: Note [Recycled
            outputs]). False: returns the module's output buffers themselves, valid until the next call,
            which updates them in place; the caller must not modify them (that would corrupt the streams'
            state: torch's inference-tensor check raises only after the write). Saves a copy per frame (a
            21 x 576 x 768 segmentation map: ~3 ms). For loops that use each output before the next frame
            (``fxsparse run`` does).
        leaf_modules: module types not to trace into (they run dense).
        autowrap_functions: free functions recorded as single calls.

    Returns:
        A :class:`SparseModule`; call it with ``[B, C, H, W]`` frames, one per stream.

    Raises:
        TraceFailedError: the model cannot be traced (the message names the line and the fix).

    Example:
        >>> import torch, fxsparse
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU())
        >>> sm = fxsparse.transform(net)
        >>> y0 = sm(torch.rand(1, 3, 32, 32))      # first frame: dense, fills the caches
        >>> sm.stats.dense
        True
    """
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"fxsparse.transform expects a torch.nn.Module, got {type(model).__name__}. "
            "Hint: pass the model object itself, e.g. torchvision.models.resnet18(); wrap a plain function in an nn.Module."
        )
    if input_threshold < 0:
        raise ValueError(f"input_threshold must be >= 0, got {input_threshold}. Hint: 0.0 means exact.")
    if dense_switch != "auto" and (not isinstance(dense_switch, (int, float)) or dense_switch < 0):
        raise ValueError(f"dense_switch must be a number >= 0 or 'auto', got {dense_switch!r}.")
    if tile_size < 1:
        raise ValueError(f"tile_size must be >= 1, got {tile_size}.")
    check_tail_engine(tail_engine)
    if tail_engine.startswith("openvino") and dtype not in (None, torch.float32):
        raise ValueError(f"tail_engine={tail_engine!r} runs the float32 graph; got dtype={dtype}. Hint: "
                         "'openvino-bf16' is the bfloat16 choice for the tail; leave dtype unset with it.")
    if dtype not in (None, torch.float32):
        tail_engine = "torch"  # "auto" chooses among float32 engines only
    was_training = model.training
    model.eval()
    try:
        gm = trace_model(model, leaf_modules=leaf_modules, autowrap_functions=autowrap_functions)
        if gm is model:  # never rewrite the user's own GraphModule
            gm = fx.GraphModule(model, model.graph.__deepcopy__() if hasattr(model.graph, "__deepcopy__") else model.graph)
    finally:
        model.train(was_training)
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        raise FxSparseError(
            f"{type(model).__name__}.forward takes {len(placeholders)} inputs; fxsparse streams one frame tensor. "
            "Hint: wrap the model in a module whose forward(x) takes the frame and supplies the other arguments."
        )
    gm = normalize(gm)  # BatchNorm folding happens here, in the model's own precision (on copied parameters)
    # every dense op fxsparse runs reads channels-last activations (caches are rows); a plain conv weight
    # would be converted on every such call (1.4 ms per call for DeepLabV3's [256, 960, 3, 3] ASPP conv)
    gm = gm.to(memory_format=torch.channels_last)
    frame_dtype = None
    if dtype is not None:
        if not dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating-point torch.dtype, got {dtype}.")
        if dtype == torch.bfloat16 and not _native_bfloat16():
            warnings.warn(
                "fxsparse: dtype=torch.bfloat16 on a CPU without native bfloat16 support (AVX512-BF16 / AMX): "
                "its kernels are emulated and usually slower than float32. Hint: leave dtype unset here.",
                RuntimeWarning,
                stacklevel=2,
            )
        frame_dtype = next((p.dtype for p in gm.parameters()), torch.float32)
        gm = gm.to(dtype)
        for node in gm.graph.nodes:  # integer frames: the model's own conversion yields the compute dtype
            if node.target is ops.cast and node.args[1] == frame_dtype:
                node.args = (node.args[0], dtype)
        gm.recompile()
    lookup = threshold_lookup(threshold)
    if gate_test not in ("max", "mean"):
        raise ValueError(f"gate_test must be 'max' or 'mean', got {gate_test!r}.")
    gates = insert_gates(gm, lookup, gate_test)
    if isinstance(threshold, dict):
        names = {n.meta.get("fxsparse_name", n.name) for n in gm.graph.nodes if n.target in (ops.conv2d, ops.linear)}
        unused = [k for k in threshold if k != GLOBAL_KEY and not any(fnmatch.fnmatchcase(n, k) for n in names)]
        if unused:
            raise ValueError(
                f"threshold keys match no conv / linear layer: {unused}. "
                "Hint: layer names are module paths, see fxsparse.transform(model).coverage()."
            )
    gm.eval()
    sm = SparseModule(
        gm,
        input_threshold=input_threshold,
        tile_size=tile_size,
        dense_switch=dense_switch,
        in_channels=_in_channels(gm),
        input_policy=InputPolicy(input_open, input_min_area, input_dilate),
        frame_dtype=frame_dtype,
        fuse_chains=fuse_chains,
        dense_tail=dense_tail,
        tail_engine=tail_engine,
        copy_outputs=copy_outputs,
    )
    sm.gates = gates
    sm.dense_frames = not gates  # Note [Dense frames]
    return sm
