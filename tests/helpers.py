"""Helpers shared by the tests (importable as ``from helpers import ...``)."""
import numpy as np
import pytest
from hypothesis import strategies as st

from minignn import backend


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


def gpu_pending(device, op, call):
    """The GPU kernels are a later issue: on the CPU return False; on a GPU check that ``call()``
    raises the "no GPU kernel yet" error naming ``op`` and return True (the test then stops)."""
    if device == "cpu":
        return False
    with pytest.raises(NotImplementedError, match=f"{op}.*no GPU kernel yet"):
        call()
    return True
