"""The training loop: SGD + schedule + label smoothing, evaluation every epoch, metrics, exact
resume from checkpoints, Ctrl-C handling, plots and a summary.

Use it from Python::

    from minignn.train import TrainConfig, Trainer
    summary = Trainer(TrainConfig(model="tiny", pool="gfgp", epochs=10)).run()

or from the shell with ``minignn train`` (see :mod:`minignn.cli`).

What a run writes, in its folder (``runs/<model>-<pool>-<dataset>-<timestamp>`` by default):

* ``config.json``: the settings;
* ``metrics.jsonl``: one JSON object per finished epoch (losses, accuracies, learning rate,
  times, images/s, and for each diagnostic the pooling layers keep, ``"<name>": {layer: {"mean",
  "std"}}`` over the test set: ``lam`` (and ``rho`` with a prior) for max-entropy pooling, ``a``
  for mixed pooling and gfgp-gated, ``gate`` for gated pooling, ``p`` for LP pooling, ``gamma``
  and ``alpha`` for DPP, ``logit`` for LIP);
* ``checkpoint.npz``: the latest position (see :mod:`minignn.checkpoint`): parameters and
  buffers, optimizer state (momentum buffers), schedule settings and global step, epoch and step
  within the epoch, the library's RNG state, the metrics history and the config; written at the
  end of every epoch, every ``checkpoint_every`` steps, and on Ctrl-C or SIGTERM;
* ``best.npz``: the parameters and buffers of the epoch with the best test accuracy;
* ``curves.png`` (loss and accuracy), and per diagnostic ``<name>.png`` (its distribution per
  pooling layer over the test set: ``lam.png`` for max-entropy pooling, ``gate.png`` for gated
  pooling, ...) and ``<name>.npz`` (the sampled values, one array per layer);
* ``summary.json``: best and final accuracy, time per epoch.

Every file is written atomically (a temporary file renamed over the old one, see
:func:`minignn.checkpoint.atomic_write`; ``metrics.jsonl`` is rewritten whole from the history
each epoch), so an interrupted write or a full disk never destroys what was there; the JSON files
are standard JSON (an inf or NaN value is written as ``null``).

The run folder
--------------
While :meth:`Trainer.run` runs, it owns its folder through a lock (:mod:`minignn.runlock`,
the file ``.minignn.lock`` holding the process id): a second run on the same folder refuses to
start, naming the folder and the owner's pid; a lock left by a killed process is taken over. A
fresh run refuses a folder that already holds a run (``checkpoint.npz``, ``metrics.jsonl``...)
unless ``overwrite=True`` (``--overwrite``), which deletes the old run's files first; a resumed
run owns its checkpoint's folder. On taking the folder, a run deletes the temporary files a
killed writer left there (``.tmp-*.part``).

Divergence
----------
A training step whose loss is inf or NaN stops the run with :class:`TrainingDiverged` (naming
the epoch, the step, the loss and the learning rate to lower); so does a checkpoint about to save
non-finite weights. Nothing is written after the last good checkpoint, which is kept.

Exact resume
------------
Every source of randomness is a pure function of saved state: the batches (order and
augmentation) are a function of ``(seed, epoch, batch index)`` (see
:class:`minignn.data.BatchLoader`), the learning rate a function of the global step
(:mod:`minignn.schedule`), and Dropout draws from ``minignn.init``'s generator, whose state is
saved. On the same device, a run stopped after any step and resumed ends with weights equal, bit
for bit, to those of an uninterrupted run.

Ctrl-C and SIGTERM
------------------
While a run is going, the first Ctrl-C (SIGINT) or SIGTERM (what ``kill``, ``timeout`` and job
schedulers send) does not stop the step in flight: the run stops at the next step boundary,
writes ``checkpoint.npz`` at that exact position and raises :class:`Interrupted`, a
KeyboardInterrupt carrying the signal number (the CLI exits with status 128 + signal: 130 for
Ctrl-C, 143 for SIGTERM, and prints the resume command). A second signal stops at once, keeping
the previous checkpoint.
"""
from __future__ import annotations

import dataclasses
import math
import os
import signal
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from . import backend, init
from .checkpoint import (CheckpointError, atomic_write, dumps_json, load_checkpoint, remove_stale_temporaries,
                         save_checkpoint)
from .layers.registry import POOLINGS, validate_options
from .loss import SoftmaxCrossEntropy
from .models import (MODELS, build_model, check_pool_at, count_parameters, diagnostic_layers, diagnostic_names,
                     diagnostic_values)
from .checks import check_real
from .optim import OPTIMIZERS, check_betas, make_optimizer
from .runlock import RunFolderError, RunLock, check_unlocked
from .schedule import SCHEDULES, make_schedule

CHECKPOINT = "checkpoint.npz"
BEST = "best.npz"
METRICS = "metrics.jsonl"
METRICS_CSV = "metrics.csv"
SUMMARY = "summary.json"
CONFIG = "config.json"
#: the files a run writes in its folder (what ``overwrite=True`` deletes first), besides one
#: ``<name>.npz`` and ``<name>.png`` per diagnostic (:func:`run_files` lists them all)
RUN_FILES = (CONFIG, METRICS, METRICS_CSV, CHECKPOINT, BEST, SUMMARY, "lam.npz", "curves.png", "lam.png")


def run_files() -> tuple[str, ...]:
    """:data:`RUN_FILES` plus ``<name>.npz`` and ``<name>.png`` of every diagnostic a registered
    pooling records (so a pooling registered later is covered)."""
    extra = [f"{d}.{ext}" for d in diagnostic_names() for ext in ("npz", "png")]
    return tuple(dict.fromkeys(RUN_FILES + tuple(extra)))
_RUN_MARKERS = (CHECKPOINT, BEST, METRICS, SUMMARY, CONFIG)  # any of them: the folder holds a run


#: the peak learning rate when none is given, per optimizer
DEFAULT_LR = {"sgd": 0.1, "adam": 1e-3, "adamw": 1e-3}


class TrainingDiverged(RuntimeError):
    """The training loss, or the weights about to be checkpointed, became inf or NaN."""


