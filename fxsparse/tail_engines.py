"""Another dense engine for a dense tail: OpenVINO.

Note [Tail engines]: a dense tail (Note [Dense tails]) is one dense graph with a few inputs, run whole
whenever its inputs changed: the one place where fxsparse's work is exactly a dense model's, so the fastest
dense engine can run it. ``transform(tail_engine="openvino")`` exports the tail's graph (weights bound as
constants) through ONNX and compiles it with OpenVINO's CPU plugin in float32: the same values as PyTorch to
float rounding. ``"openvino-bf16"`` lets OpenVINO compute in bfloat16 where the CPU has it (AMX /
AVX512-BF16; its default there): a bounded-error mode, like ``transform(dtype=torch.bfloat16)``, for the tail
only (the layers before it stay exact float32). Measured on DeepLabV3's, LR-ASPP's and MobileNetV3's tails at
576x768 (docs/performance.md, "Ninth session"): OpenVINO f32 0.79-0.89x of PyTorch's time, bf16 0.39-0.58x;
ONNX Runtime was no faster than PyTorch, and torch.compile neither.

The fastest engine depends on the model and the size: OpenVINO's float32 tail of DeepLabV3 was 0.89x of
PyTorch's time at 576x768 and slower at 720x1280 (316.8 vs 261.5 ms per frame, two runs). ``"auto"`` therefore
measures: it times PyTorch's graph and OpenVINO's float32 compilation (where installed) on the first frame's
inputs (medians of 3 after a warm-up) and keeps the faster; exact either way. ``coverage()`` names the choice
and the times.

The tail may run on some of the streams (those whose inputs changed): a model is compiled per batch size, on
first use. Maps are handed over as NHWC, which a channels-last cache already is (the exported graph turns them
back to NCHW as its first op, which OpenVINO folds into its own layout): against NCHW copies, 0.84x / 0.93x /
0.97x / 0.88x of the time on the tails of efficientnet_b0 / LR-ASPP / DeepLabV3 / mobilenet_v3_large at 576x768
(one process, 9 alternating calls, identical outputs). Outputs come back as arrays OpenVINO does not reuse,
which the engine copies into its caches.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
import warnings

import torch
from torch import nn

from .timing import median_seconds

# name -> OpenVINO precision ("auto": PyTorch or OpenVINO f32, whichever measured faster)
TAIL_ENGINES = {"torch": None, "openvino": "f32", "openvino-bf16": "bf16", "auto": None}


def check_tail_engine(name: str) -> None:
    """Raise a clear error for an unknown engine or a missing package (at ``transform`` time)."""
    if name not in TAIL_ENGINES:
        raise ValueError(f"tail_engine={name!r}: expected one of {sorted(TAIL_ENGINES)}")
    missing = _missing_packages() if TAIL_ENGINES[name] else []
    if missing:
        raise ImportError(f"tail_engine={name!r} needs {' and '.join(missing)}. Hint: pip install 'fxsparse[openvino]'")


class _Bound(nn.Module):
    """The tail's module with its constant inputs bound: what the export sees takes the varying inputs only,
    maps as NHWC (``nhwc``: their positions among them), turned back to NCHW as its first op."""

    def __init__(self, module, args: list, varying: list[int], nhwc: set):
        super().__init__()
        self.module, self.args, self.varying, self.nhwc = module, args, varying, nhwc

    def forward(self, *xs):
        args = list(self.args)
        for k, (i, x) in enumerate(zip(self.varying, xs)):
            args[i] = x.permute(0, 3, 1, 2) if k in self.nhwc else x
        return self.module(*args)


class OpenVinoTail:
    """Runs ``tail.module`` (called with every input, as the engine calls it) through OpenVINO."""

    def __init__(self, tail, kinds: dict, args: list, precision: str):
        import openvino

        self.varying = [i for i, node in enumerate(tail.inputs) if kinds[node] != "const"]
        # maps go over as NHWC: a channels-last cache is that already, so no transposing copy per call
        self.nhwc = {k for k, i in enumerate(self.varying) if kinds[tail.inputs[i]] == "spatial"}
        example = tuple(self._as_passed(k, args[i]) for k, i in enumerate(self.varying))
        names = [f"x{k}" for k in range(len(example))]
        self._core = openvino.Core()
        folder = tempfile.mkdtemp(prefix="fxsparse-tail-")
        try:
            path = os.path.join(folder, "tail.onnx")
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")  # the exporter's deprecation and tracer notes
                torch.onnx.export(_Bound(tail.module, list(args), self.varying, self.nhwc), example, path,
                                  dynamo=False, opset_version=17, input_names=names,
                                  dynamic_axes={name: {0: "streams"} for name in names})
            self._graph = self._core.read_model(path)  # held in memory: the file goes
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        self._config = {"INFERENCE_PRECISION_HINT": precision, "INFERENCE_NUM_THREADS": torch.get_num_threads()}
        self._compiled = {}  # batch size -> compiled model

    def _model(self, batch: int):
        compiled = self._compiled.get(batch)
        if compiled is None:
            model = self._graph.clone()
            model.reshape({i: [batch, *p.get_partial_shape()[1:]] for i, p in enumerate(model.inputs)})
            compiled = self._compiled[batch] = self._core.compile_model(model, "CPU", self._config)
        return compiled

    def _as_passed(self, k: int, x: torch.Tensor) -> torch.Tensor:
        return (x.permute(0, 2, 3, 1) if k in self.nhwc else x).contiguous()

    def __call__(self, *args):
        inputs = [self._as_passed(k, args[i]).numpy() for k, i in enumerate(self.varying)]
        results = self._model(inputs[0].shape[0])(inputs, share_inputs=True)
        return tuple(torch.from_numpy(results[k]) for k in range(len(results)))


def _missing_packages() -> list[str]:
    """What an OpenVINO tail needs and is not installed (onnx: torch's exporter writes the graph with it)."""
    return [p for p in ("openvino", "onnx") if importlib.util.find_spec(p) is None]


def compile_tail(tail, kinds: dict, args: list, name: str) -> tuple:
    """(a callable running ``tail`` like ``tail.module``, the engine chosen, {engine: measured seconds} or None)
    (Note [Tail engines]); ``args``: the tail's current inputs, which ``"auto"`` times the candidates on."""
    if name == "auto":
        candidates = {"torch": tail.module}
        if not _missing_packages():
            candidates["openvino"] = OpenVinoTail(tail, kinds, args, "f32")
        if len(candidates) == 1:
            return tail.module, "torch", None
        times = {engine: median_seconds(lambda run=run: run(*args)) for engine, run in candidates.items()}
        chosen = min(times, key=times.get)
        return candidates[chosen], chosen, times
    precision = TAIL_ENGINES[name]
    return (tail.module if precision is None else OpenVinoTail(tail, kinds, args, precision)), name, None
