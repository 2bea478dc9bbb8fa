"""pytest-benchmark: sparse vs dense on resnet50 / mobilenet_v2 at 576x768 (``tox -e bench``).

Each sparse benchmark round is a fresh frame of the moving-object scene (the
state advances); the dense benchmark runs the best dense setup on the same frames.
"""

import itertools

import pytest
import torch

import fxsparse  # noqa: E402
from fxsparse.bench import best_dense, synthetic_frames  # noqa: E402

torchvision = pytest.importorskip("torchvision")
SIZE = (576, 768)


@pytest.fixture(scope="module", params=["resnet50", "mobilenet_v2"])
def model(request):
    torch.manual_seed(0)
    return request.param, getattr(torchvision.models, request.param)().eval()


@pytest.mark.parametrize("fraction", [0.01, 0.05, 0.2])
def test_sparse(benchmark, model, fraction):
    name, m = model
    frames = synthetic_frames(*SIZE, fraction, 12)
    sm = fxsparse.transform(m)
    sm(frames[0])
    cycle = itertools.cycle(frames[1:])
    benchmark.group = f"{name} {fraction:.0%}"
    with torch.inference_mode():
        benchmark.pedantic(lambda: sm(next(cycle)), rounds=8, warmup_rounds=1)
    benchmark.extra_info["cone_speedup"] = sm.stats.macs_dense / max(1, sm.stats.macs_cone)


@pytest.mark.parametrize("fraction", [0.01, 0.05, 0.2])
def test_dense(benchmark, model, fraction):
    name, m = model
    frames = synthetic_frames(*SIZE, fraction, 4)
    with torch.inference_mode():
        label, dense = best_dense(m, frames[0])
        cycle = itertools.cycle(frames)
        benchmark.group = f"{name} {fraction:.0%}"
        benchmark.extra_info["baseline"] = label
        benchmark.pedantic(lambda: dense(next(cycle)), rounds=5, warmup_rounds=1)


def test_sparse_single_conv_micro(benchmark):
    """Per-layer micro benchmark: one 3x3 conv, 5% of positions changed."""
    conv = torch.nn.Conv2d(128, 128, 3, padding=1).eval()
    frames = synthetic_frames(72, 96, 0.05, 10)
    frames = [f.repeat(1, 43, 1, 1)[:, :128] for f in frames]
    sm = fxsparse.transform(conv)
    sm(frames[0])
    cycle = itertools.cycle(frames[1:])
    with torch.inference_mode():
        benchmark.pedantic(lambda: sm(next(cycle)), rounds=10, warmup_rounds=1)