class Interrupted(KeyboardInterrupt):
    """A run stopped by a signal, Ctrl-C's SIGINT or SIGTERM (``signum``), after saving a checkpoint
    where it could. A KeyboardInterrupt, so code that handles Ctrl-C handles it too."""

    def __init__(self, signum: int = signal.SIGINT):
        self.signum = int(signum)
        super().__init__(_signal_name(self.signum))


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


@dataclass
class TrainConfig:
    """Everything that defines a run (saved in every checkpoint; a resumed run uses it unchanged).

    Defaults are the recipe of ``minignn train``: the tiny net with GFGP pooling on CIFAR-10,
    batch 128, 10 epochs, SGD momentum 0.9 Nesterov, weight decay 5e-4, one-cycle to lr 0.1,
    random crop + flip. ``lr=None`` is the optimizer's default (:data:`DEFAULT_LR`: 0.1 for SGD,
    1e-3 for Adam and AdamW), set by :meth:`validate`. ``momentum`` and ``nesterov`` apply to SGD,
    ``betas`` and ``eps`` to Adam and AdamW (see :mod:`minignn.optim`). ``data_dir`` is stored as
    an absolute path (so a run's ``config.json`` works from any folder). ``pool_at`` (1-based
    local pooling layers) puts ``pool`` at those layers only and ``other_pool`` at the rest (see
    :func:`minignn.models.build_model`).
    """

    model: str = "tiny"
    pool: str = "gfgp"
    dataset: str = "cifar10"
    data_dir: str | None = None
    epochs: int = 10
    batch_size: int = 128
    lr: float | None = None
    optimizer: str = "sgd"
    betas: tuple = (0.9, 0.999)
    eps: float = 1e-8
    schedule: str = "onecycle"
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    label_smoothing: float = 0.0
    augment: bool = True
    seed: int = 0
    device: str = "cpu"
    limit_train: int | None = None
    limit_test: int | None = None
    width: float = 1.0
    pool_kw: dict = field(default_factory=dict)
    pool_at: list | None = None    # 1-based local pooling layers that get `pool` (None: all of them)
    other_pool: str = "max"        # the pooling at the layers pool_at leaves out
    schedule_kw: dict = field(default_factory=dict)
    eval_batch_size: int | None = None
    drop_last: bool = False
    checkpoint_every: int = 200
    download: bool = True
    allow_partial_data: bool = False  # CIFAR: accept a copy with fewer than the canonical 50000/10000 images

    def validate(self) -> "TrainConfig":
        """Check every setting (a ValueError naming it, the expected values and the value given);
        the real-valued ones must be finite, and NumPy scalars among them become Python floats.
        Returns self."""
        def pos_int(name, v, minimum=1):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < minimum:
                raise ValueError(f"{name}: expected an integer >= {minimum}, got {v!r}")
        if self.model not in MODELS:
            raise ValueError(f"model: expected one of {tuple(MODELS)}, got {self.model!r}")
        if self.pool not in POOLINGS:
            raise ValueError(f"pool: expected one of {tuple(POOLINGS)}, got {self.pool!r}")
        validate_options(self.pool, self.pool_kw, where="pool_kw")  # the names; the layer checks the values
        if self.other_pool not in POOLINGS:
            raise ValueError(f"other_pool: expected one of {tuple(POOLINGS)}, got {self.other_pool!r}")
        if self.pool_at is not None:
            self.pool_at = list(check_pool_at(self.pool_at))  # the range is checked when the model is built
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule: expected one of {SCHEDULES}, got {self.schedule!r}")
        pos_int("epochs", self.epochs)
        pos_int("batch_size", self.batch_size)
        pos_int("seed", self.seed, 0)
        pos_int("checkpoint_every", self.checkpoint_every, 0)
        for name in ("limit_train", "limit_test", "eval_batch_size"):
            if getattr(self, name) is not None:
                pos_int(name, getattr(self, name))
        def real(name, **bounds):  # finite, in range; NumPy scalars become Python floats
            try:
                setattr(self, name, check_real(getattr(self, name), name, **bounds))
            except TypeError as e:
                raise ValueError(str(e)) from None
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer: expected one of {tuple(OPTIMIZERS)}, got {self.optimizer!r}")
        if self.lr is None:
            self.lr = DEFAULT_LR[self.optimizer]
        real("lr", low=0, low_open=True)
        try:
            self.betas = check_betas(self.betas)
        except TypeError as e:
            raise ValueError(str(e)) from None
        real("eps", low=0, low_open=True)
        if self.data_dir is not None:
            if not isinstance(self.data_dir, (str, os.PathLike)) or str(self.data_dir) == "":
                raise ValueError(f"data_dir: expected a folder path, got {self.data_dir!r}")
            self.data_dir = os.path.abspath(os.path.expanduser(os.fspath(self.data_dir)))
        real("momentum", low=0, high=1, high_open=True)
        real("weight_decay", low=0)
        real("label_smoothing", low=0, high=1, high_open=True)
        real("width", low=0, low_open=True)
        if self.device not in backend.DEVICES:
            raise ValueError(f"device: expected one of {backend.DEVICES}, got {self.device!r}")
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"TrainConfig: unknown settings {sorted(unknown)}")
        return cls(**d)


# --- small helpers ------------------------------------------------------------------------------
def _progress(total, desc, enabled, unit="img"):
    # tqdm.auto picks the notebook widget in Jupyter, and warns when ipywidgets is missing:
    # import it only when a bar is wanted
    if enabled:
        from tqdm.auto import tqdm
    else:
        from tqdm import tqdm
    return tqdm(total=total, desc=desc, unit=unit, disable=not enabled, leave=False, dynamic_ncols=True,
                smoothing=0.1)


def _fmt_time(s: float) -> str:
    s = int(round(s))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"


def _write_text_atomic(path: str, text: str):
    atomic_write(path, lambda f: f.write(text), mode="w")


_STOP_SIGNALS = tuple(getattr(signal, n) for n in ("SIGINT", "SIGTERM") if hasattr(signal, n))


