"""Shared test configuration.

* Hypothesis: no deadline (a wall-clock assert on a noisy shared machine) and a bounded number
  of examples. ``HYPOTHESIS_PROFILE=thorough`` runs many more. In CI (``CI`` set) the draws are
  deterministic for a commit but differ between commits: the seed is derived from the commit
  hash (``git rev-parse HEAD``; 0 outside a git checkout), printed in the header, and
  ``pytest --hypothesis-seed=N`` replays a run. (A derandomized profile would replay the same
  examples on every commit forever.)
* :func:`require`: optional dependencies of cross-check tests (torch, Pillow). Locally a missing
  one skips; in CI it FAILS, so a broken install cannot pass as "skipped". Set
  ``MINIDL_TEST_NO_TORCH=1`` to run without the torch cross-checks knowingly.
* ``device`` fixture: every test that takes it runs on "cpu" and on "cuda"; the cuda variant
  skips cleanly when CuPy or a GPU is missing, and runs for real when one is there.
"""
import hashlib
import importlib
import os
import subprocess

import numpy as np
import pytest
from hypothesis import HealthCheck, settings


def in_ci():
    """True when the ``CI`` environment variable is set to anything but "", 0, false or no."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


settings.register_profile(
    "ci", deadline=None, max_examples=20, database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile(
    "dev", deadline=None, max_examples=20,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile(
    "thorough", deadline=None, max_examples=300,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if in_ci() else "dev"))


def _commit_seed():
    """A seed from the checked-out commit (0 when this is not a git checkout)."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=os.path.dirname(__file__),
                              capture_output=True, text=True, timeout=10, check=False).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        head = ""
    return int(hashlib.sha256(head.encode()).hexdigest()[:8], 16) if head else 0


_SEED = {}


@pytest.hookimpl(trylast=True)
def pytest_configure(config):
    # after Hypothesis' own plugin has read --hypothesis-seed: an explicit seed wins
    if settings.get_current_profile_name() == "ci" and \
            config.getoption("hypothesis_seed", None) is None:
        from hypothesis import core
        _SEED["ci"] = core.global_force_seed = _commit_seed()


def pytest_report_header(config):
    if "ci" in _SEED:
        return (f"hypothesis: profile ci, seed {_SEED['ci']} from the commit "
                f"(replay: --hypothesis-seed={_SEED['ci']})")
    return None


def require(module, why="cross-check"):
    """Import and return ``module`` (e.g. "torch", "PIL.Image"); when it is missing, skip the
    test locally but FAIL in CI, where a missing dependency means a broken install. torch is
    skipped in CI too when ``MINIDL_TEST_NO_TORCH`` is set (an explicit choice, not an
    accident)."""
    if module.split(".")[0] == "torch" and \
            os.environ.get("MINIDL_TEST_NO_TORCH", "") not in ("", "0"):
        pytest.skip("torch cross-check disabled (MINIDL_TEST_NO_TORCH)")
    try:
        return importlib.import_module(module)
    except ImportError as e:
        msg = f"{module} is needed for this {why}: {type(e).__name__}: {e}"
        if in_ci():
            pytest.fail(f"CI: {msg} (install it; MINIDL_TEST_NO_TORCH=1 opts out of torch)",
                        pytrace=False)
        pytest.skip(msg)


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


EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")


def import_example(name):
    """Import ``examples/<name>.py`` as a module (the examples import their ``_common``
    siblings, so the folder is on sys.path while it loads)."""
    import sys
    sys.path.insert(0, EXAMPLES)
    try:
        return __import__(name)
    finally:
        sys.path.remove(EXAMPLES)
