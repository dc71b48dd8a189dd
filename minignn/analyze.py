"""``minignn analyze``: the GFGP paper's analysis of the lam a trained network produces (Sec. 5.2).

For every image of a split (in eval mode) and every pooling layer whose parameter varies per image
(lam of gfgp and gfgp-local; the zoo's analogues: a of gfgp-gated, gate of gated, gamma and alpha of
gfgp-dpp, eta of gaussian, logit of lip, rho when GFGP predicts it), the layer's values for that
image are quantized into a histogram of three equal bins over the layer's range and normalised to
sum to 1: a point on the 2-simplex. The range is the activation's where it is bounded (sigmoid
[0, 1], tanh [-1, 1]; a and gate [0, 1]; LIP's logit [0, 12]) and otherwise the smallest and largest
value the layer produced over the split.

From those histograms:

* **Fig. 2** (``fig2-<name>.png``): one simplex scatter per layer, each image a point coloured by
  its first layer's histogram (RGB = the three bin frequencies); ``x`` marks the uniform histogram.
* **Fig. 3** (``fig3-<name>.png``): the per-layer histograms of two images of one class (the
  first class, and of its first 200 test images the pair whose histograms differ most, summed
  L1 distance over the layers), beside the images.
* **Table 5a**: the Fisher discriminant score per layer. The histogram vectors, less their last
  bin (the three sum to 1, so one is redundant), are the features x_i with class labels. With the
  within-class scatter ``S_W = sum_k sum_{i in k} (x_i - m_k)(x_i - m_k)^T`` and the between-class
  scatter ``S_B = sum_k n_k (m_k - m)(m_k - m)^T``, the score is the largest eigenvalue of
  ``S_W^-1 S_B`` (the best ratio ``w^T S_B w / w^T S_W w`` over directions w), computed in the
  subspace where S_W is non-singular; None when S_W is zero.
* **Table 5b**: the first canonical correlation between the histograms (less their last bin) of
  every pair of layers: the largest correlation between a linear combination of one layer's
  bins and one of the other's; None where one layer's histograms do not vary.

Written to ``analysis.json`` (the scores, correlations, ranges and mean histograms),
``analysis.md`` (ours beside the paper's Table 5, VGG-13 on ImageNet), ``histograms.npz`` (every
image's histograms and its label) and the PNGs, in ``RUN_DIR/analysis/`` unless ``--out``.
"""
from __future__ import annotations

import math
import os

import numpy as np

from .checkpoint import atomic_write, dumps_json

__all__ = ["fisher_score", "first_canonical_correlation", "simplex_histograms", "analyze", "PAPER_TABLE5"]

#: the paper's Table 5 (VGG-13 on ImageNet, 10,000 images): Fisher scores per layer, and the first
#: canonical correlation of layer i with layer j > i
PAPER_TABLE5 = {
    "fisher": [0.1395, 0.2021, 0.1854, 0.2276, 0.1610],
    "cca": {(1, 2): 0.4400, (1, 3): 0.2451, (1, 4): 0.1739, (1, 5): 0.1445, (2, 3): 0.3172, (2, 4): 0.2165,
            (2, 5): 0.1771, (3, 4): 0.3454, (3, 5): 0.2581, (4, 5): 0.3795},
}
BINS = 3
_FIXED_RANGES = {"a": (0.0, 1.0), "gate": (0.0, 1.0), "logit": (0.0, 12.0)}
_ACTIVATION_RANGES = {"sigmoid": (0.0, 1.0), "tanh": (-1.0, 1.0)}


def _whitener(c: np.ndarray, rel: float = 1e-10):
    """A matrix W with W^T c W = I on the subspace where the symmetric PSD ``c`` is non-singular
    (None where c is zero)."""
    w, v = np.linalg.eigh(c)
    top = float(w.max()) if w.size else 0.0
    if not top > 0:
        return None
    keep = w > rel * top
    return v[:, keep] / np.sqrt(w[keep])