class _InterruptGuard:
    """Turns the first SIGINT or SIGTERM into a flag checked at step boundaries (a second one
    raises at once).

    Installed only in the main thread (elsewhere Python does not deliver signals to handlers)."""

    def __init__(self, log):
        self.requested = False
        self.signum = signal.SIGINT
        self._old: dict = {}
        self._log = log

    def _handler(self, signum, frame):
        if self.requested:
            self._restore()
            raise Interrupted(signum)
        self.requested, self.signum = True, signum
        name = "Ctrl-C" if signum == signal.SIGINT else _signal_name(signum)
        self._log(f"\n{name}: stopping after this step and saving a checkpoint ({name} again to quit at once)")

    def _restore(self):
        for signum, old in self._old.items():
            signal.signal(signum, old if old is not None else signal.SIG_DFL)
        self._old = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for signum in _STOP_SIGNALS:
                self._old[signum] = signal.signal(signum, self._handler)
        return self

    def __exit__(self, *exc):
        self._restore()
        return False

    def check(self):
        if self.requested:
            raise Interrupted(self.signum)


class _DiagnosticRecorder:
    """Per layer and diagnostic (lam, rho, a, gate, p, gamma, alpha, logit): the running mean and
    std over an evaluation, and an evenly strided sample of the values (at most ``cap`` per layer
    and diagnostic) for histograms.

    ``layers``: ``(name, module, diagnostics)`` as :func:`~minignn.models.diagnostic_layers`
    gives; a diagnostic still None after a forward (rho without a prior) is not recorded."""

    def __init__(self, layers, num_batches: int, cap: int = 100_000):
        self.layers = layers
        self.per_batch = max(1, math.ceil(cap / max(1, num_batches)))
        self.stats: dict = {}    # diagnostic -> layer -> [sum, sum of squares, count]
        self.samples: dict = {}  # diagnostic -> layer -> [arrays]

    def record(self, batch_index: int):
        for name, _, d, value in diagnostic_values(self.layers):
            v = value.astype(np.float64).reshape(-1)
            st = self.stats.setdefault(d, {}).setdefault(name, [0.0, 0.0, 0])
            st[0] += float(v.sum())
            st[1] += float((v * v).sum())
            st[2] += v.size
            stride = max(1, math.ceil(v.size / self.per_batch))
            self.samples.setdefault(d, {}).setdefault(name, []).append(
                v[(batch_index % stride)::stride].astype(np.float32))

    def summary(self) -> dict:
        """``{diagnostic: {layer: {"mean", "std"}}}``, diagnostics and layers in network order."""
        out = {}
        for d, layers in self.stats.items():
            for name, (s1, s2, n) in layers.items():
                if n:
                    mean = s1 / n
                    out.setdefault(d, {})[name] = {"mean": mean, "std": math.sqrt(max(s2 / n - mean * mean, 0.0))}
        return out

    def values(self) -> dict:
        """``{diagnostic: {layer: 1-D float32 sample}}``."""
        return {d: {n: np.concatenate(v) for n, v in layers.items() if v} for d, layers in self.samples.items()}


