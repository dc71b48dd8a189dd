"""Helpers shared by the tests (importable as ``from helpers import ...``)."""
import pickle
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, settings, strategies as st

from minignn import backend
from minignn.data import cifar
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


class SeededDraw:
    """The same ``draw`` from a plain seed: a fixed sweep of cases, not a search
    (``op.sample(SeededDraw(seed), dtype)``)."""

    def __init__(self, seed):
        self.rng = np.random.default_rng(seed)

    def int(self, lo, hi):
        return int(self.rng.integers(lo, hi + 1))

    def choice(self, seq):
        seq = list(seq)
        return seq[int(self.rng.integers(len(seq)))]

    def bool(self):
        return bool(self.rng.integers(2))


def require(device, *ops):
    """Skip (visibly, naming the op) when one of ``ops`` has no kernel on ``device`` yet, as the op
    table says; a test never asserts that a missing kernel raises."""
    missing = [m for name in ops for m in OPS[name].missing(device)]
    if missing:
        pytest.skip(f"{', '.join(ops)}: no {device.upper()} kernel yet for {', '.join(dict.fromkeys(missing))}")


# ---------------------------------------------------------------- CIFAR files written by tests
def pickle_dump(path, obj, protocol=2):
    """Write ``obj`` as a pickle, protocol 2 as the CIFAR files are."""
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=protocol)


def write_cifar10(root, sizes=(7, 5, 6, 4, 3), n_test=9, seed=0):
    """A small CIFAR-10 folder in the canonical layout under ``root`` (25 training and 9 test images
    by default); returns (x_train rows, y_train, x_test rows, y_test)."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / cifar.SPECS["cifar10"].folder
    folder.mkdir(parents=True)
    xs, ys = [], []
    for b, n in enumerate(sizes, 1):
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, n)]
        pickle_dump(folder / f"data_batch_{b}", {b"batch_label": f"training batch {b} of 5".encode(), b"labels": labels,
                                                 b"data": data,
                                                 b"filenames": [f"img_{b}_{i}.png".encode() for i in range(n)]})
        xs.append(data)
        ys += labels
    xt = rng.integers(0, 256, (n_test, 3072), dtype=np.uint8)
    yt = [int(v) for v in rng.integers(0, 10, n_test)]
    pickle_dump(folder / "test_batch", {b"batch_label": b"testing batch 1 of 1", b"labels": yt, b"data": xt,
                                        b"filenames": [f"t_{i}.png".encode() for i in range(n_test)]})
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    pickle_dump(folder / "batches.meta", {b"num_cases_per_batch": 10000, b"label_names": names, b"num_vis": 3072})
    return np.concatenate(xs), np.array(ys), xt, np.array(yt)


def write_cifar100(root, n_train=11, n_test=6, seed=1):
    rng = np.random.default_rng(seed)
    folder = Path(root) / cifar.SPECS["cifar100"].folder
    folder.mkdir(parents=True)
    out = []
    for fname, n in (("train", n_train), ("test", n_test)):
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        fine = [int(v) for v in rng.integers(0, 100, n)]
        pickle_dump(folder / fname, {b"filenames": [b"x.png"] * n, b"batch_label": fname.encode(),
                                     b"fine_labels": fine, b"coarse_labels": [v // 5 for v in fine], b"data": data})
        out += [data, np.array(fine)]
    pickle_dump(folder / "meta", {b"fine_label_names": [f"c{i}".encode() for i in range(100)],
                                  b"coarse_label_names": [f"s{i}".encode() for i in range(20)]})
    return out