def fisher_score(histograms, labels, drop_last: bool = True) -> float | None:
    """The largest eigenvalue of ``S_W^-1 S_B`` of the feature vectors (the histograms less their
    last bin) against the class labels (see the module docstring); None for a single class or
    features that do not vary within classes."""
    x = np.asarray(histograms, np.float64)
    x = x[:, :-1] if drop_last else x
    y = np.asarray(labels).reshape(-1)
    if x.ndim != 2 or x.shape[0] != y.shape[0]:
        raise ValueError(f"fisher_score: expected histograms (N, B) and N labels, got {x.shape} and {y.shape}")
    classes = np.unique(y)
    if len(classes) < 2:
        return None
    m = x.mean(axis=0)
    sw = np.zeros((x.shape[1], x.shape[1]))
    sb = np.zeros_like(sw)
    for k in classes:
        xk = x[y == k]
        mk = xk.mean(axis=0)
        d = xk - mk
        sw += d.T @ d
        sb += len(xk) * np.outer(mk - m, mk - m)
    w = _whitener(sw)
    if w is None:
        return None
    return float(np.linalg.eigvalsh(w.T @ sb @ w).max())


def first_canonical_correlation(a, b, drop_last: bool = True) -> float | None:
    """The first canonical correlation between the rows of ``a`` (N, B) and ``b`` (N, B') (their
    last columns dropped): the largest correlation of ``a u`` with ``b v`` over u, v; None when
    either does not vary."""
    x, y = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if drop_last:
        x, y = x[:, :-1], y[:, :-1]
    if x.shape[0] != y.shape[0] or x.shape[0] < 2:
        raise ValueError(f"first_canonical_correlation: expected two (N, B) arrays with N >= 2, got {x.shape} and"
                         f" {y.shape}")
    x, y = x - x.mean(axis=0), y - y.mean(axis=0)
    wx, wy = _whitener(x.T @ x), _whitener(y.T @ y)
    if wx is None or wy is None:
        return None
    s = np.linalg.svd(wx.T @ (x.T @ y) @ wy, compute_uv=False)
    return float(min(1.0, s.max())) if s.size else None


