"""Dense tails: the layers a global mean makes change everywhere, run as one dense graph.

Note [Dense tails]: in exact mode a global mean's vector changes whenever anything in its stream's input
did, and a layer that broadcasts it over a map (a squeeze-excite scale, LR-ASPP's gate, DeepLabV3's pooled
branch) then changes at every position; so does everything after it. MobileNetV3's first squeeze-excite
block sits at stride 8, so in its segmenters 97% (DeepLabV3) and 87% (LR-ASPP) of the MACs lie past it. The
layer-by-layer walk ran each of those layers with its dense op, wrote the result into a cache that no later
frame reads (the next change recomputes it whole again), and propagated a full mask: LR-ASPP at 576x768, 1%
changed (layer_times), 56.2 ms executing its 71 tail layers plus 2.6 ms of masks, against 46.3 ms for the
same dense ops timed alone (per layer 1.1-3.5x: a cold cache written instead of the allocator's warm block).
The tail is every node downstream of a global mean; it runs once per frame as a captured graph (generated
code, no per-node dispatch) on the changed streams, its intermediates freed as the dense model frees them,
and only the values read from outside it are cached: the model's outputs and the inputs of direct outputs
(Note [Direct outputs]), which run after it. LR-ASPP's tail then took 33.1 ms, and its caches at 288x384
fell from 149 to 83 MiB.

The tail runs whenever a stream's input to it changed, without asking whether the change reached the
global mean: a conv with stride and no overlap can skip a changed position, and then the walk would have
recomputed less. The result is the same (a dense recompute from up-to-date inputs); only the work differs,
and stats count the tail as changed in those streams. Where a node outside the tail reads it (a gate, an
inexact rule, a non-global reduction of it), or it holds no map wider than 1x1 (a classifier's pooled head),
there is no tail and the walk runs as before.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.fx as fx


@dataclass
class Tail:
    steps: list  # runtime.Step, in graph order
    nodes: set  # their fx nodes
    inputs: list  # nodes outside the tail that it reads: the arguments of ``module``
    kept: list  # tail nodes read from outside it (outputs, direct outputs' inputs): ``module``'s results
    after: list  # the steps outside the tail that read it (direct outputs), run after it
    module: fx.GraphModule  # inputs -> kept values, densely
    root: str  # the name of the first global mean it starts from (for reports)


def find_tail(gm: fx.GraphModule, steps: list, kinds: dict, direct: dict, output_node: fx.Node) -> Tail | None:
    """The dense tail of the compiled ``steps`` (Note [Dense tails]), None where there is none."""
    roots = {s.node: s for s in steps if s.rule is not None and s.rule.name == "global_mean"}
    nodes, members, root = set(), [], None
    for step in steps:
        n = step.node
        reads = [i for i in n.all_input_nodes if i in nodes or i in roots]
        if not reads or n in direct:
            continue
        if not step.rule.exact or kinds[n] not in ("spatial", "rows"):
            return None  # a gate or an op the walk must run as it is reads what the tail would compute
        root = root or next((roots[i].name for i in reads if i in roots), None)
        nodes.add(n)
        members.append(step)
    if not any(s.kind == "spatial" and s.shape is not None and s.shape[2] * s.shape[3] > 1 for s in members):
        return None  # nothing broadcast back onto a map: a pooled head, cheap in the walk
    kept = []
    for step in members:
        outside = [u for u in step.node.users if u not in nodes and kinds.get(u) != "const"]  # not shape reads
        if any(u is not output_node and u not in direct for u in outside):
            return None
        if outside:
            kept.append(step.node)
    after = [s for s in steps if s.node in direct and any(i in nodes for i in s.node.all_input_nodes)]
    computed = nodes | _shape_reads(members, kinds)
    body = [n for n in gm.graph.nodes if n in computed]  # graph order
    inputs = []
    for n in body:
        for i in n.all_input_nodes:
            if i not in computed and i not in inputs:
                inputs.append(i)
    return Tail(members, nodes, inputs, kept, after, _module(gm, body, inputs, kept), root or "")


def _shape_reads(members: list, kinds: dict) -> set:
    """The constant nodes the tail reads that were computed from activations (``x.size(0)``, ``x.shape[-2:]``):
    copied into the tail's graph, so that they read this call's values. The tail may run on some of the
    streams, and a batch size kept from the first frame would not fit them (``x.view(x.size(0), -1)``)."""
    pulled = set()

    def derived(n) -> bool:  # computed from an activation (directly or through other such constants)
        if n in pulled:
            return True
        if kinds.get(n) != "const" or n.op not in ("call_function", "call_method"):
            return False
        flags = [kinds.get(i) != "const" or derived(i) for i in n.all_input_nodes]  # visits every source
        if any(flags):
            pulled.add(n)
        return any(flags)

    for step in members:
        for i in step.node.all_input_nodes:
            derived(i)
    return pulled


def share_of_macs(tail: Tail, steps: list, positions_of) -> float:
    """The tail's share of the model's dense multiply-adds: what exact mode recomputes on every changed frame."""
    def macs(group):
        return sum(s.macs_per_position * positions_of(s) for s in group)

    return macs(tail.steps) / max(1, macs(steps))


def _module(gm: fx.GraphModule, body: list, inputs: list, kept: list) -> fx.GraphModule:
    """A module computing ``kept`` from ``inputs`` through the ``body`` nodes (graph order), as generated code."""
    graph, env = fx.Graph(), {}
    for i in inputs:
        env[i] = graph.placeholder(i.name)
    for n in body:
        env[n] = graph.node_copy(n, lambda a: env[a])
    graph.output(tuple(env[k] for k in kept))
    module = fx.GraphModule(gm, graph)
    module.recompile()
    return module
