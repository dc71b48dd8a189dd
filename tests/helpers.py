"""Helpers shared by the tests (importable as ``from helpers import ...``)."""
import numpy as np
import pytest
from hypothesis import HealthCheck, settings, strategies as st

from minignn import backend
from minignn.ops import OPS

#: for @given tests that take the ``device`` fixture (a plain string, safe to reuse across examples)
device_ok = settings(suppress_health_check=list(settings().suppress_health_check) + [HealthCheck.function_scoped_fixture])
dtypes = st.sampled_from([np.float32, np.float64])


def assert_close(got, expected, rtol=1e-5, atol=1e-6, name="array"):
    """np.testing.assert_allclose on host copies, with a name in the message."""
    np.testing.assert_allclose(backend.to_numpy(got), backend.to_numpy(expected), rtol=rtol, atol=atol,
                               err_msg=f"{name} differs")


def distinct_array(rng, shape, scale=1.0, gap=1e-3):
    """A float64 array whose values are all distinct, spaced at least ``gap * scale`` apart
    (no ties: safe for differentiating max-like ops)."""
    n = int(np.prod(shape))
    vals = (np.arange(n) - n / 2) * gap * scale
    rng.shuffle(vals)
    return vals.reshape(shape) + 0.0


seeds = st.integers(0, 2**31 - 1)


class HypothesisDraw:
    """The ``draw`` of :mod:`minignn.cases` backed by Hypothesis (sizes shrink on failure):
    ``op.sample(HypothesisDraw(data), dtype)`` or ``cases.window(HypothesisDraw(data))`` in a
    ``@given(data=st.data())`` test."""

    def __init__(self, data):
        self._data = data
        self.rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))

    def int(self, lo, hi):
        return self._data.draw(st.integers(lo, hi))

    def choice(self, seq):
        return self._data.draw(st.sampled_from(list(seq)))

    def bool(self):
        return self._data.draw(st.booleans())


def require(device, *ops):
    """Skip (visibly, naming the op) when one of ``ops`` has no kernel on ``device`` yet, as the op
    table says; a test never asserts that a missing kernel raises."""
    missing = [m for name in ops for m in OPS[name].missing(device)]
    if missing:
        pytest.skip(f"{', '.join(ops)}: no {device.upper()} kernel yet for {', '.join(dict.fromkeys(missing))}")
