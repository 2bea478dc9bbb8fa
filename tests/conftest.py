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
