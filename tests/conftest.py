"""Shared test settings: Hypothesis profiles and the per-device parametrisation.

Every op's tests run once per device: cpu, gpu-sim (the GPU code on the CPU) and gpu. GPU runs
are reported as *skipped with the reason* on a machine without a usable CUDA GPU, gpu-sim runs
on a machine without a C++ compiler; never silently absent. Every gpu-sim launch in the tests
runs twice, in two block and thread orders, and must give bitwise-equal outputs
(``MINIGNN_SIM_CHECK=1``, see minignn/cuda/sim.py).
"""
import os

os.environ.setdefault("MINIGNN_SIM_CHECK", "1")

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

from minignn import backend

# JIT compiles break per-example deadlines; "ci" keeps the suite well inside its time budget.
settings.register_profile("ci", deadline=None, max_examples=25, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("dev", deadline=None, max_examples=60,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
# the NUMBA_DISABLE_JIT=1 subprocess of test_ops.py: a few examples of every op in plain Python
settings.register_profile("nojit", deadline=None, max_examples=12, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("thorough", deadline=None, max_examples=400,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

_GPU_SKIP = pytest.mark.skipif(not backend.gpu_available(),
                               reason=f"no usable GPU: {backend.gpu_unavailable_reason() or 'n/a'}")

_SIM_SKIP = pytest.mark.skipif(bool(backend.sim_unavailable_reason()),
                               reason=f"no gpu-sim: {backend.sim_unavailable_reason() or 'n/a'}")

DEVICES = [pytest.param("cpu", id="cpu"), pytest.param("gpu-sim", id="gpu-sim", marks=[_SIM_SKIP]),
           pytest.param("gpu", id="gpu", marks=[pytest.mark.gpu, _GPU_SKIP])]


@pytest.fixture(params=DEVICES)
def device(request):
    """'cpu', 'gpu-sim' or 'gpu' (skipped with the reason when the machine cannot run it)."""
    return request.param


@pytest.fixture
def xp(device):
    return backend.xp_for(device)


gpu_only = _GPU_SKIP


@pytest.fixture(autouse=True)
def _seed_library_rng():
    """Every test starts from the same library-wide generator, so no result depends on which
    tests ran before it (or in which order)."""
    from minignn.init import manual_seed
    manual_seed(0)
    yield
