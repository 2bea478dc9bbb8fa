"""``SparseModule``: the streaming model ``transform`` returns, and the engine that runs it.

Per frame the engine walks the normalized graph once. For each node it
propagates the change mask (the node's rule), lets registered hooks read old
values, then recomputes the masked part into the node's cache. The first
frame of the streams runs the dense model and fills the caches.

Note [Value kinds]: every node's value is one of

* ``spatial``: a ``[B, C, H, W]`` activation, cached in a :class:`RowCache`;
  mask ``[B, 1, H, W]``.
* ``rows``: any other tensor whose dim 0 is the batch (vectors, logits);
  cached as a tensor; mask ``[B, 1]``.
* ``const``: does not depend on pixel values (parameters, shapes, anything
  computed from them); computed once, mask ``None``.
* ``container``: anything else (tuples, dicts, scalars computed from data);
  stored as is, mask = one bool.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
from dataclasses import dataclass, field

import torch
import torch.fx as fx
from torch import nn

from . import chains, ops, tail_engines, tails
from .errors import InputError, InputTypeError
from .kernels import native
from .kernels import tiles as T
from .kernels.rows import RowCache
from .output_pool import OutputPool
from .packed_weights import packed_conv_weights
from .rules import ChangeRule, get_change_rule
from .rules.masks import Box, box_of, clear_box, mask_shape
from .stats import CoverageEntry, CoverageReport, FrameStats, LayerStats

_METADATA_ATTRS = {"shape", "dtype", "device", "ndim", "is_cuda", "layout"}
_METADATA_METHODS = {"size", "dim", "numel", "ndimension", "type"}


def _is_metadata(node: fx.Node) -> bool:
    """Does the node read only tensor metadata (never changes between frames)?"""
    if node.op == "call_function" and node.target is getattr:
        return node.args[1] in _METADATA_ATTRS
    return node.op == "call_method" and node.target in _METADATA_METHODS


def _fallback_rule() -> ChangeRule:
    def propagate(step, ctx):
        changed = any(ctx.changed_any(n) for n in step.tensor_inputs)
        if step.kind in ("spatial", "rows"):
            return torch.full(mask_shape(step.shape), float(changed))
        return changed

    def execute(step, ctx, mask):
        ctx.store(step.node, ctx.run_dense(step, None))
        return step.macs_per_position * (step.shape[0] if step.kind == "rows" else 0)

    return ChangeRule("dense", propagate, execute, exact=True)


FALLBACK = _fallback_rule()
_NO_STREAMS = torch.zeros(0, dtype=torch.long)  # read-only: callers only take its len()


@dataclass
class Step:
    """One graph node compiled for the sparse runtime."""

    node: fx.Node
    name: str
    kind: str
    shape: tuple | None
    rule: ChangeRule
    consts: list
    input_kinds: list[str]
    input_shapes: list
    fallback_reason: str | None = None
    macs_per_position: int = 0
    config: dict = field(default_factory=dict)
    state: dict = field(default_factory=dict)

    @property
    def tensor_inputs(self) -> list[fx.Node]:
        return self.node.all_input_nodes

    def input_kind(self, i: int) -> str:
        return self.input_kinds[i]

    def input_shape(self, i: int):
        return self.input_shapes[i]

    @functools.cached_property
    def op(self) -> str:
        """Short op name for reports (``conv2d 3x3``, ``conv2d+relu``, ``add``, ...)."""
        t = self.node.target
        name = t if isinstance(t, str) else getattr(t, "__name__", str(t))
        if name == "activation":
            name = self.node.args[1][0]
        if t is ops.conv2d:
            k = self.consts[1].shape[2:]
            act = self.node.args[7]
            name = f"conv2d {k[0]}x{k[1]}"
            if len(self.node.args) > 8:
                name += "+add"
            if act is not None:
                name += f"+{act[0]}"
        return name


def _graph_returning(gm: fx.GraphModule, nodes: list[fx.Node]) -> fx.GraphModule:
    """A module running ``gm``'s graph densely and returning the values of ``nodes``, as generated code:
    no per-node Python dispatch, and values not returned are freed as soon as they are used."""
    graph, val_map = fx.Graph(), {}
    graph.graph_copy(gm.graph, val_map)
    graph.output(tuple(val_map[n] for n in nodes))
    module = fx.GraphModule(gm, graph)
    module.graph.eliminate_dead_code()  # nodes no returned value needs are not run (Note [Direct outputs])
    module.recompile()
    return module


class Engine:
    """The caches of all streams and the compiled steps; passed to rules as ``ctx``."""

    def __init__(self, gm: fx.GraphModule, x: torch.Tensor, tile_size: int, dense_switch: float | str,
                 fuse_chains: bool = False, dense_tail: bool = True, tail_engine: str = "torch"):
        self.gm = gm
        self.tile_size = tile_size
        self.auto_switch = dense_switch == "auto"
        self.dense_switch = 0.5 if self.auto_switch else float(dense_switch)
        self.switches: dict[fx.Node, float] = {}  # per-node switch, measured when dense_switch="auto"
        self.batch = x.shape[0]
        self.frame_shape = tuple(x.shape[1:])
        self.values: dict[fx.Node, object] = {}
        self.kinds: dict[fx.Node, str] = {}
        self.hooks: dict[fx.Node, list] = {}
        self.masks: dict[fx.Node, object] = {}
        self._positions: dict[fx.Node, torch.Tensor] = {}
        self._counts: dict[fx.Node, torch.Tensor] = {}
        self._boxes: dict[fx.Node, Box | None] = {}
        self._same: dict[fx.Node, fx.Node] = {}  # node -> the node whose mask it shares this frame
        self.executing = True  # False while estimate() propagates masks only
        # reusable mask buffers: (tensor, box last written) per node (Note [Mask boxes])
        self._mask_buffers: dict[fx.Node, tuple[torch.Tensor, Box | None]] = {}
        self.placeholder = next(n for n in gm.graph.nodes if n.op == "placeholder")
        self.output_node = next(n for n in gm.graph.nodes if n.op == "output")
        self._unchanged_stats: FrameStats | None = None
        self._capture_module = None  # built on the first dense frame (_all_values_module)
        # the reference frame twice: as rows (what the first layers gather) and in the caller's layout,
        # so the per-frame difference reads both operands with the same strides (2x faster than
        # against the channels-last rows: 0.35 vs 0.70 ms for a 576x768 frame)
        self._ref_frame = x.clone()
        self._diff: torch.Tensor | None = None  # the per-frame difference's buffer (input_mask)
        self.input_counts: tuple[torch.Tensor, list[int]] | None = None  # (mask, its counts), from input_mask
        self.input_box: tuple[torch.Tensor, Box | None] | None = None  # (mask, its box), from input_mask
        self._cache_bytes: int | None = None  # cache_bytes(), once every cache exists (_finish)
        self._mirrors: dict[fx.Node, torch.Tensor] = {}  # Note [Output mirrors]
        self._stale_mirrors: set[fx.Node] = set()  # mirrors to refresh whole (after a dense pass)
        nodes = [n for n in gm.graph.nodes if n.op != "output"]
        self.steps: list[Step] = []
        for node, value in zip(nodes, _graph_returning(gm, nodes)(x)):  # the first frame: every value kept
            self._adopt(node, value)
        for node in gm.graph.nodes:
            if node.op in ("placeholder", "output", "get_attr") or self.kinds[node] == "const":
                continue
            self.steps.append(self._compile(node))
        self._step_of = {step.node: step for step in self.steps}
        for step in self.steps:
            step.rule.prepare(step, self)
        if self.auto_switch:
            for step in self.steps:
                if step.rule.calibrate is not None:
                    self.switches[step.node] = step.rule.calibrate(step, self)
        self.chains = chains.find_chains(self.steps, tile_size) if fuse_chains else []
        for chain in self.chains:
            self._install_chain(chain)
        self._direct = {step.node: step for step in self.steps if self._is_direct_output(step)}
        self._stale_rows: set[fx.Node] = set()  # direct outputs whose mirror is newer than their rows
        self._tail_masks: dict[tuple, torch.Tensor] = {}  # (node, changed) -> an all-ones / all-zeros mask
        self._tail_layers: dict[tuple, list] = {}  # (changed streams, executed) -> the tail's LayerStats
        self.tail = tails.find_tail(gm, self.steps, self.kinds, self._direct, self.output_node) if dense_tail else None
        if self.tail is not None and any(self.values[i] is None for i in self.tail.inputs):
            self.tail = None  # it would read a chain's inner value, which is never cached
        self._walk_order = self.steps  # Note [Dense tails]: None stands for the tail, run as one graph
        self._tail_streams: list[int] = []  # the streams the tail ran for in the last frame
        if self.tail is not None:
            for step in self.tail.steps:
                if step.node not in self.tail.kept:
                    self.values[step.node] = None  # computed inside the tail's graph only: its memory is freed
            skip = self.tail.nodes | {s.node for s in self.tail.after}
            self._walk_order = [s for s in self.steps if s.node not in skip] + [None] + self.tail.after
            # Note [Tail engines]: the tail's graph as it is, or compiled for another engine
            self._tail_run, self.tail_engine, self.tail_engine_times = tail_engines.compile_tail(
                self.tail, self.kinds, [self.resolve(n) for n in self.tail.inputs], tail_engine)

    def _install_chain(self, chain) -> None:
        """Run ``chain`` as one unit at its last conv (Note [Conv chains]); free its inner caches."""
        k = len(chain.steps)
        for i, step in enumerate(chain.steps):
            step.config["lowering"] = f"chain {i + 1}/{k}, {chain.tile[0]}x{chain.tile[1]} tiles"
            step.config.pop("label", None)  # the chain runs it, not its own lowering
            if i < k - 1:
                step.rule = dataclasses.replace(step.rule, execute=lambda step, ctx, mask: 0)
                self.values[step.node] = None  # never read again: the chain recomputes it inside its tiles
            else:
                step.rule = dataclasses.replace(
                    step.rule, execute=lambda step, ctx, mask, c=chain: chains.execute(c, ctx, mask)
                )

    def _is_direct_output(self, step: Step) -> bool:
        """Note [Direct outputs]: a spatial model output that feeds nothing else and is computed from inputs
        at most a quarter of its size (a segmenter's final upsample). When it changes everywhere it is
        computed straight into its NCHW mirror from NCHW copies of its small inputs, instead of into
        channels-last rows that the mirror then transposes (LR-ASPP 576x768: a 21-channel upsample, 35 ms
        channels-last plus a 16 ms transposing copy, against 31 ms NCHW)."""
        node = step.node
        if step.kind != "spatial" or node.op != "call_function" or set(node.users) != {self.output_node}:
            return False
        if not step.rule.exact or step.rule.refresh is not None:  # gates and rules with state keep their path
            return False
        inputs = node.all_input_nodes
        if not inputs or any(self.values[n] is None or self.kinds[n] not in ("spatial", "const") for n in inputs):
            return False
        size = math.prod(step.shape)
        return sum(math.prod(self._shape(n) or ()) for n in inputs if self.kinds[n] == "spatial") * 4 <= size

    def _run_direct(self, step: Step) -> int:
        """Compute a direct output densely into its mirror (Note [Direct outputs]); its rows go stale."""
        node = step.node

        def nchw(a):
            v = self.values[a]
            return v.view().contiguous() if isinstance(v, RowCache) else v

        args, kwargs = fx.node.map_arg(node.args, nchw), fx.node.map_arg(node.kwargs, nchw)
        mirror = self._mirrors.get(node)
        if not (node.target is ops.interpolate and mirror is not None and ops.interpolate_into(mirror, *args, **kwargs)):
            self._mirrors[node] = node.target(*args, **kwargs).contiguous()
        self._stale_mirrors.discard(node)
        self._stale_rows.add(node)
        self.values[node].release()  # the mirror holds the value now
        return step.macs_per_position * self._positions_of(step)

    def _fresh_rows(self, node: fx.Node) -> None:
        """Bring a direct output's rows up to date from its mirror before anything writes into them."""
        if node in self._stale_rows:
            self.values[node].adopt(self._mirrors[node])
            self._stale_rows.discard(node)

    # -- building ------------------------------------------------------------------

    def _adopt(self, node: fx.Node, value) -> None:
        """Classify a first-frame value (Note [Value kinds]) and cache it."""
        inputs = node.all_input_nodes
        if node.op == "placeholder":
            kind, value = "spatial", RowCache.from_tensor(value)
        elif node.op == "get_attr" or _is_metadata(node) or (inputs and all(self.kinds[n] == "const" for n in inputs)):
            kind = "const"
        elif isinstance(value, torch.Tensor) and value.dim() == 4 and value.shape[0] == self.batch:
            kind, value = "spatial", RowCache.from_tensor(value)
        elif isinstance(value, torch.Tensor) and value.dim() >= 1 and value.shape[0] == self.batch:
            kind, value = "rows", value.clone()
        else:
            kind = "container"
        self.kinds[node] = kind
        self.values[node] = value

    def _shape(self, node):
        v = self.values[node]
        if isinstance(v, RowCache):
            return v.shape
        return tuple(v.shape) if isinstance(v, torch.Tensor) else None

    def _compile(self, node: fx.Node) -> Step:
        consts = [self.values[a] if isinstance(a, fx.Node) and self.kinds[a] == "const" else None for a in node.args]
        inputs = node.all_input_nodes
        step = Step(
            node=node,
            name=self.step_name(node),
            kind=self.kinds[node],
            shape=self._shape(node),
            rule=FALLBACK,
            consts=consts,
            input_kinds=[self.kinds[n] for n in inputs],
            input_shapes=[self._shape(n) for n in inputs],
        )
        rule = get_change_rule(node.target) if node.op == "call_function" else None
        if rule is None:
            what = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", node.target)
            step.fallback_reason = f"no change rule for {node.op} {what}"
        else:
            reason = rule.applies(step)
            if reason is None:
                step.rule = rule
                step.macs_per_position = int(rule.macs_per_position(step))
            else:
                step.fallback_reason = reason
        return step

    def step_name(self, node: fx.Node) -> str:
        return node.meta.get("fxsparse_name", node.name)

    # -- the context rules use -----------------------------------------------------

    def step_of(self, node: fx.Node) -> Step | None:
        """The compiled step of ``node`` (None for the input, constants and outputs)."""
        return self._step_of.get(node)

    def cache(self, node: fx.Node) -> RowCache:
        return self.values[node]

    def value(self, node: fx.Node):
        return self.values[node]

    def kind(self, node: fx.Node) -> str:
        return self.kinds[node]

    def mask(self, node):
        return self.masks.get(node) if isinstance(node, fx.Node) else None

    def changed_any(self, node: fx.Node) -> bool:
        m = self.masks.get(node)
        if m is None or isinstance(m, bool):
            return bool(m)
        return bool(m.any())

    def share_mask(self, node: fx.Node, src: fx.Node) -> torch.Tensor:
        """``node``'s mask is ``src``'s (a 1x1 conv's footprint): its positions, counts and box are
        ``src``'s too, computed once for both."""
        self._same[node] = self._same.get(src, src)
        return self.masks[src]

    def positions(self, node: fx.Node) -> torch.Tensor:
        """Flat indices of the node's changed positions this frame (computed once, from its box)."""
        node = self._same.get(node, node)
        pos = self._positions.get(node)
        if pos is None:
            mask = self.masks[node]
            box = self.box(node)
            if box is None:
                pos = torch.zeros(0, dtype=torch.long)
            else:
                pos = T.positions_in_box(mask, box)
            self._positions[node] = pos
        return pos

    def known_counts(self, mask: torch.Tensor) -> list[int] | None:
        """The per-stream changed pixels of input mask ``mask`` if :meth:`input_mask` counted them."""
        if self.input_counts is not None and self.input_counts[0] is mask:
            return self.input_counts[1]
        return None

    def known_box(self, mask: torch.Tensor) -> Box | None | bool:
        """The box of input mask ``mask`` if :meth:`input_mask` found it (None: nothing changed), else False."""
        if self.input_box is not None and self.input_box[0] is mask:
            return self.input_box[1]
        return False

    def stream_counts(self, node: fx.Node) -> list[int]:
        """Number of changed positions of the node per stream this frame (computed once per mask, as
        Python ints: the per-step decisions that read them then cost no tensor op). A sum over the box,
        not the length of the positions: lowerings on the box never need the positions (counting by
        positions cost mobilenet_v2 3-5% of its 1% frame)."""
        node = self._same.get(node, node)
        counts = self._counts.get(node)
        if counts is None:
            mask = self.masks[node]
            if mask.dim() != 4:
                counts = _count_ones(mask)
            elif (box := self.box(node)) is None:
                counts = [0] * mask.shape[0]
            else:
                counts = _count_ones(mask[:, :, box[0] : box[1], box[2] : box[3]])
            self._counts[node] = counts
        return counts

    def fully_changed(self, node: fx.Node) -> bool:
        """Did every position of every stream of this spatial node change this frame?"""
        mask = self.masks[node]
        total = mask.shape[2] * mask.shape[3]
        return all(c == total for c in self.stream_counts(node))

    def box(self, node: fx.Node) -> Box | None:
        """Bounding box of the node's changed positions this frame (None: nothing changed)."""
        node = self._same.get(node, node)
        if node not in self._boxes:
            self._boxes[node] = box_of(self.masks[node])
        return self._boxes[node]

    def set_positions(self, node: fx.Node, pos: torch.Tensor) -> None:
        """A rule that already knows its changed positions (a gate) records them, saving a nonzero."""
        self._positions[node] = pos

    def set_counts(self, node: fx.Node, counts: list[int]) -> None:
        """A rule that counted its changed positions per stream while writing its mask says so."""
        self._counts[node] = counts

    def set_box(self, node: fx.Node, box: Box | None) -> None:
        """A rule that knows its mask's box says so (it must contain every changed position)."""
        self._boxes[node] = box

    def mask_buffer(self, node: fx.Node, shape) -> torch.Tensor:
        """An all-zero mask buffer for ``node``, reused across frames (only last frame's box is cleared)."""
        buf, stale = self.stale_mask_buffer(node, shape)
        clear_box(buf, stale)
        return buf

    def stale_mask_buffer(self, node: fx.Node, shape) -> tuple[torch.Tensor, Box | None]:
        """(``node``'s mask buffer, the box where it may still hold last frame's ones): zero outside that box;
        the caller overwrites the box (a footprint kernel writes it in the same pass as the new mask)."""
        buf, box = self._mask_buffers.get(node, (None, None))
        if buf is None or tuple(buf.shape) != tuple(shape):
            buf, box = torch.zeros(shape), None
        self._mask_buffers[node] = (buf, None)
        return buf, box

    def _remember_box(self, node: fx.Node) -> None:
        if node in self._mask_buffers and self.masks.get(node) is self._mask_buffers[node][0]:
            self._mask_buffers[node] = (self._mask_buffers[node][0], self.box(node))

    def switch(self, node: fx.Node) -> float:
        """The changed share above which this node runs its dense op (measured, or ``dense_switch``)."""
        return self.switches.get(node, self.dense_switch)

    def dense_streams(self, node: fx.Node, per_stream_total: int, counts: list[int] | None = None) -> torch.Tensor:
        """Streams whose changed share of this node (``counts``, default its changed positions) exceeds its
        switch: they run the dense op. Decided on Python ints; a tensor is built only when one does."""
        limit = self.switch(node) * per_stream_total
        counts = self.stream_counts(node) if counts is None else counts
        dense = [b for b, c in enumerate(counts) if c > limit]
        return torch.tensor(dense, dtype=torch.long) if dense else _NO_STREAMS

    def add_before_write_hook(self, node: fx.Node, fn) -> None:
        self.hooks.setdefault(node, []).append(fn)

    def resolve(self, arg, streams=None):
        """Current value of ``arg`` (Nodes become tensors; spatial ones channels-last views)."""

        def one(n):
            v, kind = self.values[n], self.kinds[n]
            if kind == "spatial":
                return v.read_streams(streams)
            if kind == "rows" and streams is not None:
                return v[streams]
            return v

        return fx.node.map_arg(arg, one)

    def run_dense(self, step: Step, streams):
        """Run the node's op on full inputs (of ``streams`` only, when given)."""
        node = step.node
        args = self.resolve(node.args, streams)
        kwargs = self.resolve(node.kwargs, streams)
        if node.op == "call_function":
            return node.target(*args, **kwargs)
        if node.op == "call_method":
            return getattr(args[0], node.target)(*args[1:], **kwargs)
        return self.gm.get_submodule(node.target)(*args, **kwargs)

    def store(self, node: fx.Node, value) -> None:
        """Replace a node's whole value (dense fallbacks, container elements)."""
        kind = self.kinds[node]
        if kind == "spatial":
            self.values[node].write_streams(None, value)  # a copy: a fallback's result may alias its input
        elif kind == "rows":
            self.values[node].copy_(value)
        else:
            self.values[node] = value

    # -- per frame -------------------------------------------------------------------

    def input_mask(self, x: torch.Tensor, threshold: float, full_streams: torch.Tensor | None,
                   policy=None, last_unchanged: bool = True) -> torch.Tensor | None:
        """Changed pixels: ``max_c |x - reference| > threshold`` (None when none changed). Reads state,
        changes nothing but :attr:`input_counts` (the mask's changed pixels per stream, when the one-pass
        difference or the native clean-up counted them). ``last_unchanged``: the previous frame changed
        nothing, so this one is tested bit for bit first (exact mode).

        Raises InputError for NaN / inf in ``x``: they make the difference non-finite, so one
        small reduction over the ``[B, 1, H, W]`` difference replaces a full ``isfinite`` pass.
        """
        full = full_streams is not None and len(full_streams) > 0
        one_pass = x.dtype in (torch.float32, torch.uint8) and native.available()  # Note [Native input difference]
        if threshold == 0 and not full and (last_unchanged or not one_pass) and self._bitwise_equal(x):
            return None  # a static scene in exact mode: one comparison, nothing allocated
        # Note [Native input difference]: one pass over both frames writes the mask
        self.input_counts = self.input_box = None
        found = native.input_difference(x, self._ref_frame, threshold)
        if found is not None:
            mask, largest, counts, box = found
            if not full and not (policy is not None and policy.active):  # the mask returned is this one
                self.input_counts, self.input_box = (mask, counts), (mask, box)
        else:
            if self._diff is None or self._diff.shape != x.shape:
                self._diff = torch.empty_like(x)  # reused: a fresh 5 MB tensor per frame costs page faults
            if x.is_floating_point():
                diff = torch.sub(x, self._ref_frame, out=self._diff).abs_().amax(1, keepdim=True)
            else:  # Note [Integer frames]: max - min, as x - ref would wrap around in uint8
                high = torch.maximum(x, self._ref_frame, out=self._diff)
                diff = high.sub_(torch.minimum(x, self._ref_frame)).amax(1, keepdim=True)
            largest, mask = float(diff.max()), None
        if not math.isfinite(largest):
            _raise_non_finite(x)
        if not full and largest <= threshold:
            return None  # a static scene: decided by the one reduction, no mask is made
        if mask is None:  # float32 0/1 in one pass, whatever the compute dtype: every mask is float32 (Note [Change rules])
            mask = torch.gt(diff, threshold, out=torch.empty(diff.shape))
        if policy is not None and policy.active:
            mask, counts, box = policy.clean(mask)
            if not full and not (any(counts) if counts is not None else bool(mask.any())):
                return None
            if not full and counts is not None:
                self.input_counts, self.input_box = (mask, counts), (mask, box)
        if full:
            mask[full_streams] = 1.0
        return mask

    def _bitwise_equal(self, x: torch.Tensor) -> bool:
        """Is ``x`` bit for bit the reference frame? Natively on both cores where it can (0.31 ms for a 576x768
        float32 frame with the reference out of cache), else ``torch.equal`` on int64 words (0.56 ms; 0.7 ms for
        the difference and its reduction)."""
        ref = self._ref_frame
        same = native.frames_equal(x, ref)
        if same is not None:
            return same
        if not (x.is_contiguous() and ref.is_contiguous() and x.dtype == ref.dtype) or x.numel() * x.element_size() % 8:
            return torch.equal(x, ref)
        return torch.equal(x.view(-1).view(torch.int64), ref.view(-1).view(torch.int64))

    def step_frame(self, x: torch.Tensor | None, mask_in: torch.Tensor, threshold: float) -> FrameStats:
        """Propagate ``mask_in`` through every step and recompute what it reaches.

        With ``x`` None nothing is computed and no cache changes: only the masks are propagated, and
        the stats give the cone of a hypothetical change (``SparseModule.estimate``).
        """
        self.masks = {self.placeholder: mask_in}
        self._positions = {}
        self._counts = {}
        if (known := self.known_counts(mask_in)) is not None:
            self._counts[self.placeholder] = known  # counted by the one-pass difference: no sum over the mask
        self._boxes = {}
        if (box := self.known_box(mask_in)) is not False:
            self._boxes[self.placeholder] = box  # found by the one-pass difference: no pass over the mask
        self._same = {}
        per_stream = mask_in.shape[2] * mask_in.shape[3]
        stats = FrameStats(changed_fraction=[c / per_stream for c in self.stream_counts(self.placeholder)])
        self.executing = x is not None
        if x is not None:
            self._update_reference(x, threshold)
        layers: dict[fx.Node, LayerStats] = {}
        for step in self._walk_order:
            if step is None:
                self._tail_frame(x is not None, layers)
                continue
            mask = step.rule.propagate(step, self)
            self.masks[step.node] = mask
            self._remember_box(step.node)
            if isinstance(mask, torch.Tensor):
                changed = sum(self.stream_counts(step.node))
                fraction = changed / mask.numel()
                positions = mask.numel() if step.kind == "spatial" else mask.shape[0]
            else:
                changed = fraction = float(bool(mask))
                positions = 1
            executed = 0
            if changed and x is not None:
                for hook in self.hooks.get(step.node, ()):
                    hook(mask)
                if step.node in self._direct and self.dense_switch <= 1.0 and self.fully_changed(step.node):
                    executed = self._run_direct(step)
                else:
                    self._fresh_rows(step.node)
                    executed = step.rule.execute(step, self, mask)
            per_position = step.macs_per_position
            layers[step.node] = LayerStats(
                step.name, step.op, fraction, per_position * positions, int(per_position * changed), int(executed)
            )
        stats.layers = [layers[step.node] for step in self.steps]
        self._finish(stats)
        return stats

    def _tail_frame(self, execute: bool, layers: dict) -> None:
        """Run the dense tail (Note [Dense tails]) for the streams whose inputs to it changed; give the nodes
        read from outside it their masks (all of a changed stream); add every tail layer's stats to ``layers``."""
        tail, b = self.tail, self.batch
        changed = [False] * b
        for node in tail.inputs:
            m = self.masks.get(node)
            if self.kinds[node] == "const" or m is None:
                continue
            if isinstance(m, bool):
                changed = [c or m for c in changed]
                continue
            changed = [c or n > 0 for c, n in zip(changed, self.stream_counts(node))]
        streams = self._tail_streams = [i for i, c in enumerate(changed) if c]
        if streams and execute:
            index = None if len(streams) == b else torch.tensor(streams, dtype=torch.long)
            self._store(tail.kept, self._tail_run(*[self.resolve(node, index) for node in tail.inputs]), index)
        for node in tail.kept:
            self.masks[node] = self._tail_mask(node, streams)
            step = self._step_of[node]
            per_stream = self._positions_of(step) // b
            self._counts[node] = [per_stream if c else 0 for c in changed]
            if step.kind == "spatial":
                self._boxes[node] = (0, step.shape[2], 0, step.shape[3]) if streams else None
        key = (len(streams), execute)  # the tail's stats depend on nothing else: built once per kind of frame
        if key not in self._tail_layers:
            share = len(streams) / b
            self._tail_layers[key] = [
                LayerStats(step.name, step.op, share, dense, dense * len(streams) // b,
                           dense * len(streams) // b if execute else 0)
                for step, dense in ((s, s.macs_per_position * self._positions_of(s)) for s in tail.steps)]
        layers.update(zip((step.node for step in tail.steps), self._tail_layers[key]))

    def _store(self, nodes, values, index: torch.Tensor | None = None) -> None:
        """Take the values a dense pass or the tail computed for ``nodes`` (of the streams ``index``, all when
        None) as their caches: a channels-last map whole is adopted without a copy."""
        for node, value in zip(nodes, values):
            kind, current = self.kinds[node], self.values[node]
            if kind == "spatial" and index is None:
                current.adopt(value)
            elif kind == "spatial":
                current.write_streams(index, value)
            elif kind == "rows":
                if index is None:
                    current.copy_(value)
                else:
                    current[index] = value
            else:
                self.values[node] = value

    def _tail_mask(self, node: fx.Node, streams: list[int]) -> torch.Tensor:
        """A tail node's change mask: ones in ``streams``, zeros elsewhere (``[B, 1, H, W]`` or ``[B, 1]``)."""
        step = self._step_of[node]
        shape = (self.batch, 1) + (tuple(step.shape[2:]) if step.kind == "spatial" else ())
        if len(streams) in (0, self.batch):  # the common cases: one tensor each, made once
            key = (node, bool(streams))
            mask = self._tail_masks.get(key)
            if mask is None:
                mask = self._tail_masks[key] = torch.full(shape, float(bool(streams)))
            return mask
        mask = torch.zeros(shape)
        mask[streams] = 1.0
        return mask

    def tail_masks(self) -> dict[fx.Node, torch.Tensor]:
        """The change masks of the tail's nodes in the last frame (Note [Dense tails]: every position of the
        streams it ran for), for reports; the walk does not need them."""
        if self.tail is None or not self.masks:
            return {}
        return {step.node: self._tail_mask(step.node, self._tail_streams) for step in self.tail.steps}

    def dense_frame(self, x: torch.Tensor, mask_in: torch.Tensor, threshold: float) -> FrameStats:
        """Most input pixels of every stream changed: run the graph once, densely, on the new reference
        frame and refill every cache from it (Note [Dense frames])."""
        self.masks = {self.placeholder: mask_in}
        self._positions, self._counts, self._boxes, self._same = {}, {}, {}, {}
        self._update_reference(x, threshold)
        for node, value in self.values.items():
            if isinstance(value, RowCache) and node is not self.placeholder:
                value.release()  # every one is replaced below; freeing first lets the pass reuse the memory
        nodes, module = self._all_values_module()
        # the reference as channels-last rows: oneDNN then returns channels-last activations, which the
        # caches adopt without a copy (from NCHW, converting every activation cost PNet ~20% of the pass)
        self._store(nodes, module(self.values[self.placeholder].view()))
        if self.tail is not None:  # Note [Tail engines]: the tail's own engine runs it in dense frames too
            self._store(self.tail.kept, self._tail_run(*[self.resolve(node) for node in self.tail.inputs]))
        self._stale_mirrors = set(self._mirrors)  # refreshed whole, in the same buffers (no page faults)
        self._stale_rows = set()
        for step in self._direct.values():
            self._run_direct(step)
        for step in self.steps:
            if step.rule.refresh is not None:
                step.rule.refresh(step, self)
        self.masks = {}
        known = self.known_counts(mask_in)
        shares = mask_in.flatten(1).mean(1, dtype=torch.float32).tolist() if known is None else \
            [c / (mask_in.shape[2] * mask_in.shape[3]) for c in known]
        return self.dense_stats(shares)

    def _all_values_module(self):
        """(nodes, a module returning their values): every node with a cache outside the dense tail (built once)."""
        if self._capture_module is None:
            tail = self.tail.nodes if self.tail is not None else set()
            nodes = [n for n in self.gm.graph.nodes if n.op not in ("placeholder", "output") and n not in tail
                     and self.kinds[n] != "const" and self.values[n] is not None and n not in self._direct]
            self._capture_module = (nodes, _graph_returning(self.gm, nodes))  # direct outputs: run after it
        return self._capture_module

    def _update_reference(self, x: torch.Tensor, threshold: float) -> None:
        node = self.placeholder
        for hook in self.hooks.get(node, ()):
            hook(self.masks[node])
        ref = self.values[node]
        mask = self.masks[node]
        if sum(self.stream_counts(node)) > ref.positions // 2:  # counts: no index list for a full frame
            # above 0, unchanged pixels keep their reference value (they may differ by up to the threshold);
            # at 0 copy x: adopting the caller's tensor would let them change our reference later
            if threshold > 0:
                self._ref_frame = torch.where(mask > 0, x, self._ref_frame)
            else:
                self._ref_frame.copy_(x)
            ref.write_streams(None, self._ref_frame)
        elif (box := self.box(node)) is not None:  # update inside the changed box only, both copies
            if native.update_reference(x, self._ref_frame, ref.buf, mask, box):
                return  # Note [Native input difference]: only the changed pixels
            y0, y1, x0, x1 = box
            region = self._ref_frame[:, :, y0:y1, x0:x1]
            region.copy_(torch.where(mask[:, :, y0:y1, x0:x1] > 0, x[:, :, y0:y1, x0:x1], region))
            ref.nhwc()[:, y0:y1, x0:x1] = region.permute(0, 2, 3, 1)

    def dense_stats(self, changed_fraction: list[float] | None = None) -> FrameStats:
        """Stats of a dense pass (the first frame, a dense frame). Its cone is not computed (that is the
        per-layer mask work a dense frame skips): the dense cost stands in for it, an upper bound."""
        stats = FrameStats(changed_fraction=changed_fraction or [1.0] * self.batch, dense=True)
        for step in self.steps:
            positions = self._positions_of(step)
            macs = step.macs_per_position * positions
            stats.layers.append(LayerStats(step.name, step.op, 1.0, macs, macs, macs))
        self._finish(stats)
        return stats

    def unchanged_stats(self) -> FrameStats:
        """Stats of a frame that changed nothing (the same every time: built once)."""
        if self._unchanged_stats is None:
            self._unchanged_stats = self._build_unchanged_stats()
        return self._unchanged_stats

    def _build_unchanged_stats(self) -> FrameStats:
        stats = FrameStats(changed_fraction=[0.0] * self.batch)
        for step in self.steps:
            macs = step.macs_per_position * self._positions_of(step)
            stats.layers.append(LayerStats(step.name, step.op, 0.0, macs, 0, 0))
        self._finish(stats)
        return stats

    def _positions_of(self, step: Step) -> int:
        if step.kind == "spatial":
            b, _, h, w = step.shape
            return b * h * w
        return step.shape[0] if step.kind == "rows" else 0

    def _finish(self, stats: FrameStats) -> None:
        stats.macs_dense = sum(r.macs_dense for r in stats.layers)
        stats.macs_cone = sum(r.macs_cone for r in stats.layers)
        stats.macs_executed = sum(r.macs_executed for r in stats.layers)
        if self._cache_bytes is None:  # the caches keep their sizes: summed once (~0.1 ms a frame)
            self._cache_bytes = self.cache_bytes()
        stats.cache_bytes = self._cache_bytes

    def cache_bytes(self) -> int:
        total = self._ref_frame.numel() * self._ref_frame.element_size()
        outputs = []  # every spatial output has an NCHW mirror (Note [Output mirrors]), built or about to be
        fx.node.map_arg(self.output_node.args[0], outputs.append)
        total += sum(math.prod(self.values[n].shape) * self.values[n].buf.element_size()
                     for n in set(outputs) if isinstance(self.values[n], RowCache))
        for node, v in self.values.items():
            if isinstance(v, RowCache):
                total += v.nbytes
            elif self.kinds[node] == "rows" and v is not None:  # None: not cached (a dense tail's inside)
                total += v.numel() * v.element_size()
        return total

    def outputs(self):
        """The model's output structure, spatial values as NCHW-contiguous mirrors of their caches.

        Note [Output mirrors]: callers get NCHW-contiguous copies, like the dense model's output. Converting
        a channels-last cache to NCHW is a transposing copy (for a 21 x 576 x 768 segmentation map ~25 ms,
        most of a frame); a mirror kept in NCHW and refreshed only inside the output's changed box turns
        the caller's copy into a plain memcpy. Mirrors are refreshed whole after a dense pass (in their own
        buffers: a fresh 37 MB tensor costs ~10 ms of page faults here) and left alone on unchanged frames.
        """

        def one(n):
            v = self.values[n]
            if not isinstance(v, RowCache):
                return v
            mirror = self._mirrors.get(n)
            if n in self._stale_rows:
                return mirror  # computed straight into the mirror this frame or earlier (Note [Direct outputs])
            if mirror is None or n in self._stale_mirrors:
                if mirror is None:
                    mirror = self._mirrors[n] = torch.empty(v.shape, dtype=v.buf.dtype)
                v.copy_box_to(mirror, (0, v.shape[2], 0, v.shape[3]))
                self._stale_mirrors.discard(n)
            elif n in self.masks and (box := self.box(n)) is not None:
                v.copy_box_to(mirror, box)
            return mirror

        return fx.node.map_arg(self.output_node.args[0], one)

    def _tail_text(self) -> str:
        """How a tail layer reads in the coverage report: the tail and the engine running it."""
        return f"; dense tail after {self.tail.root} on {self.tail_engine}{_engine_times_text(self.tail_engine_times)}"

    def coverage(self) -> CoverageReport:
        entries = [CoverageEntry(self.placeholder.name, "input", "input", "reference frame")]
        for step in self.steps:
            entries.append(
                CoverageEntry(
                    step.name,
                    step.op,
                    step.rule.name,
                    step.config.get("label", step.config.get("lowering", "rows" if step.kind == "rows" else "positions"))
                    + _switch_text(self.switches.get(step.node))
                    + ("; all changed: straight to the output" if step.node in self._direct else "")
                    + (self._tail_text() if self.tail and step.node in self.tail.nodes else ""),
                    step.fallback_reason,
                )
            )
        return CoverageReport(entries)


def _engine_times_text(times: dict | None) -> str:
    """``tail_engine="auto"``'s measurement as report text (``openvino 88.1 ms, torch 100.4 ms``)."""
    ranked = sorted((times or {}).items(), key=lambda kv: kv[1])
    return "" if not ranked else " (measured: " + ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in ranked) + ")"


def _switch_text(switch: float | None) -> str:
    """How a layer's dense switch reads in the coverage report."""
    if switch is None:
        return ""
    return ", never dense" if switch >= 1.0 else f", dense above {switch:.0%}"


def _count_ones(mask: torch.Tensor) -> list[int]:
    """Per stream, the number of ones in a 0/1 mask. A float32 sum: exact up to 2^24 positions in any mask
    dtype (a bfloat16 sum is not, above 256), and 20x faster than ``count_nonzero`` (0.02 vs 0.43 ms)."""
    dims = tuple(range(1, mask.dim()))  # no flatten: of a box crop that is a copy (6 vs 3.5 us)
    return [int(c) for c in mask.sum(dims, dtype=torch.float32).tolist()]


def _mutable(value):
    """torch.fx's immutable_dict / immutable_list as plain dict / list (callers edit outputs in place,
    e.g. ``out["out"] = post(out["out"])``, as they can the model's own)."""
    if isinstance(value, dict):
        return {k: _mutable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_mutable(v) for v in value]
    if isinstance(value, tuple) and not hasattr(value, "_fields"):
        return tuple(_mutable(v) for v in value)
    return value


def _raise_non_finite(x: torch.Tensor) -> None:
    bad = int((~torch.isfinite(x)).sum())
    raise InputError(
        f"the frame contains {bad} NaN or infinite values. Hint: check the decoder / normalisation; "
        "the stream state was left unchanged."
    )


class SparseModule(nn.Module):
    """A model that recomputes, per stream, only what a frame's changes can reach.

    Made by :func:`fxsparse.transform`. Call it with ``[B, C, H, W]`` frames;
    batch row ``b`` is stream ``b`` and keeps its own caches. It returns what
    the original model returns.
    """

    def __init__(self, graph_module: fx.GraphModule, *, input_threshold: float = 0.0, tile_size: int = 8,
                 dense_switch: float | str = 0.5, in_channels: int | None = None, input_policy=None,
                 frame_dtype: torch.dtype | None = None, fuse_chains: bool = False, copy_outputs: bool = True,
                 dense_tail: bool = True, tail_engine: str = "torch"):
        super().__init__()
        self.graph_module = graph_module
        self.input_threshold = float(input_threshold)
        self.tile_size = int(tile_size)
        self.dense_switch = dense_switch
        self.fuse_chains = fuse_chains
        self.dense_tail = dense_tail  # Note [Dense tails]
        self.tail_engine = tail_engine  # Note [Tail engines]
        self.copy_outputs = copy_outputs  # False: callers get the output buffers themselves (transform's doc)
        self._output_pool = OutputPool()
        self._packed_weights: dict = {}  # Note [Packed conv weights]: per weight and input shape, for this module's state
        self.input_policy = input_policy
        self.in_channels = in_channels
        self._engine: Engine | None = None
        self._full_streams: torch.Tensor | None = None
        self.stats: FrameStats | None = None
        # Note [Dense frames]: a frame where more than dense_switch of every stream's pixels changed (a
        # cut, a light switched on, reset() of every stream, sensor noise on a small frame) has most of
        # the graph as its cone; one dense pass that refills the caches skips every mask and per-layer
        # step (mobilenet_v2 576x768 fully changed: 1.45x -> 1.2x of dense; PNet on carphone, 73% of
        # the pixels changing per frame: see docs/performance.md). Off with layer thresholds: a gate must
        # compare against what it last let through.
        self.dense_frames = True
        dtypes = {p.dtype for p in graph_module.buffers()} | {p.dtype for p in graph_module.parameters()}
        self._dtype = dtypes.pop() if len(dtypes) == 1 else torch.float32
        # frames of this dtype are accepted too: converted to the compute dtype, outputs converted back
        # (transform(dtype=torch.bfloat16) computes in bfloat16 for float32 callers)
        self._frame_dtype = frame_dtype or self._dtype

    # -- public API ------------------------------------------------------------------

    def forward(self, x: torch.Tensor):
        with torch.inference_mode(), packed_conv_weights(self._packed_weights):
            result = self._step(x)
        # Copies made outside inference mode are ordinary tensors: callers may modify them in place
        # or use them with autograd, as they can the dense model's output. Floating outputs come back in
        # the frame's dtype (they differ when transform(dtype=...) set a compute dtype).
        out_dtype = x.dtype if x.is_floating_point() else self._frame_dtype  # integer frames: the model's dtype
        slots = itertools.count()

        def copy(v):
            if not isinstance(v, torch.Tensor):
                return v
            dtype = out_dtype if v.is_floating_point() else v.dtype
            if not self.copy_outputs and dtype == v.dtype:
                return v  # the buffer itself: updated by the next call; callers must not modify it
            return self._output_pool.copy(next(slots), v, dtype)  # Note [Recycled outputs]

        with torch.no_grad():
            return _mutable(fx.node.map_aggregate(result, copy))

    def _step(self, x: torch.Tensor):
        """Process one frame; return the output structure *without* copying (the output mirrors and row
        caches, Note [Output mirrors]): ``forward`` makes the caller's copies."""
        self._check_frame(x)
        if x.dtype != self._dtype and x.is_floating_point():  # integer frames: the model converts them
            x = x.to(self._dtype)
        if self._engine is None:
            self._engine = Engine(self.graph_module, x, self.tile_size, self.dense_switch, self.fuse_chains,
                                  self.dense_tail, self.tail_engine)
            self._full_streams = None
            self.stats = self._engine.dense_stats()
            return self._engine.outputs()
        engine = self._engine
        mask = engine.input_mask(x, self.input_threshold, self._full_streams, self.input_policy,
                                 last_unchanged=self.stats is None or self.stats.macs_executed == 0)
        self._full_streams = None
        if mask is None:
            engine.masks = {}
            self.stats = engine.unchanged_stats()
            return engine.outputs()  # the mirrors as they are (Note [Output mirrors])
        known = engine.known_counts(mask)  # counted by the one-pass difference: no pass over the mask
        shares = mask.flatten(1).mean(1, dtype=torch.float32) if known is None else \
            torch.tensor(known, dtype=torch.float32) / (mask.shape[2] * mask.shape[3])
        if self.dense_frames and engine.dense_switch <= 1.0 and bool((shares > engine.dense_switch).all()):
            try:
                self.stats = engine.dense_frame(x, mask, self.input_threshold)
            except BaseException:
                self._engine = None  # its caches were released for the pass: the next frame starts over
                raise
        else:
            try:
                self.stats = engine.step_frame(x, mask, self.input_threshold)
            except BaseException:
                # the reference and the layers before the failure hold this frame, the rest the last one:
                # the next frame would compute against a mix. Start the streams over instead.
                self._engine = None
                raise
        return engine.outputs()

    def reset(self, streams=None) -> None:
        """Forget the state of all streams, or of the given batch indices.

        A reset stream runs fully on its next frame (the first frame after a
        full reset runs the dense model). Resetting everything also allows a
        new batch size or frame size.
        """
        if streams is None or self._engine is None:
            self._engine = None
            self._full_streams = None
            self._packed_weights.clear()  # packed for the old shapes (a new frame size packs anew)
            return
        idx = torch.as_tensor(streams, dtype=torch.long).view(-1)
        batch = self._engine.batch
        if len(idx) and (idx.min() < 0 or idx.max() >= batch):
            raise InputError(
                f"reset(streams={list(idx.tolist())}): this module holds {batch} streams (indices 0..{batch - 1}). "
                "Hint: pass batch indices of the frames you feed, or reset() to forget every stream."
            )
        prev = self._full_streams if self._full_streams is not None else idx[:0]
        self._full_streams = torch.unique(torch.cat([prev, idx]))

    def coverage(self, example: torch.Tensor | None = None) -> CoverageReport:
        """Every graph node with its change rule, and each dense fallback with its reason.

        Rules depend on shapes, so before the first frame a small example frame
        (or ``example``) is traced through a throwaway engine; no state changes.
        """
        if self._engine is not None and example is None:
            return self._engine.coverage()
        if example is None:
            example = torch.zeros(1, self.in_channels or 3, 224, 224, dtype=self._dtype)
        with torch.inference_mode():
            return Engine(self.graph_module, example, self.tile_size, self.dense_switch, self.fuse_chains,
                          self.dense_tail).coverage()

    @torch.inference_mode()
    def estimate(self, mask: torch.Tensor) -> FrameStats:
        """Stats of a hypothetical frame whose changed pixels are ``mask`` ``[B, 1, H, W]``.

        Only masks are propagated (cheap); nothing is computed and the streams' caches stay as they
        are. ``macs_cone`` is then what an exact run would have to compute (``macs_executed`` is 0).
        Needs a first frame (it fixes the shapes).
        """
        engine = self._engine
        if engine is None:
            raise InputError("estimate() needs the streams' first frame. Hint: call the module on a frame first.")
        expected = (engine.batch, 1) + engine.frame_shape[1:]
        if tuple(mask.shape) != expected:
            raise InputError(f"mask of shape {tuple(mask.shape)}; expected {expected} ([B, 1, H, W] of the streams).")
        return engine.step_frame(None, mask.float(), self.input_threshold)

    def change_masks(self) -> dict[str, torch.Tensor]:
        """The change mask of every node in the last call (``[B, 1, H, W]`` or ``[B, 1]``), by node name.

        Useful to see how a change spreads through the network; empty before the
        second frame and after an unchanged frame.
        """
        if self._engine is None:
            return {}
        masks = {**self._engine.masks, **self._engine.tail_masks()}  # Note [Dense tails]
        return {  # copies: mask buffers are reused by the next frame
            self._engine.step_name(node): m.clone()
            for node, m in masks.items()
            if isinstance(m, torch.Tensor)
        }

    @property
    def num_streams(self) -> int:
        return 0 if self._engine is None else self._engine.batch

    # -- input contract --------------------------------------------------------------

    @functools.cached_property
    def _converts_input(self) -> bool:
        """Does every use of the frame convert it to a floating dtype first (Note [Integer frames])?"""
        placeholder = next(n for n in self.graph_module.graph.nodes if n.op == "placeholder")
        users = list(placeholder.users)
        return bool(users) and all(u.target is ops.cast and u.args[1].is_floating_point for u in users)

    def _check_frame(self, x) -> None:
        """Reject a bad frame before any state changes (Contracts: bad input)."""
        if not isinstance(x, torch.Tensor):
            raise InputTypeError(
                f"expected a torch.Tensor frame batch [B, C, H, W], got {type(x).__name__}. "
                "Hint: convert with torch.as_tensor(frame).permute(2, 0, 1)[None].float()."
            )
        integer = not x.is_floating_point() and not x.is_complex() and x.dtype != torch.bool
        if integer and not self._converts_input:
            raise InputTypeError(
                f"expected a floating-point frame, got dtype {x.dtype}, and the model does not convert its input. "
                f"Hint: convert with x.to({self._dtype}) (and scale pixels as the model expects, e.g. / 255), or "
                "feed the integer frames to nn.Sequential(fxsparse.PixelNormalize(mean, std), model)."
            )
        if not integer and not x.is_floating_point():
            raise InputTypeError(f"expected a floating-point or integer frame, got dtype {x.dtype}.")
        if not integer and x.dtype not in (self._dtype, self._frame_dtype):
            raise InputTypeError(
                f"frame dtype {x.dtype} differs from the model's {self._frame_dtype}. Hint: x.to({self._frame_dtype})."
            )
        if x.dim() != 4:
            raise InputError(
                f"expected a 4-D batch [B, C, H, W] (one frame per stream), got shape {tuple(x.shape)}. "
                "Hint: add the batch dim with x.unsqueeze(0)."
            )
        if self.in_channels is not None and x.shape[1] != self.in_channels:
            raise InputError(
                f"the model takes {self.in_channels} input channels, the frame has {x.shape[1]} (shape {tuple(x.shape)}). "
                "Hint: check the channel order, [B, C, H, W], not [B, H, W, C]."
            )
        engine = self._engine
        if engine is not None:
            held = engine._ref_frame.dtype
            if integer != (not held.is_floating_point) or (integer and x.dtype != held):
                raise InputTypeError(
                    f"frame dtype {x.dtype}, but the streams were started with {held} frames. "
                    "Hint: keep one frame type per module, or reset() to start the streams over."
                )
            if x.shape[0] != engine.batch:
                raise InputError(
                    f"batch of {x.shape[0]} frames, but this module holds {engine.batch} streams. "
                    "Hint: feed one frame per stream each call, or reset() to start over with a new set of streams."
                )
            if tuple(x.shape[1:]) != engine.frame_shape:
                raise InputError(
                    f"frame size {tuple(x.shape[1:])} differs from the streams' {engine.frame_shape}. "
                    "Hint: resize frames to the stream's size, or reset() to start the streams over at the new size."
                )
        if engine is None and not integer and not bool(torch.isfinite(x).all()):
            _raise_non_finite(x)  # later frames are checked on their difference (Engine.input_mask)


__all__ = ["SparseModule", "Engine", "Step"]
