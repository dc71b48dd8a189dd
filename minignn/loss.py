"""Softmax cross-entropy, numerically stable, with optional label smoothing."""
from __future__ import annotations

import numpy as np

from . import backend, cases, ops
from .checks import check_array, check_probability


def _log_softmax(z, xp):
    m = z.max(axis=1, keepdims=True)
    s = z - m
    return s - xp.log(xp.exp(s).sum(axis=1, keepdims=True))


def softmax_cross_entropy_forward(logits, labels, label_smoothing: float = 0.0, where="softmax_cross_entropy"):
    """The mean over the batch of ``-sum_k q_k log softmax(z)_k`` (see :class:`SoftmaxCrossEntropy`).

    Returns the loss (a float) and what :func:`softmax_cross_entropy_backward` needs."""
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
    eps = label_smoothing
    nll = -logp[xp.arange(n), labels]
    if eps > 0:
        loss = (1.0 - eps) * nll - eps * logp.mean(axis=1)
    else:
        loss = nll
    return float(loss.mean()), (logp, labels, eps)


def softmax_cross_entropy_backward(saved):
    """d loss / d logits = ``(softmax(z) - q) / N``, shape (N, K), in the logits' dtype."""
    logp, labels, eps = saved
    xp = backend.get_array_module(logp)
    n, k = logp.shape
    g = xp.exp(logp)
    if eps > 0:
        g -= eps / k
    g[xp.arange(n), labels] -= 1.0 - eps
    g /= n
    return g


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
        loss, self._saved = softmax_cross_entropy_forward(logits, labels, self.label_smoothing,
                                                          where="SoftmaxCrossEntropy.forward")
        return loss

    __call__ = forward

    def backward(self):
        """d loss / d logits, shape (N, K), in the logits' dtype."""
        if self._saved is None:
            raise RuntimeError("SoftmaxCrossEntropy.backward called before forward")
        return softmax_cross_entropy_backward(self._saved)

    @staticmethod
    def accuracy_count(logits, labels) -> int:
        """Number of rows whose argmax equals the label."""
        return int((logits.argmax(axis=1) == labels).sum())


# ---------------------------------------------------------------------------------- the op table
def _forward_ref(logits, labels, label_smoothing=0.0):
    z = logits.astype(np.float64)
    s = z - z.max(axis=1, keepdims=True)
    logp = s - np.log(np.exp(s).sum(axis=1, keepdims=True))
    n, k = z.shape
    q = np.full((n, k), label_smoothing / k)
    q[np.arange(n), labels] += 1.0 - label_smoothing
    return (np.asarray(-(q * logp).sum() / n),), (logp, q)


def _forward(logits, labels, label_smoothing=0.0):
    loss, saved = softmax_cross_entropy_forward(logits, labels, label_smoothing)
    return (loss,), saved


def _sample(draw, dtype):
    n, k = draw.int(1, 6), draw.int(2, 7)
    logits = cases.values(draw, (n, k), dtype, scale=draw.choice([1.0, 10.0, 100.0]))
    labels = draw.rng.integers(0, k, n)
    return ops.Case((logits, labels), dict(label_smoothing=draw.choice([0.0, 0.1, 0.3])))


ops.register(ops.Op(
    "softmax_cross_entropy", "mean of -sum q log softmax(z), label smoothing q = (1 - eps) onehot + eps / K",
    forward=_forward,
    backward=lambda saved, gloss: (softmax_cross_entropy_backward(saved) * float(gloss), None),
    reference=(_forward_ref, lambda saved, gloss: ((np.exp(saved[0]) - saved[1]) / len(saved[1]) * float(gloss), None)),
    cpu=ops.XP, gpu=ops.XP, sample=_sample))
