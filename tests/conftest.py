"""Shared test configuration.

* Hypothesis: no deadline (a wall-clock assert on a noisy shared machine) and a bounded number
  of examples. ``HYPOTHESIS_PROFILE=thorough`` runs many more.
* ``device`` fixture: every test that takes it runs on "cpu" and on "cuda"; the cuda variant
  skips cleanly when CuPy or a GPU is missing, and runs for real when one is there.
"""
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci", deadline=None, max_examples=20, derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile(
    "dev", deadline=None, max_examples=20,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile(
    "thorough", deadline=None, max_examples=300,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))


def _cuda_ok():
    from minidl import backend
    return backend.is_available()


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def device(request):
    """Parametrizes a test over devices; "cuda" skips without CuPy and a GPU."""
    if request.param == "cuda" and not _cuda_ok():
        pytest.skip("CUDA not available (needs CuPy and a GPU)")
    return request.param


@pytest.fixture
def rng():
    return np.random.default_rng(0)
