import os

import pytest
import torch
from hypothesis import HealthCheck, settings

torch.set_num_threads(int(os.environ.get("FXSPARSE_TEST_THREADS", "2")))

settings.register_profile(
    "default", max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
settings.register_profile(
    "thorough", max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


def assert_close_scaled(actual, expected, where=""):
    """Exactness contract: |actual - expected| <= 1e-4 * max|expected| + 1e-6, elementwise."""
    if isinstance(expected, dict):
        assert isinstance(actual, dict) and actual.keys() == expected.keys(), where
        for k in expected:
            assert_close_scaled(actual[k], expected[k], f"{where}[{k!r}]")
        return
    if isinstance(expected, (tuple, list)):
        assert type(actual) is type(expected) and len(actual) == len(expected), where
        for i, (a, e) in enumerate(zip(actual, expected)):
            assert_close_scaled(a, e, f"{where}[{i}]")
        return
    assert actual.shape == expected.shape, f"{where}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    atol = 1e-4 * float(expected.abs().max()) + 1e-6
    err = float((actual - expected).abs().max()) if expected.numel() else 0.0
    assert err <= atol, f"{where}: max abs error {err:.3g} > atol {atol:.3g}"


@pytest.fixture
def close():
    return assert_close_scaled


def moving_object_frames(batch, h, w, frames, seed=0):
    """A static random background with a small square moving per stream (different paths)."""
    g = torch.Generator().manual_seed(seed)
    background = torch.rand(batch, 3, h, w, generator=g)
    size = max(2, min(h, w) // 10)
    out = []
    for t in range(frames):
        x = background.clone()
        for b in range(batch):
            y0 = (5 + 3 * t * (b + 1)) % (h - size)
            x0 = (7 + 5 * t + 11 * b) % (w - size)
            x[b, :, y0 : y0 + size, x0 : x0 + size] = torch.tensor([1.0, 0.2, 0.1]).view(3, 1, 1)
        out.append(x)
    return out


def with_blob(x, stream, y0, x0, value=1.0):
    """A copy of ``x`` with a 3x3 square of stream ``stream`` at (y0, x0) raised by ``value``."""
    x = x.clone()
    x[stream, :, y0 : y0 + 3, x0 : x0 + 3] += value
    return x