def simplex_histograms(values, low: float, high: float, bins: int = BINS) -> np.ndarray:
    """Per row of ``values`` (N, M), the fraction of its M values in each of ``bins`` equal bins
    over [low, high] (values outside go to the end bins; a collapsed range puts all in the middle)."""
    v = np.asarray(values, np.float64)
    n, m = v.shape
    if not high > low:
        idx = np.full(v.shape, bins // 2, dtype=np.int64)
    else:
        idx = np.clip(np.floor((v - low) / (high - low) * bins), 0, bins - 1).astype(np.int64)
    out = np.zeros((n, bins))
    for b in range(bins):
        out[:, b] = (idx == b).sum(axis=1)
    return out / max(m, 1)


def _value_range(layer, name: str):
    if name in _FIXED_RANGES:
        return _FIXED_RANGES[name]
    if name == "lam":
        act = getattr(getattr(layer, "mapping", None), "activation", None)
        return _ACTIVATION_RANGES.get(act)
    return None


class _Collector:
    """Per (diagnostic, layer): the per-image histograms (bounded ranges) or the raw per-image
    values (ranges read off the data, binned at the end)."""

    def __init__(self, layers):
        self.layers = layers
        self.hist: dict = {}
        self.raw: dict = {}
        self.ranges: dict = {}
        self.skipped: dict = {}

    def record(self, n: int):
        from .models import diagnostic_values
        for lname, m, d, value in diagnostic_values(self.layers):
            v = np.asarray(value, np.float32)
            if v.ndim < 2 or v.shape[0] != n:
                self.skipped[(d, lname)] = f"{d} has shape {tuple(v.shape)}: one value set for every image"
                continue
            v = v.reshape(n, -1)
            key = (d, lname)
            rng = _value_range(m, d)
            if rng is not None:
                self.ranges[key] = rng
                self.hist.setdefault(key, []).append(simplex_histograms(v, *rng))
            else:
                self.raw.setdefault(key, []).append(v)

    def histograms(self) -> dict:
        out = {k: np.concatenate(v) for k, v in self.hist.items()}
        for k, parts in self.raw.items():
            v = np.concatenate(parts)
            lo, hi = float(v.min()), float(v.max())
            self.ranges[k] = (lo, hi)
            out[k] = simplex_histograms(v, lo, hi)
        return out


def _load(run: str, device: str):
    from .checkpoint import CheckpointError, load_checkpoint
    from .saving import resolve_model_file
    from .train import TrainConfig, model_from_config
    path = resolve_model_file(run)
    state = load_checkpoint(path)
    if "model" not in state or "config" not in state:
        raise ValueError(f"analyze: {path!r} is a checkpoint without a model and config (expected a training run's"
                         f" folder, best.npz or checkpoint.npz)")
    config = TrainConfig.from_dict(state["config"])
    model = model_from_config(config, int(state.get("num_classes", 10)))
    try:
        model.load_state_dict(state["model"])
    except KeyError as e:
        raise CheckpointError(f"analyze: {path!r}: {e.args[0] if e.args else e}") from e
    if device != "cpu":
        model.to(device)
    return path, config, model, state


def analyze(run: str, split: str = "test", out: str | None = None, limit: int | None = None,
            batch_size: int = 250, device: str = "cpu", data_dir: str | None = None, progress: bool = False,
            plots: bool = True, log=print) -> dict:
    """Analyze the per-image pooling parameters of the trained run ``run`` (a run folder, or its
    best.npz / checkpoint.npz) over ``split`` (``"test"`` or ``"train"``, un-augmented; ``limit``
    images, a fixed random subset, or all). Writes the files of the module docstring to ``out``
    (default ``<run folder>/analysis``) and returns the ``analysis.json`` document."""
    from . import backend
    from .data import BatchLoader, load_dataset
    from .models import diagnostic_layers
    from .train import _progress
    if split not in ("test", "train"):
        raise ValueError(f"split: expected 'test' or 'train', got {split!r}")
    backend.check_device(device)
    path, config, model, state = _load(run, device)
    run_dir = os.path.dirname(os.path.abspath(path))
    out = out or os.path.join(run_dir, "analysis")
    layers = diagnostic_layers(model)
    if not layers:
        raise ValueError(f"analyze: {path!r}: the model's pooling ({config.pool}) keeps no parameter to analyze"
                         f" (lam of max-entropy pooling and GFGP, or a zoo pooling's a, gate, gamma, ...)")
    ds = load_dataset(config.dataset, data_dir=data_dir or config.data_dir, download=config.download,
                      check_counts=not config.allow_partial_data, progress=progress)
    if limit is not None:
        ds = ds.limit(limit if split == "train" else None, limit if split == "test" else None)
    x, y = (ds.x_test, ds.y_test) if split == "test" else (ds.x_train, ds.y_train)
    loader = BatchLoader(backend.to_device(x, device) if device != "cpu" else x, y, batch_size, train=False,
                         augment=False, mean=ds.mean, std=ds.std, seed=config.seed)
    model.eval()
    col = _Collector(layers)
    correct = 0
    with _progress(loader.num_samples, f"analyze {split}", progress) as bar:
        for xb, yb in loader.batches(0):
            logits = model.forward(backend.to_device(xb, device) if device != "cpu" else xb)
            correct += int((backend.to_numpy(logits).argmax(axis=1) == backend.to_numpy(yb)).sum())
            col.record(int(yb.shape[0]))
            bar.update(int(yb.shape[0]))
    hists = col.histograms()
    if not hists:
        why = "; ".join(f"{lname}: {msg}" for (d, lname), msg in col.skipped.items())
        raise ValueError(f"analyze: {path!r}: no pooling parameter of this model ({config.pool}) varies per image"
                         f" ({why}); the analysis needs one that does (gfgp, gfgp-local, gfgp-gated, gated,"
                         f" gfgp-dpp, gaussian, lip)")
    labels = np.asarray(y)
    doc = {"run": run_dir, "checkpoint": path, "model": config.model, "pool": config.pool, "dataset": ds.name,
           "split": split, "images": int(len(labels)), "accuracy": correct / max(len(labels), 1), "bins": BINS,
           "diagnostics": {}}
    os.makedirs(out, exist_ok=True)
    arrays = {"labels": labels}
    for d in dict.fromkeys(k[0] for k in hists):
        names = [lname for (dd, lname) in hists if dd == d]
        hs = [hists[(d, n)] for n in names]
        entry = {"layers": []}
        for n, h in zip(names, hs):
            entry["layers"].append({"name": n, "range": list(col.ranges[(d, n)]),
                                    "range_from": "activation" if col.hist.get((d, n)) else "data",
                                    "mean_histogram": h.mean(axis=0).tolist(),
                                    "fisher": fisher_score(h, labels)})
            arrays[f"{d}/{n}"] = h.astype(np.float32)
        cca = [[None] * len(hs) for _ in hs]
        for i in range(len(hs)):
            cca[i][i] = 1.0 if first_canonical_correlation(hs[i], hs[i]) is not None else None
            for j in range(i + 1, len(hs)):
                cca[i][j] = cca[j][i] = first_canonical_correlation(hs[i], hs[j])
        entry["cca"] = cca
        if plots:
            entry["fig2"] = os.path.basename(simplex_plot(hs, names, d, os.path.join(out, f"fig2-{d}.png"),
                                                          title=f"{config.model} {config.pool}: {d}"))
            pair = _pair(hs, labels)
            if pair is not None:
                entry["fig3"] = os.path.basename(pair_plot(hs, names, d, pair, x, labels, ds.classes,
                                                           os.path.join(out, f"fig3-{d}.png")))
                entry["fig3_images"] = [int(i) for i in pair]
        doc["diagnostics"][d] = entry
    doc["skipped"] = {f"{d}/{n}": msg for (d, n), msg in col.skipped.items()}
    atomic_write(os.path.join(out, "histograms.npz"), lambda f: np.savez_compressed(f, **arrays))
    atomic_write(os.path.join(out, "analysis.json"), lambda f: f.write(dumps_json(doc, indent=2) + "\n"), mode="w")
    atomic_write(os.path.join(out, "analysis.md"), lambda f: f.write(markdown(doc) + "\n"), mode="w")
    log(f"analysis of {path} ({doc['images']} {split} images, accuracy {100 * doc['accuracy']:.2f}%): {out}")
    return doc


def _pair(hs, labels, first: int = 200):
    """Two images of the first class: of its first ``first`` images, the pair whose histograms
    differ most (summed L1 distance over the layers)."""
    labels = np.asarray(labels)
    idx = np.flatnonzero(labels == labels.min())[:first]
    if len(idx) < 2:
        return None
    feats = np.concatenate([h[idx] for h in hs], axis=1)
    dist = np.abs(feats[:, None, :] - feats[None, :, :]).sum(axis=2)
    np.fill_diagonal(dist, -1.0)   # two different images, even where every histogram is the same
    i, j = np.unravel_index(np.argmax(dist), dist.shape)
    return int(idx[min(i, j)]), int(idx[max(i, j)])


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.4f}"


