"""Softmax cross-entropy, numerically stable, with optional label smoothing."""
from __future__ import annotations

import numpy as np

from . import backend
from .checks import check_array, check_probability


def _log_softmax(z, xp):
    m = z.max(axis=1, keepdims=True)
    s = z - m
    return s - xp.log(xp.exp(s).sum(axis=1, keepdims=True))


class SoftmaxCrossEntropy:
    """Mean over the batch of ``-sum_k q_k log softmax(z)_k``.

    ``q`` is the one-hot target, or with label smoothing ``eps``:
    ``q = (1 - eps) * onehot + eps / K``. ``forward(logits, labels)`` returns the loss (a float);
    ``backward()`` returns d loss / d logits = ``(softmax(z) - q) / N``.

    Parameters
    ----------
    label_smoothing : float in [0, 1)
    """

    def __init__(self, label_smoothing: float = 0.0):
        self.label_smoothing = check_probability(label_smoothing, "label_smoothing", "SoftmaxCrossEntropy")
        self._saved = None

    def forward(self, logits, labels) -> float:
        """logits: (N, K) float; labels: (N,) integers in [0, K). Returns the mean loss."""
        where = "SoftmaxCrossEntropy.forward"
        check_array(logits, "logits", ndim=2, where=where)
        xp = backend.get_array_module(logits)
        if not hasattr(labels, "dtype") or np.dtype(labels.dtype).kind not in "iu":
            raise TypeError(f"{where}: labels: expected an integer array, got "
                            f"{getattr(labels, 'dtype', type(labels).__name__)}")
        n, k = logits.shape
        if labels.shape != (n,):
            raise ValueError(f"{where}: labels: expected shape ({n},) to match logits {tuple(logits.shape)}, got {tuple(labels.shape)}")
        if n == 0:
            raise ValueError(f"{where}: logits: expected a non-empty batch, got shape {tuple(logits.shape)}")
        lo, hi = int(labels.min()), int(labels.max())
        if lo < 0 or hi >= k:
            raise ValueError(f"{where}: labels: expected values in [0, {k}), got values in [{lo}, {hi}]")
        logp = _log_softmax(logits, xp)
        eps = self.label_smoothing
        nll = -logp[xp.arange(n), labels]
        if eps > 0:
            loss = (1.0 - eps) * nll - eps * logp.mean(axis=1)
        else:
            loss = nll
        self._saved = (logp, labels)
        return float(loss.mean())

    __call__ = forward

    def backward(self):
        """d loss / d logits, shape (N, K), in the logits' dtype."""
        if self._saved is None:
            raise RuntimeError("SoftmaxCrossEntropy.backward called before forward")
        logp, labels = self._saved
        xp = backend.get_array_module(logp)
        n, k = logp.shape
        g = xp.exp(logp)
        eps = self.label_smoothing
        if eps > 0:
            g -= eps / k
        g[xp.arange(n), labels] -= 1.0 - eps
        g /= n
        return g

    @staticmethod
    def accuracy_count(logits, labels) -> int:
        """Number of rows whose argmax equals the label."""
        return int((logits.argmax(axis=1) == labels).sum())
