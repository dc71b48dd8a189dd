"""PNG plots of a run: loss, accuracy and learning-rate curves, and the distribution of lam per max-entropy
pooling layer (the GFGP paper's Fig. 3 style), or of any pooling's diagnostic (gate, p, ...).

Figures are built with matplotlib's object API on the Agg canvas (no pyplot, no global backend
switch), so these functions work on a machine without a display and leave a notebook's own
matplotlib setup alone. Each function saves a PNG and returns its path; the ``*_figure``
variants return the Figure (a notebook shows it inline).
"""
from __future__ import annotations

import os
from typing import Mapping, Sequence

import numpy as np

from .checkpoint import atomic_write


def _figure(ncols: int, nrows: int = 1, panel=(4.6, 3.4)):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=(panel[0] * ncols, panel[1] * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def _save(fig, path: str) -> str:
    return atomic_write(path, lambda f: fig.savefig(f, dpi=110, format="png"))


def curves_figure(history: Sequence[Mapping], title: str | None = None, lr_curve=None):
    """Loss, accuracy in % and the learning rate per epoch, train and test.

    ``history``: the per-epoch records of a run (``metrics.jsonl`` lines), each with ``epoch``,
    ``train_loss``, ``test_loss``, ``train_acc`` and ``test_acc`` (fractions), and ``lr`` (the
    rate of the epoch's last step). ``lr_curve``: optionally ``(epochs, rates)``, the rate at
    fractional epochs (every step, or a sample), drawn instead of the per-epoch points. The best
    test accuracy is marked below its point, inside the panel (clear of the panel's title)."""
    if not history:
        raise ValueError("curves_figure: history: expected at least one epoch record, got none")
    ep = [r["epoch"] for r in history]
    fig, ax = _figure(3)
    a, b, c = ax[0, 0], ax[0, 1], ax[0, 2]
    a.plot(ep, [r["train_loss"] for r in history], "o-", label="train")
    a.plot(ep, [r["test_loss"] for r in history], "s-", label="test")
    a.set_xlabel("epoch")
    a.set_ylabel("cross-entropy loss")
    a.set_title("loss")
    b.plot(ep, [100 * r["train_acc"] for r in history], "o-", label="train")
    b.plot(ep, [100 * r["test_acc"] for r in history], "s-", label="test")
    best = max(history, key=lambda r: r["test_acc"])
    b.annotate(f"best {100 * best['test_acc']:.2f}%", (best["epoch"], 100 * best["test_acc"]),
               textcoords="offset points", xytext=(0, -9), ha="center", va="top", fontsize=8,
               annotation_clip=True)
    b.set_xlabel("epoch")
    b.set_ylabel("accuracy (%)")
    b.set_title("accuracy")
    if lr_curve is not None:
        c.plot(np.asarray(lr_curve[0], float), np.asarray(lr_curve[1], float), "-", label="per step")
    lr_points = [(r["epoch"], r["lr"]) for r in history if r.get("lr") is not None]
    if lr_points:
        c.plot(*zip(*lr_points), "o", label="end of epoch")
    c.set_xlabel("epoch")
    c.set_ylabel("learning rate")
    c.set_title("learning rate")
    for x in (a, b, c):
        x.grid(alpha=0.3)
        if x.get_legend_handles_labels()[0]:
            x.legend()
        if len(ep) <= 20:
            x.set_xticks(ep)
    if title:
        fig.suptitle(title)
    return fig


def plot_curves(history: Sequence[Mapping], path: str, title: str | None = None, lr_curve=None) -> str:
    """Save :func:`curves_figure` as a PNG at ``path``; returns the path."""
    return _save(curves_figure(history, title, lr_curve), path)


#: what a value of each built-in diagnostic means, for the figure's caption
DIAGNOSTIC_NOTES = {
    "lam": "lam near 0 pools like an average, large positive lam like a max",
    "rho": "the position prior's weight",
    "a": "mixing weight of max (1) against average (0)",
    "gate": "gate of max (1) against average (0)",
    "p": "p = 1 pools like an average, large p like a max",
    "gamma": "DPP's detail exponent",
    "alpha": "DPP's offset (large alpha: average)",
    "logit": "LIP's logit (equal logits: average)",
    "eta": "Gaussian pooling's eta: mean + eta std (0: average)",
}


def diagnostic_figure(values: Mapping[str, np.ndarray], name: str = "lam", title: str | None = None,
                      bins: int = 50):
    """One histogram panel per pooling layer of one diagnostic's values over a set of images.

    ``values``: layer name -> array of the diagnostic's values (any shape is flattened), in
    network order; ``name``: the diagnostic (``"lam"``, ``"gate"``, ``"p"``, ...), the panels'
    x label. Non-finite values are left out of the histogram."""
    if not values:
        raise ValueError(f"diagnostic_figure: values: expected at least one pooling layer of {name}, got none")
    names = list(values)
    ncols = min(len(names), 5)
    nrows = -(-len(names) // ncols)
    fig, ax = _figure(ncols, nrows, panel=(3.4, 2.8))
    for k, layer in enumerate(names):
        a = ax[k // ncols, k % ncols]
        v = np.asarray(values[layer], dtype=np.float64).reshape(-1)
        v = v[np.isfinite(v)]
        if v.size:
            lo, hi = float(v.min()), float(v.max())
            if hi - lo < 1e-6:
                lo, hi = lo - 0.5, hi + 0.5
            a.hist(v, bins=bins, range=(lo, hi), weights=np.full(v.size, 1.0 / v.size), color="tab:blue", alpha=0.85)
            a.axvline(float(v.mean()), color="tab:red", lw=1, label=f"mean {v.mean():.3g}")
            a.legend(fontsize=7)
        a.set_title(f"{layer} ({v.size:,} values)", fontsize=9)
        a.set_xlabel(name)
        a.set_ylabel("fraction of values")
        a.grid(alpha=0.3)
    for k in range(len(names), nrows * ncols):
        ax[k // ncols, k % ncols].set_axis_off()
    note = DIAGNOSTIC_NOTES.get(name)
    if title or note:
        fig.suptitle("\n".join(t for t in (title, f"({note})" if note else None) if t), fontsize=10)
    return fig


def plot_diagnostic_histograms(values: Mapping[str, np.ndarray], path: str, name: str = "lam",
                               title: str | None = None, bins: int = 50) -> str:
    """Save :func:`diagnostic_figure` as a PNG at ``path``; returns the path."""
    return _save(diagnostic_figure(values, name, title, bins), path)


def lam_figure(lam: Mapping[str, np.ndarray], title: str | None = None, bins: int = 50):
    """One histogram panel per pooling layer of the lam values seen over a set of images
    (:func:`diagnostic_figure` of ``"lam"``).

    ``lam``: layer name -> 1-D array of lam values (any shape is flattened), in network order.
    A value of lam near 0 pools like an average, a large positive lam like a max."""
    if not lam:
        raise ValueError("lam_figure: lam: expected at least one pooling layer, got none")
    return diagnostic_figure(lam, "lam", title, bins)


def plot_lam_histograms(lam: Mapping[str, np.ndarray], path: str, title: str | None = None, bins: int = 50) -> str:
    """Save :func:`lam_figure` as a PNG at ``path``; returns the path."""
    return _save(lam_figure(lam, title, bins), path)


def read_metrics(path: str) -> list[dict]:
    """The records of a ``metrics.jsonl`` file (or a run folder holding one)."""
    import json
    if os.path.isdir(path):
        path = os.path.join(path, "metrics.jsonl")
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]