def markdown(doc: dict) -> str:
    lines = [f"# minignn analyze: {doc['model']} with {doc['pool']} pooling", "",
             f"- run: {doc['run']}", f"- data: {doc['dataset']} {doc['split']} split, {doc['images']} images"
             f" (eval mode), accuracy {100 * doc['accuracy']:.2f}%",
             f"- histograms of {doc['bins']} equal bins per image and layer, over the range below", "",
             "The paper's values are VGG-13's five pooling layers on ImageNet (10,000 images); ours are this"
             " network's layers on its data, compared layer by layer in network order. A '-' of ours: the"
             " layer's histograms do not vary (every image has the same one, e.g. all values in one bin), so the"
             " score or correlation is undefined.", ""]
    for d, e in doc["diagnostics"].items():
        names = [la["name"] for la in e["layers"]]
        lines += [f"## {d}", "", "| layer | range | mean histogram | Fisher score (Table 5a) | paper |",
                  "|---|---|---|---|---|"]
        for i, la in enumerate(e["layers"]):
            paper = PAPER_TABLE5["fisher"][i] if d == "lam" and i < 5 else None
            lo, hi = la["range"]
            lines.append(f"| {la['name']} | [{lo:.4g}, {hi:.4g}] ({la['range_from']}) | "
                         f"{', '.join(f'{v:.3f}' for v in la['mean_histogram'])} | {_fmt(la['fisher'])} | "
                         f"{_fmt(paper)} |")
        lines += ["", "First canonical correlation between layers (Table 5b), ours (paper):", "",
                  "| | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
        for i, n in enumerate(names):
            cells = []
            for j in range(len(names)):
                if j <= i:
                    cells.append("-")
                else:
                    p = PAPER_TABLE5["cca"].get((i + 1, j + 1)) if d == "lam" else None
                    cells.append(_fmt(e["cca"][i][j]) + (f" ({p:.4f})" if p is not None else ""))
            lines.append(f"| {n} | " + " | ".join(cells) + " |")
        lines.append("")
        if "fig2" in e:
            lines += [f"![Fig. 2]({e['fig2']})", ""]
        if "fig3" in e:
            lines += [f"![Fig. 3]({e['fig3']}) (images {e['fig3_images'][0]} and {e['fig3_images'][1]} of the"
                      f" {doc['split']} split)", ""]
    if doc.get("skipped"):
        lines += ["Not analysed (the same for every image): " + "; ".join(f"{k} ({v})" for k, v in
                                                                         doc["skipped"].items()), ""]
    return "\n".join(lines)


_CORNERS = np.array([[0.0, 0.0], [1.0, 0.0], [0.5, math.sqrt(3) / 2]])


def _to_plane(h):
    return np.asarray(h, np.float64) @ _CORNERS


def simplex_plot(hs, names, d, path, title=""):
    """Fig. 2: per layer, every image's histogram as a point on the 2-simplex, coloured by its
    first layer's histogram."""
    from .plots import _figure, _save
    fig, axes = _figure(len(hs), 1, panel=(3.4, 3.3))
    colors = np.clip(hs[0], 0, 1)
    for ax, h, n in zip(axes[0], hs, names):
        tri = np.vstack([_CORNERS, _CORNERS[:1]])
        ax.plot(tri[:, 0], tri[:, 1], color="0.4", lw=0.8)
        p = _to_plane(h)
        jitter = np.random.default_rng(0).normal(0, 0.004, p.shape)   # many images share a histogram
        ax.scatter(p[:, 0] + jitter[:, 0], p[:, 1] + jitter[:, 1], c=colors, s=3, alpha=0.5, linewidths=0)
        u = _to_plane(np.full(3, 1 / 3))
        ax.plot([u[0]], [u[1]], "kx", ms=8, mew=1.5)
        for k, (cx, cy) in enumerate(_CORNERS):
            ax.annotate(f"bin {k + 1}", (cx, cy), ha="center", va="top" if cy == 0 else "bottom", fontsize=7,
                        xytext=(0, -4 if cy == 0 else 4), textcoords="offset points")
        ax.set_title(n, fontsize=9)
        ax.set_aspect("equal")
        ax.set_axis_off()
    fig.suptitle(f"{title}: histograms of {d} per image (3 bins, low to high) on the simplex; colour = the first"
                 f" layer's histogram; x = uniform", fontsize=8)
    return _save(fig, path)


def pair_plot(hs, names, d, pair, images, labels, classes, path):
    """Fig. 3: two images of one class and their per-layer histograms."""
    from .plots import _figure, _save
    fig, axes = _figure(len(hs) + 1, 2, panel=(2.3, 2.1))
    for r, i in enumerate(pair):
        img = np.asarray(images[i])
        if img.ndim == 1:
            img = img.reshape(3, -1, int(round(math.sqrt(img.size // 3))))
        if img.ndim == 3 and img.shape[0] in (1, 3):
            img = img.transpose(1, 2, 0)
        img = img.astype(np.float32)
        img = (img - img.min()) / max(float(img.max() - img.min()), 1e-9)
        axes[r, 0].imshow(img.squeeze(), cmap="gray" if img.shape[-1] == 1 else None)
        cls = classes[int(labels[i])] if classes is not None and int(labels[i]) < len(classes) else labels[i]
        axes[r, 0].set_title(f"image {i} ({cls})", fontsize=8)
        axes[r, 0].set_axis_off()
        for c, (h, n) in enumerate(zip(hs, names), start=1):
            ax = axes[r, c]
            ax.bar(range(1, 4), h[i], color=["C0", "C1", "C3"])
            ax.set_ylim(0, 1)
            ax.set_xticks([1, 2, 3])
            ax.set_title(n, fontsize=8)
            ax.tick_params(labelsize=7)
    fig.suptitle(f"{d}: histograms (3 bins, low to high) of two images of the same class", fontsize=8)
    return _save(fig, path)