def out_of_memory_message(e: BaseException, device: str, batch_size: int) -> str:
    """One line for running out of memory: which memory, at which batch size, what to lower."""
    where = "GPU" if device == "gpu" else "host"
    smaller = max(1, batch_size // 2)
    first = str(e).splitlines()[0] if str(e) else type(e).__name__
    return (f"out of {where} memory at batch size {batch_size} ({first}); lower --batch-size"
            f" (e.g. --batch-size {smaller})")


def evaluate(model, loader, device: str = "cpu", criterion=None, progress: bool = False, desc: str = "eval",
             collect_diagnostics: bool = False, guard=None, *, collect_lam: bool | None = None) -> dict:
    """Loss and accuracy of ``model`` (put in eval mode) over every batch of ``loader`` (epoch 0).

    Returns ``{"loss", "acc", "n", "time", "diagnostics", "samples", "lam_stats", "lam"}``.
    With ``collect_diagnostics``, ``diagnostics`` maps each diagnostic the pooling layers keep
    (see :func:`~minignn.models.diagnostic_layers`: lam and rho of max-entropy pooling, a of mixed
    pooling, gate of gated pooling, p of LP pooling, gamma and alpha of DPP, logit of LIP) to
    ``{layer: {"mean", "std"}}`` over the set, and ``samples`` to ``{layer: 1-D sample of the
    values}``; both are empty without it or without such layers. ``lam_stats`` and ``lam`` are
    the lam entries of the two (``collect_lam`` is the older name of ``collect_diagnostics``).
    """
    if collect_lam is not None:
        collect_diagnostics = collect_lam
    criterion = criterion or SoftmaxCrossEntropy()
    model.eval()
    nb = loader.num_batches(0)
    rec = _DiagnosticRecorder(diagnostic_layers(model), nb) if collect_diagnostics else None
    loss_sum, correct, seen = 0.0, 0, 0
    t0 = time.perf_counter()
    with _progress(loader.num_samples, desc, progress) as bar:
        for i, (x, y) in enumerate(loader.batches(0)):
            x, y = backend.to_device(x, device), backend.to_device(y, device)
            logits = model.forward(x)
            n = int(y.shape[0])
            loss_sum += criterion.forward(logits, y) * n
            correct += SoftmaxCrossEntropy.accuracy_count(logits, y)
            seen += n
            if rec is not None:
                rec.record(i)
            bar.set_postfix(acc=f"{100.0 * correct / seen:.2f}%", refresh=False)
            bar.update(n)
            if guard is not None:
                guard.check()
    stats, samples = (rec.summary(), rec.values()) if rec else ({}, {})
    return {"loss": loss_sum / max(seen, 1), "acc": correct / max(seen, 1), "n": seen,
            "time": time.perf_counter() - t0,
            "diagnostics": stats, "samples": samples, "lam_stats": stats.get("lam", {}), "lam": samples.get("lam", {})}


def default_run_dir(config: TrainConfig, root: str = "runs") -> str:
    """``runs/<model>-<pool>-<dataset>-<YYYYmmdd-HHMMSS>`` (with a suffix if it exists)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = os.path.join(root, f"{config.model}-{config.pool}-{config.dataset}-{stamp}")
    path, k = base, 1
    while os.path.exists(path):
        k += 1
        path = f"{base}-{k}"
    return path


def record_data_root(config: TrainConfig) -> TrainConfig:
    """Fill in ``config.data_dir``, when unset, with the absolute data root a CIFAR dataset is read
    from (``$MINIGNN_DATA`` or the per-user cache), so the saved config reads the same data from
    any folder later. Synthetic data need none. Returns ``config``."""
    if config.data_dir is None and config.dataset != "synthetic":
        from .data import resolve_data_root
        config.data_dir = os.path.abspath(resolve_data_root(None))
    return config


def load_data(config: TrainConfig, progress: bool = True):
    """The dataset of ``config`` with its limits applied."""
    from .data import load_dataset
    ds = load_dataset(config.dataset, data_dir=config.data_dir, download=config.download,
                      check_counts=not config.allow_partial_data, progress=progress)
    if config.limit_train is not None or config.limit_test is not None:
        ds = ds.limit(config.limit_train if config.limit_train is None else min(config.limit_train, len(ds.y_train)),
                      config.limit_test if config.limit_test is None else min(config.limit_test, len(ds.y_test)))
    return ds


def model_from_config(config: TrainConfig, num_classes: int):
    """Seed ``minignn.init`` with the config's seed and build its model (the same weights every time)."""
    init.manual_seed(config.seed)
    return build_model(config.model, pool=config.pool, num_classes=num_classes, width=config.width,
                       pool_at=config.pool_at, other_pool=config.other_pool, **config.pool_kw)


# --- the trainer --------------------------------------------------------------------------------
class Trainer:
    """One training run (fresh, or resumed with :meth:`from_checkpoint`).

    Parameters
    ----------
    config : TrainConfig
    out : str or None
        The run folder (created); default :func:`default_run_dir`.
    progress : bool
        Progress bars (tqdm) on the training and evaluation loops.
    plots : bool
        Write the PNG plots at the end of the run.
    log : callable(str)
        Where the per-epoch lines and the summary go (default: print via tqdm.write).
    dataset : Dataset or None
        Use this dataset instead of loading ``config.dataset`` (limits still apply).
    overwrite : bool
        Allow a fresh run in a folder that already holds a run (its files are deleted when the
        run starts); otherwise that is a :class:`~minignn.runlock.RunFolderError`. A folder that
        another live run holds is always refused (:class:`~minignn.runlock.RunFolderLocked`).
    warm_up : bool
        Compile the kernels on the first batch before the clock starts (see :meth:`_warm_up`), so
        the first epoch's images/s and the run ETA are the training's; the results are the same
        either way.
    """

    def __init__(self, config: TrainConfig, out: str | None = None, progress: bool = True, plots: bool = True,
                 log=None, dataset=None, overwrite: bool = False, warm_up: bool = True, _state: dict | None = None,
                 _source: str | None = None):
        self.config = config.validate()
        self.warm_up = bool(warm_up)
        backend.check_device(config.device)  # the clear error for --device gpu without a GPU
        self.progress, self.plots = progress, plots
        self.log = log or _default_log
        self.out = out or default_run_dir(config)
        self.overwrite = bool(overwrite)
        self._source = _source
        # a resumed run owns its checkpoint's folder; a fresh one owns its folder once run() claims it
        self._owns_out = (_state is not None and _source is not None
                          and _same_path(os.path.dirname(os.path.abspath(_source)), self.out))
        self._last_good = None  # (epoch, step_in_epoch, path) of the last checkpoint written
        self._last_step = None  # (epoch, step, loss) of the last training step, for divergence messages
        check_unlocked(self.out)  # early, before loading data: the real check is run()'s lock
        if not self._owns_out and not self.overwrite:
            self._refuse_existing_run()
        ds = dataset if dataset is not None else load_data(config, progress)
        if dataset is None:
            record_data_root(config)
        if dataset is not None and (config.limit_train is not None or config.limit_test is not None):
            ds = ds.limit(config.limit_train, config.limit_test)
        self.dataset = ds
        self.model = model_from_config(config, ds.num_classes)
        _skip_input_grad(self.model)
        if config.device != "cpu":
            self.model.to(config.device)
        self.criterion = SoftmaxCrossEntropy(config.label_smoothing)
        self.optimizer = make_optimizer(config.optimizer, self.model.parameters(), lr=config.lr,
                                        momentum=config.momentum, nesterov=config.nesterov,
                                        weight_decay=config.weight_decay, betas=config.betas, eps=config.eps)
        self.train_loader = self._loader(ds.x_train, ds.y_train, config.batch_size, True)
        self.test_loader = self._loader(ds.x_test, ds.y_test, config.eval_batch_size or config.batch_size, False)
        self.steps_per_epoch = self.train_loader.num_batches(0)
        self.schedule = make_schedule(config.schedule, config.lr, config.epochs, self.steps_per_epoch,
                                      **config.schedule_kw)
        # the position: steps done in `epoch`; step_in_epoch == steps_per_epoch means "eval pending"
        self.epoch, self.step_in_epoch, self.global_step = 0, 0, 0
        self.accum = {"loss_sum": 0.0, "correct": 0, "seen": 0, "time": 0.0}
        self.history: list[dict] = []
        self.best = {"acc": -1.0, "epoch": 0}
        self._consistent = True
        self._last_samples: dict = {}  # diagnostic -> layer -> sample, of the last evaluation
        if _state is not None:
            self._restore(_state)

    def _loader(self, x, y, batch_size, train):
        from .data import BatchLoader
        c = self.config
        if c.device != "cpu":   # the images live on the device for the whole run: no host copy per batch
            x = backend.to_device(x, c.device)
        return BatchLoader(x, y, batch_size, train=train, augment=train and c.augment, mean=self.dataset.mean,
                           std=self.dataset.std, seed=c.seed, drop_last=train and c.drop_last)

    # --- checkpoints ----------------------------------------------------------------------------
    @classmethod
    def from_checkpoint(cls, path: str, device: str | None = None, out: str | None = None,
                        allow_partial_data: bool | None = None, **kw) -> "Trainer":
        """Resume the run saved in ``path`` (a checkpoint file, or a run folder holding
        ``checkpoint.npz``). ``device`` may differ from the saved one (results then agree to
        float rounding, not bit for bit); ``allow_partial_data=True`` accepts a smaller CIFAR copy
        even if the run was started without it. The run folder is the checkpoint's folder unless
        ``out`` is given (a folder holding another run then needs ``overwrite=True``). A
        checkpoint missing an entry a resume needs is a CheckpointError naming it and the file."""
        if os.path.isdir(path):
            path = os.path.join(path, CHECKPOINT)
        state = load_checkpoint(path)
        if "position" not in state:
            raise ValueError(f"resume: {path!r} holds model weights only (a best.npz?); resume from the run's"
                             f" {CHECKPOINT}")
        _entry(state, "config", path)
        config = TrainConfig.from_dict(state["config"])
        if config.optimizer not in OPTIMIZERS:
            raise CheckpointError(f"resume: {path!r}: config/optimizer: expected one of {tuple(OPTIMIZERS)}, got"
                                  f" {config.optimizer!r}")
        for key in _resume_entries(config.optimizer):  # all of them before anything is built
            _entry(state, key, path)
        if device is not None:
            config.device = device
        if allow_partial_data:
            config.allow_partial_data = True
        return cls(config, out=out or os.path.dirname(os.path.abspath(path)), _state=state, _source=path, **kw)

    def state(self) -> dict:
        return {
            "kind": "train",
            "config": self.config.to_dict(),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "schedule": {"name": self.schedule.name, "base_lr": self.schedule.base_lr,
                         "total_steps": self.schedule.total_steps, "options": self.schedule.options,
                         "step": self.global_step},
            "position": {"epoch": self.epoch, "step_in_epoch": self.step_in_epoch,
                         "global_step": self.global_step, "steps_per_epoch": self.steps_per_epoch},
            "rng": {"minignn": init.get_rng_state()},
            "accum": dict(self.accum),
            "history": list(self.history),
            "best": dict(self.best),
            "num_classes": self.dataset.num_classes,
            "classes": list(self.dataset.classes),
            **self._data_description(),
            "minignn_version": _version(),
            "saved_at": time.strftime("%Y-%m-%d %H:%M:%S"),
        }

    def _data_description(self) -> dict:
        """What a model needs to see new images as it saw the training data: the per-channel mean
        and std it was normalised with (on the [0, 1] pixel scale) and the image shape (C, H, W)."""
        ds = self.dataset
        return {"mean": [float(v) for v in np.asarray(ds.mean).reshape(-1)],
                "std": [float(v) for v in np.asarray(ds.std).reshape(-1)],
                "image_shape": [int(v) for v in ds.image_shape]}

    def _restore(self, s: dict):
        src = self._source or "the checkpoint"   # its entries were checked by from_checkpoint
        pos = s["position"]
        if pos["steps_per_epoch"] != self.steps_per_epoch:
            raise ValueError(f"resume: the checkpoint has {pos['steps_per_epoch']} steps per epoch but the data now"
                             f" give {self.steps_per_epoch}; resume with the same dataset and limits")
        for part, target in (("model", self.model), ("optimizer", self.optimizer)):
            try:
                target.load_state_dict(s[part])
            except (KeyError, ValueError, TypeError) as e:
                raise CheckpointError(f"resume: {src!r}: {part}: {e}") from e
        self.epoch, self.step_in_epoch, self.global_step = pos["epoch"], pos["step_in_epoch"], pos["global_step"]
        init.set_rng_state(s["rng"]["minignn"])
        self.accum = dict(s["accum"])
        self.history = list(s["history"])
        self.best = dict(s["best"])
        if self._owns_out and os.path.exists(self.checkpoint_path):
            self._last_good = (self.epoch, self.step_in_epoch, self.checkpoint_path)

    def save_checkpoint(self) -> str:
        """Write ``checkpoint.npz`` at the current position; a TrainingDiverged (writing nothing)
        if a parameter, buffer or momentum buffer holds inf or NaN."""
        bad = _first_non_finite(self.model, self.optimizer)
        if bad is not None:
            epoch, step, loss = self._last_step or (self.epoch + 1, self.step_in_epoch, None)
            after = f" (the step's training loss was {loss:.6g})" if loss is not None else ""
            raise self._diverged(epoch, step, f"{bad} holds inf or NaN after the update{after}")
        os.makedirs(self.out, exist_ok=True)
        path = save_checkpoint(os.path.join(self.out, CHECKPOINT), self.state())
        self._last_good = (self.epoch, self.step_in_epoch, path)
        return path

    def _diverged(self, epoch: int, step: int, what: str) -> TrainingDiverged:
        c, nb = self.config, self.steps_per_epoch
        fix = f"lower --lr (it is {c.lr:g}, {self.optimizer.lr:.3g} at this step)"
        if c.weight_decay:
            fix += f" or --weight-decay ({c.weight_decay:g})"
        if self._last_good is not None:
            e, s, path = self._last_good
            where = f"end of epoch {e}" if s == 0 and e > 0 else f"epoch {e + 1}, step {s}/{nb}"
            kept = f"the last good checkpoint, {path} ({where}), is kept"
        else:
            kept = "no checkpoint had been written yet"
        return TrainingDiverged(f"training diverged at epoch {epoch}, step {step}/{nb}: {what}; {fix}; {kept}")

    @property
    def checkpoint_path(self) -> str:
        return os.path.join(self.out, CHECKPOINT)

    @property
    def finished(self) -> bool:
        return self.epoch >= self.config.epochs

    # --- one step -------------------------------------------------------------------------------
    def train_step(self, x, y) -> tuple[float, int]:
        """One optimizer step on a batch, in training mode (batch statistics, dropout); returns (mean
        loss, number correct)."""
        self.model.train()
        self.schedule.apply(self.optimizer, self.global_step)
        self.optimizer.zero_grad()
        logits = self.model.forward(x)
        loss = self.criterion.forward(logits, y)
        correct = SoftmaxCrossEntropy.accuracy_count(logits, y)
        self.model.backward(self.criterion.backward())
        self.optimizer.step()
        return loss, correct

    # --- the loop -------------------------------------------------------------------------------
    def run(self) -> dict:
        """Train to the end (from the current position); returns the summary dict.

        Holds the run folder's lock throughout (see the module docstring). Raises
        :class:`Interrupted` after Ctrl-C or SIGTERM (a checkpoint saved), :class:`TrainingDiverged`
        on an inf/NaN loss, :class:`~minignn.runlock.RunFolderError` for a folder it may not use."""
        lock = self._claim_out()
        try:
            return self._run()
        finally:
            lock.release()

    def _run(self) -> dict:
        self._write_run_files()
        c = self.config
        if self.finished:
            self.log(f"run already finished ({c.epochs} epochs): {self.out}")
            return self._finish()
        self.log(self._banner())
        with _InterruptGuard(self.log) as guard:
            try:
                if self.warm_up:
                    self._warm_up()
                run_t0 = time.perf_counter()  # after compiling: the ETA is the training's
                while not self.finished:
                    self._train_epoch(guard)
                    self._end_epoch(guard, run_t0)
            except KeyboardInterrupt as e:
                self._on_interrupt(getattr(e, "signum", signal.SIGINT))
                raise
            except MemoryError as e:   # CuPy's OutOfMemoryError is one; the last checkpoint stays
                raise RuntimeError(out_of_memory_message(e, c.device, c.batch_size)) from e
        return self._finish()

    # --- the run folder -------------------------------------------------------------------------
    def _refuse_existing_run(self):
        found = [f for f in _RUN_MARKERS if os.path.exists(os.path.join(self.out, f))]
        if not found:
            return
        how = (f"continue it with: minignn train --resume {self.out}" if CHECKPOINT in found
               else f"it has no {CHECKPOINT} to --resume from")
        raise RunFolderError(f"{self.out} already holds a run ({', '.join(found)}); {how}; or pass --overwrite"
                             f" (Trainer(overwrite=True)) to replace it; or choose another --out")

    def _claim_out(self) -> RunLock:
        """Lock the run folder (refusing one a live run holds, or one holding another run unless
        ``overwrite``), delete the old run's files when overwriting, and the temporary files a
        killed writer left. Returns the held lock."""
        lock = RunLock(self.out).acquire()
        try:
            if not self._owns_out:
                if not self.overwrite:
                    self._refuse_existing_run()
                else:
                    for f in run_files():
                        if os.path.exists(os.path.join(self.out, f)):
                            os.unlink(os.path.join(self.out, f))
                self._owns_out = True
            stale = remove_stale_temporaries(self.out)
            if stale:
                self.log(f"removed {len(stale)} temporary file(s) an interrupted run left in {self.out}:"
                         f" {', '.join(stale)}")
        except BaseException:
            lock.release()
            raise
        return lock

    def _train_epoch(self, guard):
        c, e = self.config, self.epoch
        nb = self.steps_per_epoch
        if self.step_in_epoch >= nb:
            return
        self.model.train()
        bs = c.batch_size
        done_imgs = min(self.step_in_epoch * bs, self.train_loader.num_samples)
        with _progress(self.train_loader.num_samples, f"epoch {e + 1}/{c.epochs} train", self.progress) as bar:
            bar.update(done_imgs)
            t_last = time.perf_counter()
            for x, y in self.train_loader.batches(e, start=self.step_in_epoch):
                x, y = backend.to_device(x, c.device), backend.to_device(y, c.device)
                self._consistent = False
                with np.errstate(over="ignore", invalid="ignore", divide="ignore"):  # a diverging step is
                    loss, correct = self.train_step(x, y)                           # reported below, once
                loss = float(loss)
                self._last_step = (e + 1, self.step_in_epoch + 1, loss)
                if not math.isfinite(loss):
                    raise self._diverged(e + 1, self.step_in_epoch + 1, f"the training loss is {loss}")
                n = int(y.shape[0])
                self.step_in_epoch += 1
                self.global_step += 1
                self.accum["loss_sum"] += loss * n
                self.accum["correct"] += correct
                self.accum["seen"] += n
                now = time.perf_counter()
                self.accum["time"] += now - t_last
                t_last = now
                self._consistent = True
                bar.set_postfix(loss=f"{self.accum['loss_sum'] / self.accum['seen']:.3f}",
                                acc=f"{100.0 * self.accum['correct'] / self.accum['seen']:.1f}%",
                                lr=f"{self.optimizer.lr:.4g}", refresh=False)
                bar.update(n)  # after the postfix, so the bar shows this step's figures
                if c.checkpoint_every and self.global_step % c.checkpoint_every == 0 and self.step_in_epoch < nb:
                    self.save_checkpoint()
                guard.check()
                t_last = time.perf_counter()  # checkpoint writes do not count as training time

    def _end_epoch(self, guard, run_t0):
        c, e = self.config, self.epoch
        ev = evaluate(self.model, self.test_loader, c.device, self.criterion, progress=self.progress,
                      desc=f"epoch {e + 1}/{c.epochs} eval", collect_diagnostics=True, guard=guard)
        a = self.accum
        rec = {
            "epoch": e + 1,
            "step": self.global_step,
            "lr": self.optimizer.lr,
            "train_loss": a["loss_sum"] / max(a["seen"], 1),
            "train_acc": a["correct"] / max(a["seen"], 1),
            "test_loss": ev["loss"],
            "test_acc": ev["acc"],
            "train_time": a["time"],
            "eval_time": ev["time"],
            "epoch_time": a["time"] + ev["time"],
            "train_images_per_s": a["seen"] / a["time"] if a["time"] > 0 else None,
        }
        rec.update(ev["diagnostics"])  # "lam": {layer: {"mean", "std"}}, "gate": ..., one key per diagnostic
        self._last_samples = ev["samples"]
        self.history.append(rec)
        improved = ev["acc"] > self.best["acc"]
        if improved:
            self.best = {"acc": ev["acc"], "epoch": e + 1}
        self.epoch, self.step_in_epoch = e + 1, 0
        self.accum = {"loss_sum": 0.0, "correct": 0, "seen": 0, "time": 0.0}
        self.save_checkpoint()
        if improved:
            save_checkpoint(os.path.join(self.out, BEST), {
                "kind": "weights", "config": self.config.to_dict(), "model": self.model.state_dict(),
                "epoch": e + 1, "test_acc": ev["acc"], "num_classes": self.dataset.num_classes,
                "classes": list(self.dataset.classes), **self._data_description()})
        self._write_metrics()
        for d, sample in ev["samples"].items():
            atomic_write(os.path.join(self.out, f"{d}.npz"), lambda f, sample=sample: np.savez(f, **sample))
        elapsed = time.perf_counter() - run_t0
        left = c.epochs - self.epoch
        eta = f", run ETA {_fmt_time(elapsed / max(1, len(self.history)) * left)}" if left else ""
        ips = rec["train_images_per_s"]
        speed = f" ({ips:.0f} img/s)" if ips else ""
        self.log(f"epoch {e + 1}/{c.epochs}  train loss {rec['train_loss']:.4f} acc {100 * rec['train_acc']:.2f}%"
                 f"  test loss {rec['test_loss']:.4f} acc {100 * rec['test_acc']:.2f}%"
                 f"  lr {rec['lr']:.4g}  {rec['epoch_time']:.1f} s{speed}{eta}")

    def _on_interrupt(self, signum: int = signal.SIGINT):
        by = "" if signum == signal.SIGINT else f" by {_signal_name(signum)}"
        if self._consistent:
            path = self.save_checkpoint()
            self.log(f"\ninterrupted{by}: saved {path} at epoch {self.epoch + 1}, step {self.step_in_epoch}"
                     f"/{self.steps_per_epoch}\nresume with: minignn train --resume {path}")
        else:
            prev = self.checkpoint_path if os.path.exists(self.checkpoint_path) else None
            self.log("\ninterrupted inside a training step: the model is between two steps, so no checkpoint"
                     " was written" + (f"; the last one is {prev}" if prev else ""))

    # --- files and summary ----------------------------------------------------------------------
    def _write_run_files(self):
        _write_text_atomic(os.path.join(self.out, CONFIG), dumps_json(self.config.to_dict(), indent=2) + "\n")
        # the checkpoint's history is the truth: rewrite metrics.jsonl from it (drops lines an
        # interrupted run may have written after its last checkpoint)
        self._write_metrics()

    def _write_metrics(self):
        """``metrics.jsonl``, one line per epoch of the history, and the same as a table in
        ``metrics.csv`` (see :func:`metrics_csv`), each rewritten whole and atomically (a full disk
        or a kill mid-write keeps the previous file)."""
        _write_text_atomic(os.path.join(self.out, METRICS), "".join(dumps_json(r) + "\n" for r in self.history))
        _write_text_atomic(os.path.join(self.out, METRICS_CSV), metrics_csv(self.history))

    def _warm_up(self):
        """Compile the kernels before the clock starts: one training step's forward and backward
        and one evaluation forward on the first batch, then the model, its gradients and the random
        state put back exactly as they were (the run's results do not change). Says "compiling
        kernels" when this takes more than a few seconds (a fresh install: about a minute)."""
        if self.step_in_epoch >= self.steps_per_epoch:
            return
        c = self.config
        x, y = self.train_loader.batch(self.epoch, self.step_in_epoch)
        x, y = backend.to_device(x, c.device), backend.to_device(y, c.device)
        saved, rng, was_training = self.model.state_dict(), init.get_rng_state(), self.model.training
        done = threading.Event()
        t0 = time.perf_counter()
        said = []

        def announce():
            if not done.wait(_COMPILE_NOTICE_S):
                said.append(True)
                self.log("compiling kernels (first run only, about a minute)...")
        notice = threading.Thread(target=announce, daemon=True)
        notice.start()
        try:
            with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
                self.model.train()
                logits = self.model.forward(x)
                self.criterion.forward(logits, y)
                self.model.backward(self.criterion.backward())
                self.model.eval()
                self.model.forward(x)
        finally:
            done.set()
            notice.join()
            self.model.load_state_dict(saved)
            init.set_rng_state(rng)
            self.optimizer.zero_grad()
            self.model.train(was_training)
        if said:
            self.log(f"kernels ready in {time.perf_counter() - t0:.0f} s (cached for the next runs)")

    def _banner(self) -> str:
        c, ds = self.config, self.dataset
        where = (f"resuming at epoch {self.epoch + 1}, step {self.step_in_epoch}/{self.steps_per_epoch}"
                 if self.global_step else "starting")
        pool = c.pool if c.pool_at is None else (f"{c.pool} at layer(s) {','.join(map(str, c.pool_at))},"
                                                 f" {c.other_pool} elsewhere")
        return (f"minignn train: {c.model} (pool={pool}, {count_parameters(self.model):,} parameters) on {ds.name}"
                f" ({len(ds.y_train)} train / {len(ds.y_test)} test images), {c.epochs} epochs x"
                f" {self.steps_per_epoch} steps of {c.batch_size}, {c.schedule} lr {c.lr}, device {c.device};"
                f" {where}\nrun folder: {self.out}")

    def _lr_curve(self, points: int = 400):
        """The schedule's rate at (up to ``points``) evenly spaced steps of the run done so far, as
        (fractional epochs, rates): the schedule is a pure function of the step."""
        done = self.global_step
        if done < 1:
            return None
        steps = np.unique(np.linspace(0, done - 1, min(points, done)).round().astype(int))
        return (steps + 1) / self.steps_per_epoch, [self.schedule.lr_at(int(t)) for t in steps]

    def _finish(self) -> dict:
        h = self.history
        files = [os.path.join(self.out, f) for f in (METRICS, CHECKPOINT, BEST)]
        if self.plots and h:
            from . import plots
            files.append(plots.plot_curves(h, os.path.join(self.out, "curves.png"),
                                           title=f"{self.config.model} / {self.config.pool} / {self.dataset.name}",
                                           lr_curve=self._lr_curve()))
            samples = dict(self._last_samples)
            if not samples:  # resumed after the last epoch: the samples the run wrote
                for d in diagnostic_names():
                    path = os.path.join(self.out, f"{d}.npz")
                    if os.path.exists(path):
                        with np.load(path) as z:
                            samples[d] = {k: z[k] for k in z.files}
            for d, values in samples.items():
                if values:
                    files.append(plots.plot_diagnostic_histograms(
                        values, os.path.join(self.out, f"{d}.png"), name=d,
                        title=f"{d} per pooling layer ({self.config.model}, {self.config.pool}, test set)"))
        summary = {
            "run_dir": self.out,
            "epochs": len(h),
            "final_test_acc": h[-1]["test_acc"] if h else None,
            "best_test_acc": self.best["acc"] if h else None,
            "best_epoch": self.best["epoch"] if h else None,
            "final_train_loss": h[-1]["train_loss"] if h else None,
            "mean_epoch_time": float(np.mean([r["epoch_time"] for r in h])) if h else None,
            "mean_train_time": float(np.mean([r["train_time"] for r in h])) if h else None,
            "files": [f for f in files if os.path.exists(f)],
        }
        _write_text_atomic(os.path.join(self.out, SUMMARY), dumps_json(summary, indent=2) + "\n")
        if h:
            self.log(f"\ndone: final test acc {100 * summary['final_test_acc']:.2f}%, best"
                     f" {100 * summary['best_test_acc']:.2f}% (epoch {summary['best_epoch']}),"
                     f" {summary['mean_epoch_time']:.1f} s per epoch"
                     f" ({summary['mean_train_time']:.1f} s of it training)\nresults in {self.out}/: "
                     + ", ".join(os.path.basename(f) for f in summary["files"]))
        return summary


_COMPILE_NOTICE_S = 3.0  # a warm-up longer than this is compiling (a cached start takes ~1 s)


def metrics_csv(history) -> str:
    """The per-epoch records as CSV (a header, then one row per epoch): the scalar fields in a
    fixed order, then ``<diagnostic>/<layer>/mean`` and ``<diagnostic>/<layer>/std`` for each
    diagnostic the records hold (``lam/pool1/mean``, ``gate/pool2/std``, ...: every field whose
    value is a ``{layer: {"mean", "std"}}`` mapping); an absent or non-finite value is an empty cell."""
    import csv
    import io
    cols = ["epoch", "step", "lr", "train_loss", "train_acc", "test_loss", "test_acc", "train_time", "eval_time",
            "epoch_time", "train_images_per_s"]
    diagnostics = list(dict.fromkeys(k for r in history for k, v in r.items() if isinstance(v, dict)))
    extra = [k for r in history for k in r if k not in cols and k not in diagnostics]
    cols += list(dict.fromkeys(extra))
    diag_cols = [(d, n, stat) for d in diagnostics
                 for n in dict.fromkeys(name for r in history for name in r.get(d, {}))
                 for stat in ("mean", "std")]

    def cell(v):
        if v is None or (isinstance(v, float) and not math.isfinite(v)):
            return ""
        return repr(v) if isinstance(v, float) else v
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(cols + [f"{d}/{n}/{stat}" for d, n, stat in diag_cols])
    for r in history:
        w.writerow([cell(r.get(k)) for k in cols]
                   + [cell(r.get(d, {}).get(n, {}).get(stat)) for d, n, stat in diag_cols])
    return buf.getvalue()


def _skip_input_grad(model):
    """Training never needs d loss / d image: switch off the input gradient of the module the
    model names as the one that sees the data (``model.input_layer``, a name from
    ``model.named_modules()``; see :mod:`minignn.models`), when that module has the switch
    (``needs_input_grad``). A model that names none keeps every input gradient. Returns the module
    switched off, or None."""
    name = getattr(model, "input_layer", None)
    if name is None:
        return None
    mods = dict(model.named_modules())
    if name not in mods:
        raise ValueError(f"{type(model).__name__}.input_layer: expected the name of one of its modules, got {name!r}"
                         f" (names: {', '.join(repr(n) for n in list(mods)[1:6])}, ...)")
    m = mods[name]
    if not hasattr(m, "needs_input_grad"):
        return None
    m.needs_input_grad = False
    return m


def _first_non_finite(model, optimizer=None) -> str | None:
    """``"parameter 'fc.weight'"`` (or buffer, or momentum buffer) for the first array holding inf
    or NaN, else None."""
    def finite(a):
        return a.dtype.kind != "f" or bool(backend.get_array_module(a).isfinite(a).all())
    for name, p in model.named_parameters():
        if not finite(p.data):
            return f"parameter {name!r}"
    for name, b in model.named_buffers():
        if hasattr(b, "dtype") and not finite(b):
            return f"buffer {name!r}"
    if optimizer is not None:
        names = [n for n, _ in model.named_parameters()]
        for i, label, b in optimizer.state_arrays():
            if not finite(b):
                return f"the {label} of {names[i] if i < len(names) else i!r}"
    return None


def _resume_entries(optimizer: str) -> tuple:
    """The entries a resume reads (``"a/b"`` for ``state[a][b]``), for a run with ``optimizer``."""
    return ("config", "model", "optimizer", *(f"optimizer/{k}" for k in OPTIMIZERS[optimizer]._STATE_KEYS),
            *(f"position/{k}" for k in ("epoch", "step_in_epoch", "global_step", "steps_per_epoch")),
            "rng/minignn", "accum", "history", "best")


def _entry(state: dict, key: str, source: str):
    """``state[a][b]`` for ``key == "a/b"``, or a CheckpointError naming the missing entry and the file."""
    cur = state
    parts = key.split("/")
    for i, part in enumerate(parts):
        if not isinstance(cur, dict) or part not in cur:
            missing = "/".join(parts[:i + 1])
            raise CheckpointError(f"resume: {source!r} has no {missing!r} entry, which a resume needs (not a"
                                  f" complete minignn training checkpoint)")
        cur = cur[part]
    return cur


def _same_path(a: str, b: str) -> bool:
    return os.path.realpath(a) == os.path.realpath(b)


def _default_log(msg: str):
    from tqdm import tqdm
    tqdm.write(msg)


def _version() -> str:
    from . import __version__
    return __version__


def train(config: TrainConfig | None = None, out: str | None = None, resume: str | None = None, **kw) -> dict:
    """Run (or resume) a training run; returns the summary. ``kw`` go to :class:`Trainer`."""
    if resume is not None:
        return Trainer.from_checkpoint(resume, out=out, **kw).run()
    return Trainer(config or TrainConfig(), out=out, **kw).run()
