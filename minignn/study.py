"""``minignn study``: the GFGP paper's ablations on CIFAR, with seeds and intervals.

A *study* is a list of variants (a pooling and its options), each trained with several seeds.
Every (variant, seed) is an ordinary ``minignn train`` run folder under ``DIR/runs/``, so each one
can be inspected, evaluated and resumed on its own::

    minignn study table1a --seeds 3 --jobs 2 --data-dir ../shared/data --out studies/table1a

The studies (:data:`STUDIES`; the baseline first):

* ``table1a``: the form of lam: max pooling, maxent (a constant lam = 1), maxent-param (lam per
  channel), gfgp (lam per sample and channel);
* ``table1b``: global against local statistics: gfgp, gfgp-local;
* ``table1c``: the position prior rho: gfgp without it, with a trained rho, with a predicted rho;
* ``table2a``: GFGP's statistics t: avg, avg+std, max;
* ``table2b``: GFGP's mapping: MLP with D = C/2 hidden units (the default), SLP, D = C/4, D = C;
* ``table2c``: GFGP's activation: sigmoid (the default), softplus, tanh, identity;
* ``table4``: GFGP's depth: max pooling everywhere, then GFGP at each single pooling layer, at
  the deeper ones (the last two, three, ...) and at all of them, max pooling elsewhere (the
  model's number of pooling layers decides the list: tiny has 3, vgg11 5, resnet20 2);
* ``table6``: every registered pooling (``minignn pools``), max pooling the baseline;
* ``all``: every study above; a run two studies share (``gfgp`` with its defaults) is trained once.

Running
-------
Re-running a study skips its finished runs and resumes interrupted ones from their checkpoints.
Runs execute on ``jobs`` local worker processes (each a ``minignn train`` subprocess with the
machine's cores split between them: ``NUMBA_NUM_THREADS`` and the BLAS thread counts), or on an
existing Dask distributed cluster (``scheduler="tcp://host:8786"``, the optional extra
``minignn[cluster]``), whose workers must see ``DIR`` at the same path (a shared file system)
and have minignn installed; there each run uses its worker machine's cores divided by the
worker's thread count. The run folder's lock keeps two workers off one run. Ctrl-C (or SIGTERM)
stops the local runs, each saving a checkpoint, and writes the results so far.

Results
-------
``DIR/results.json``, ``DIR/results.md`` and ``DIR/results.png``: per variant, the final test
accuracy of every seed, their mean, the 95% Student t interval of the mean (none for one seed),
and the difference to the study's baseline with its interval, paired over the seeds both have
(see :mod:`minignn.stats`). A header states model, epochs, data, seeds, the commit, the machine
and the time the runs took. The files are written atomically at the end of every invocation
(also an interrupted one, then marked incomplete), so an interrupted write never destroys the
earlier results.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import signal
import subprocess
import sys
import threading
import time
from typing import Callable, Sequence

from .checkpoint import atomic_write, dumps_json
from .stats import difference, mean_interval

__all__ = ["Variant", "Study", "STUDIES", "study_names", "get_studies", "run_study", "StudyError",
           "results_of", "run_one"]

CONFIGS = "configs"
RUNS = "runs"
RESULTS_JSON, RESULTS_MD, RESULTS_PNG = "results.json", "results.md", "results.png"
#: the settings a finished or partial run may differ in from the study's (how it ran, not what)
_HOW_IT_RAN = ("device", "checkpoint_every", "download", "data_dir", "allow_partial_data")


class StudyError(RuntimeError):
    """A study that cannot run as asked (a run folder holding a different run, a failed run...)."""


@dataclasses.dataclass(frozen=True)
class Variant:
    """One row of a study: a pooling with options, optionally at some pooling layers only."""

    label: str
    pool: str
    pool_kw: tuple = ()          # ((key, value), ...), sorted
    pool_at: tuple | None = None  # 1-based pooling layers that get `pool` (max pooling elsewhere)

    @property
    def run_id(self) -> str:
        """The run folder's name without the seed: the same settings give the same name in every
        study (``gfgp``, ``gfgp.stat=max``, ``gfgp@2-3``)."""
        s = self.pool
        if self.pool_kw:
            s += "." + ".".join(f"{k}={v}" for k, v in self.pool_kw)
        if self.pool_at is not None:
            s += "@" + "-".join(str(i) for i in self.pool_at)
        return s

    def settings(self) -> dict:
        return {"pool": self.pool, "pool_kw": dict(self.pool_kw),
                "pool_at": list(self.pool_at) if self.pool_at is not None else None, "other_pool": "max"}


def _v(label: str, pool: str, pool_at=None, **kw) -> Variant:
    return Variant(label, pool, tuple(sorted(kw.items())), tuple(pool_at) if pool_at is not None else None)


@dataclasses.dataclass(frozen=True)
class Study:
    name: str
    title: str
    variants: tuple        # the baseline first
    baseline: str          # a variant's label

    def runs(self, seeds: Sequence[int]) -> list[tuple[Variant, int]]:
        return [(v, s) for v in self.variants for s in seeds]


def _pool_layer_count(model: str) -> int:
    from . import init
    from .models import build_model, local_pools
    state = init.get_rng_state()
    try:
        return len(local_pools(build_model(model, pool="max", width=0.0625)))
    finally:
        init.set_rng_state(state)


def _table4(model: str) -> Study:
    n = _pool_layer_count(model)
    vs = [_v("max everywhere", "max")]
    vs += [_v(f"gfgp at {i}", "gfgp", pool_at=(i,)) for i in range(1, n + 1)]
    vs += [_v(f"gfgp at {i}-{n}", "gfgp", pool_at=tuple(range(i, n + 1))) for i in range(n - 1, 1, -1)]
    vs += [_v(f"gfgp at all ({n})", "gfgp")]
    return Study("table4", "Table 4: GFGP at some pooling layers (max pooling elsewhere)", tuple(vs), "max everywhere")


def _table6(model: str) -> Study:
    from .layers.registry import POOLINGS
    names = ["max"] + [n for n in POOLINGS if n != "max"]
    return Study("table6", "Table 6: the pooling zoo", tuple(_v(n, n) for n in names), "max")


_FIXED = {
    "table1a": Study("table1a", "Table 1a: the form of lam (rho = 0)", (
        _v("max", "max"), _v("maxent (lam = 1)", "maxent"), _v("maxent-param", "maxent-param"),
        _v("gfgp", "gfgp")), "max"),
    "table1b": Study("table1b", "Table 1b: global against local statistics", (
        _v("gfgp (global avg)", "gfgp"), _v("gfgp-local (local avg)", "gfgp-local")), "gfgp (global avg)"),
    "table1c": Study("table1c", "Table 1c: the position prior rho", (
        _v("gfgp (rho = 0)", "gfgp"), _v("gfgp, trained rho", "gfgp", prior="param"),
        _v("gfgp, predicted rho", "gfgp", prior="predicted")), "gfgp (rho = 0)"),
    "table2a": Study("table2a", "Table 2a: GFGP's statistics t", (
        _v("avg", "gfgp"), _v("avg+std", "gfgp", stat="avg+std"), _v("max", "gfgp", stat="max")), "avg"),
    "table2b": Study("table2b", "Table 2b: GFGP's mapping", (
        _v("MLP D = C/2", "gfgp"), _v("SLP", "gfgp", mlp="slp"), _v("MLP D = C/4", "gfgp", hidden=0.25),
        _v("MLP D = C", "gfgp", hidden=1.0)), "MLP D = C/2"),
    "table2c": Study("table2c", "Table 2c: GFGP's activation s", (
        _v("sigmoid", "gfgp"), _v("softplus", "gfgp", activation="softplus"),
        _v("tanh", "gfgp", activation="tanh"), _v("identity", "gfgp", activation="identity")), "sigmoid"),
}
_BY_MODEL: dict[str, Callable[[str], Study]] = {"table4": _table4, "table6": _table6}
STUDIES = tuple(_FIXED) + ("table4", "table6")


def study_names() -> tuple[str, ...]:
    """Every NAME ``minignn study`` takes: the studies and ``all``."""
    return STUDIES + ("all",)


def get_studies(name: str, model: str = "tiny") -> list[Study]:
    """The studies ``name`` stands for (``all``: every one), for ``model``."""
    if name == "all":
        return [s for n in STUDIES for s in get_studies(n, model)]
    if name in _FIXED:
        return [_FIXED[name]]
    if name in _BY_MODEL:
        return [_BY_MODEL[name](model)]
    raise ValueError(f"study: expected one of {study_names()}, got {name!r}")


# --- one run --------------------------------------------------------------------------------------
def run_dir(out: str, variant: Variant, seed: int) -> str:
    return os.path.join(out, RUNS, f"{variant.run_id}-seed{seed}")


def _read_json(path: str):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _config_difference(want: dict, have: dict) -> list[str]:
    from .train import TrainConfig
    keys = sorted((set(want) | set(have)) - set(_HOW_IT_RAN))
    # a config.json written before a setting existed ran with that setting's default
    defaults = json.loads(dumps_json(TrainConfig().to_dict()))
    return [f"{k}: {have.get(k, defaults.get(k))!r} there, {want.get(k)!r} in this study" for k in keys
            if have.get(k, defaults.get(k)) != want.get(k)]


def run_state(path: str, config: dict) -> str:
    """``"done"`` (finished: summary.json and every epoch), ``"partial"`` (a checkpoint to resume),
    ``"stale"`` (a start that saved no checkpoint) or ``"new"``; a StudyError when the folder
    holds a run with other settings."""
    return _inspect(path, config)[0]


def _inspect(path: str, config: dict) -> tuple[str, list[dict]]:
    """:func:`run_state` and the run's metrics history (read once; empty unless done)."""
    from .train import CHECKPOINT, CONFIG, METRICS, SUMMARY
    have = _read_json(os.path.join(path, CONFIG))
    config = json.loads(dumps_json(config))  # as config.json holds it (tuples as lists)
    if have is None:
        return ("stale" if os.path.isdir(path) and os.listdir(path) else "new"), []
    diff = _config_difference(config, have)
    if diff:
        raise StudyError(f"{path} holds a run with other settings ({'; '.join(diff)}); use another --out for"
                         f" these settings, or delete that run folder")
    if _read_json(os.path.join(path, SUMMARY)) is not None:
        hist = _history(os.path.join(path, METRICS))
        if len(hist) >= int(config["epochs"]):
            return "done", hist
    return ("partial" if os.path.exists(os.path.join(path, CHECKPOINT)) else "stale"), []


def _history(path: str) -> list[dict]:
    try:
        with open(path, encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]
    except (OSError, ValueError):
        return []


def _thread_env(threads: int | None) -> dict:
    env = dict(os.environ)
    if threads is not None:
        for k in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            env[k] = str(int(threads))
    return env


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _worker_threads() -> int | None:
    """On a Dask worker: this machine's cores divided by the worker's thread count."""
    try:
        from distributed import get_worker
        w = get_worker()
    except (ImportError, ValueError):
        return None
    n = getattr(w, "nthreads", None) or getattr(getattr(w, "state", None), "nthreads", None) or 1
    return max(1, _cores() // int(n))


_LIVE: set = set()          # the local runs' Popen objects (to forward a stop signal)
_LIVE_LOCK = threading.Lock()


def run_one(config: dict, path: str, config_file: str, threads: int | None = None) -> dict:
    """Train (or resume) one run in a ``minignn train`` subprocess; its output goes to the run
    folder's ``train.log``. Returns ``{"path", "returncode", "wall_s"}``. Runs on the study's
    machine or on a Dask worker (``threads=None`` there: see :func:`_worker_threads`)."""
    if threads is None:
        threads = _worker_threads()
    from .runlock import RunFolderLocked, check_unlocked
    state = run_state(path, config)
    if state == "done":
        return {"path": path, "returncode": 0, "wall_s": 0.0}
    try:
        check_unlocked(path)   # another worker (a second study on the same folder) trains it now
    except RunFolderLocked as e:
        return {"path": path, "returncode": None, "wall_s": 0.0, "locked": str(e)}
    os.makedirs(path, exist_ok=True)
    cmd = [sys.executable, "-m", "minignn", "train", "--no-progress"]
    if state == "partial":
        cmd += ["--resume", path]
    else:
        cmd += ["--config", config_file, "--out", path] + (["--overwrite"] if state == "stale" else [])
    t0 = time.perf_counter()
    with open(os.path.join(path, "train.log"), "a", encoding="utf-8") as log:
        log.write(f"$ {' '.join(cmd)}\n")
        log.flush()
        # a session of its own: a terminal's Ctrl-C reaches the study, which forwards one signal
        p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=_thread_env(threads),
                             stdin=subprocess.DEVNULL, start_new_session=True)
        with _LIVE_LOCK:
            _LIVE.add(p)
        try:
            rc = p.wait()
        finally:
            with _LIVE_LOCK:
                _LIVE.discard(p)
    return {"path": path, "returncode": rc, "wall_s": time.perf_counter() - t0}


def _stop_live(signum: int):
    with _LIVE_LOCK:
        live = list(_LIVE)
    for p in live:
        try:
            p.send_signal(signum)
        except (OSError, ValueError):
            pass


# --- results --------------------------------------------------------------------------------------
def _run_result(path: str, config: dict) -> dict | None:
    """The finished run's final test accuracy (%) and its time, or None when it is not finished."""
    try:
        state, hist = _inspect(path, config)
    except StudyError:
        return None
    if state != "done":
        return None
    hist = hist[: int(config["epochs"])]
    acc = hist[-1].get("test_acc")
    if acc is None:
        return None
    return {"test_acc": 100.0 * float(acc), "time_s": float(sum(h.get("epoch_time") or 0.0 for h in hist))}


def _r(x, nd: int = 4):
    return None if x is None else round(float(x), nd)


def _finished(studies, seeds, out: str, configs: dict) -> dict:
    """``(run id, seed) -> _run_result`` of every distinct run of the studies, each read once."""
    done = {}
    for st in studies:
        for v, s in st.runs(seeds):
            if (v.run_id, s) not in done:
                done[(v.run_id, s)] = _run_result(run_dir(out, v, s), configs[(v.run_id, s)])
    return done


def results_of(studies: Sequence[Study], seeds: Sequence[int], out: str, configs: dict,
               finished: dict | None = None) -> list[dict]:
    """Per study, per variant: the finished runs' accuracies (%), mean, 95% interval and the
    difference to the baseline (paired over common seeds). ``finished``: the runs' results as
    :func:`_finished` gives them (read from the run folders when None)."""
    if finished is None:
        finished = _finished(studies, seeds, out, configs)
    tables = []
    for st in studies:
        per = {}
        for v in st.variants:
            accs = {}
            runs = []
            for s in seeds:
                res = finished[(v.run_id, s)]
                runs.append({"seed": s, "run": os.path.relpath(run_dir(out, v, s), out),
                             "test_acc": _r(res["test_acc"]) if res else None})
                if res:
                    accs[s] = res["test_acc"]
            row = {"label": v.label, **v.settings(), "runs": runs, "n": len(accs)}
            if accs:
                m, lo, hi = mean_interval(list(accs.values()))
                row.update(mean=_r(m), low=_r(lo), high=_r(hi))
            else:
                row.update(mean=None, low=None, high=None)
            per[v.label] = (row, accs)
        base = per[st.baseline][1]
        rows = []
        for v in st.variants:
            row, accs = per[v.label]
            if v.label != st.baseline and accs and base:
                d = difference(accs, base)
                row["diff"] = {"mean": _r(d["mean"]), "low": _r(d["low"]), "high": _r(d["high"]),
                               "method": d["method"]}
            else:
                row["diff"] = None
            rows.append(row)
        tables.append({"name": st.name, "title": st.title, "baseline": st.baseline, "variants": rows})
    return tables


def _commit() -> str:
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10)
        if sha.returncode != 0:
            raise OSError
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return sha.stdout.strip() + (" (with uncommitted changes)" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        from . import __version__
        return f"minignn {__version__} (not a git checkout)"


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{platform.node()}: {_cores()} cores, {cpu}, {platform.system()} {platform.release()}"


def _fmt_ci(row_or_diff, signed=False) -> str:
    if row_or_diff is None or row_or_diff.get("mean") is None:
        return "-"
    f = "{:+.2f}" if signed else "{:.2f}"
    m = f.format(row_or_diff["mean"])
    if row_or_diff.get("low") is None:
        return m
    return f"{m} [{f.format(row_or_diff['low'])}, {f.format(row_or_diff['high'])}]"


def _fmt_time(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def markdown(doc: dict) -> str:
    """``results.md`` from the ``results.json`` document."""
    h = doc["header"]
    lim = lambda k: "all" if h[k] is None else str(h[k])  # noqa: E731
    lines = [f"# minignn study {doc['study']}" + ("" if doc["complete"] else " (incomplete)"), "",
             f"- model: {h['model']}, {h['epochs']} epochs, batch {h['batch_size']}, {h['optimizer']} lr {h['lr']}"
             f" ({h['schedule']}), weight decay {h['weight_decay']}",
             *([f"- width multiplier: {h['width']}"] if h.get("width", 1.0) != 1.0 else []),
             f"- data: {h['dataset']} ({lim('limit_train')} train / {lim('limit_test')} test images),"
             f" augmentation {'on' if h['augment'] else 'off'}",
             f"- seeds: {', '.join(map(str, h['seeds']))}",
             f"- commit: {h['commit']}",
             f"- machine: {h['machine']}",
             f"- time: {_fmt_time(h['run_time_s'])} of training over {h['runs_done']} finished runs"
             f" (the sum of their epoch times); this invocation took {_fmt_time(h['wall_time_s'])} wall clock",
             "",
             "Test accuracy (%) after the last epoch: the mean over seeds with its 95% Student t interval, and the"
             " difference to the study's baseline, paired over seeds (the interval of the mean per-seed"
             " difference). An interval that holds 0 does not separate the two.", ""]
    for t in doc["tables"]:
        lines += [f"## {t['title']}", "", f"baseline: {t['baseline']}", "",
                  "| variant | runs | mean [95% interval] | per seed | difference to baseline [95% interval] |",
                  "|---|---|---|---|---|"]
        for v in t["variants"]:
            per = ", ".join("-" if r["test_acc"] is None else f"{r['test_acc']:.2f}" for r in v["runs"])
            diff = "baseline" if v["label"] == t["baseline"] else _fmt_ci(v["diff"], signed=True)
            lines.append(f"| {v['label']} | {v['n']}/{len(v['runs'])} | {_fmt_ci(v)} | {per} | {diff} |")
        lines.append("")
    return "\n".join(lines)


def plot_results(doc: dict, path: str) -> str:
    """``results.png``: per study one panel, per variant one point per seed, the mean and its interval."""
    from .plots import _figure, _save
    tables = doc["tables"]
    ncols = min(3, len(tables))
    nrows = math.ceil(len(tables) / ncols)
    widest = max(len(t["variants"]) for t in tables)
    fig, axes = _figure(ncols, nrows, panel=(max(5.0, 0.75 * widest + 1.5), 3.6))
    for ax in axes.ravel()[len(tables):]:
        ax.set_axis_off()
    for ax, t in zip(axes.ravel(), tables):
        for i, v in enumerate(t["variants"]):
            accs = [r["test_acc"] for r in v["runs"] if r["test_acc"] is not None]
            xs = [i - 0.12 + 0.08 * (j - (len(accs) - 1) / 2) for j in range(len(accs))]
            ax.plot(xs, accs, "o", color="0.55", ms=4, zorder=2)
            if v["mean"] is not None:
                err = None
                if v["low"] is not None:
                    err = [[v["mean"] - v["low"]], [v["high"] - v["mean"]]]
                ax.errorbar([i + 0.15], [v["mean"]], yerr=err, fmt="D", color="C0" if v["label"] != t["baseline"]
                            else "C3", ms=5, capsize=3, zorder=3)
        base = next(v for v in t["variants"] if v["label"] == t["baseline"])
        if base["mean"] is not None:
            ax.axhline(base["mean"], color="C3", lw=0.8, ls="--", zorder=1)
        ax.set_xticks(range(len(t["variants"])))
        ax.set_xticklabels([v["label"] for v in t["variants"]], rotation=30, ha="right", fontsize=8)
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(t["title"], fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    h = doc["header"]
    fig.suptitle(f"{h['model']}, {h['dataset']}, {h['epochs']} epochs, seeds {','.join(map(str, h['seeds']))}:"
                 f"\ngrey: one seed each; diamond: mean, 95% interval; red: baseline", fontsize=9)
    return _save(fig, path)


# --- the study ------------------------------------------------------------------------------------
def _plan(studies, seeds, base_config) -> tuple[list[tuple[Variant, int]], dict]:
    """The distinct runs of the studies (a run two studies share once) and each one's config."""
    runs, configs = [], {}
    for st in studies:
        for v, s in st.runs(seeds):
            key = (v.run_id, s)
            if key in configs:
                continue
            c = dataclasses.replace(base_config, seed=int(s), **v.settings())
            configs[key] = c.validate().to_dict()
            runs.append((v, s))
    return runs, configs


def run_study(name: str, base_config=None, seeds: Sequence[int] = (0, 1, 2), out: str | None = None,
              jobs: int = 1, scheduler: str | None = None, progress: bool = False, plots: bool = True,
              log: Callable[[str], None] | None = None) -> dict:
    """Run (or continue) study ``name`` and write its results; returns the ``results.json`` document.

    ``base_config`` (a :class:`~minignn.train.TrainConfig`) holds every setting but the pooling and
    the seed; ``seeds`` the seeds of each variant; ``out`` the study folder (default
    ``studies/<name>-<model>``); ``jobs`` the local worker processes; ``scheduler`` a Dask
    scheduler's address (then ``jobs`` is ignored). Raises KeyboardInterrupt after Ctrl-C / SIGTERM
    (the runs stopped with checkpoints, the results so far written) and StudyError when a run
    failed (the others run to the end first) or a run folder holds other settings. A run that
    another live process holds (its folder's lock: a second study on the same folder) is skipped
    with a message, and the results say incomplete."""
    from .train import TrainConfig, record_data_root
    base_config = (base_config or TrainConfig())
    base_config = dataclasses.replace(base_config)
    record_data_root(base_config.validate())
    seeds = [int(s) for s in seeds]
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise ValueError(f"seeds: expected distinct integers >= 0, got {seeds!r}")
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs: expected an integer >= 1, got {jobs!r}")
    studies = get_studies(name, base_config.model)
    out = out or os.path.join("studies", f"{name}-{base_config.model}")
    log = log or print
    runs, configs = _plan(studies, seeds, base_config)
    os.makedirs(os.path.join(out, CONFIGS), exist_ok=True)
    os.makedirs(os.path.join(out, RUNS), exist_ok=True)
    todo, states = [], {}
    for v, s in runs:
        key = (v.run_id, s)
        cfg_file = os.path.join(out, CONFIGS, f"{v.run_id}-seed{s}.json")
        atomic_write(cfg_file, lambda f, c=configs[key]: f.write(dumps_json(c, indent=2) + "\n"), mode="w")
        states[key] = run_state(run_dir(out, v, s), configs[key])  # a StudyError before anything runs
        if states[key] != "done":
            todo.append((v, s, cfg_file))
    ndone = len(runs) - len(todo)
    nresume = sum(states[(v.run_id, s)] == "partial" for v, s, _ in todo)
    where = f"Dask scheduler {scheduler}" if scheduler else f"{jobs} local job(s)"
    log(f"minignn study {name}: {len(runs)} runs ({len(runs) // len(seeds)} variants x {len(seeds)} seeds) in {out};"
        f" {ndone} finished, {nresume} to resume, {len(todo) - nresume} to start; on {where}")
    t0 = time.perf_counter()
    failed, busy, interrupted = [], [], None
    if progress:
        from tqdm.auto import tqdm
    else:
        from tqdm import tqdm
    # initial=: the ETA comes from the runs this invocation finishes, not from those found finished
    bar = tqdm(total=len(runs), initial=ndone, desc=f"study {name}", unit="run", disable=not progress,
               leave=False, dynamic_ncols=True, smoothing=0.3)
    with bar:
        finished = ndone

        def on_result(v, s, res):
            nonlocal finished
            rc = res["returncode"]
            path = res["path"]
            r = _run_result(path, configs[(v.run_id, s)])
            if rc == 0 or r is not None:   # (a run stopped while it wrote its last files is finished)
                finished += 1
                acc = f"test acc {r['test_acc']:.2f}%" if r else "no result"
                bar.write(f"run {finished}/{len(runs)} finished: {v.label}, seed {s}: {acc}"
                          f" ({_fmt_time(res['wall_s'])}) -> {path}")
                bar.update(1)
            elif rc is None:
                busy.append((v, s))
                bar.write(f"run skipped: {v.label}, seed {s}: {res['locked']}; run the study again once it is done")
            elif rc in (130, 143, -signal.SIGINT, -signal.SIGTERM):
                bar.write(f"run stopped: {v.label}, seed {s} (checkpoint saved; the next study run resumes it)")
            else:
                failed.append((v, s, rc, path))
                bar.write(f"run FAILED: {v.label}, seed {s}: exit status {rc}; see {os.path.join(path, 'train.log')}")

        try:
            if scheduler:
                _run_dask(todo, configs, out, scheduler, on_result)
            else:
                _run_local(todo, configs, out, jobs, on_result)
        except KeyboardInterrupt as e:
            interrupted = e
    doc = _write_results(name, studies, seeds, out, configs, base_config, time.perf_counter() - t0, plots)
    log(f"results: {os.path.join(out, RESULTS_MD)}, {RESULTS_JSON}" + (f", {RESULTS_PNG}" if plots else "")
        + ("" if doc["complete"] else f" (incomplete: {doc['header']['runs_done']} of {len(runs)} runs finished)"))
    if interrupted is not None:
        raise interrupted
    if failed:
        raise StudyError(f"{len(failed)} run(s) failed: " + "; ".join(
            f"{v.label} seed {s} (exit status {rc}, {os.path.join(p, 'train.log')})" for v, s, rc, p in failed))
    return doc


class _Stop(KeyboardInterrupt):
    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _result(future, path: str) -> dict:
    """A run's result; an exception in launching it (a folder that cannot be made, a worker lost)
    is that run's failure, not the study's."""
    try:
        return future.result()
    except KeyboardInterrupt:
        raise
    except Exception as e:  # noqa: BLE001 - reported as the run's failure, with its message
        return {"path": path, "returncode": f"error ({type(e).__name__}: {e})", "wall_s": 0.0}


def _run_local(todo, configs, out, jobs, on_result):
    from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
    threads = max(1, _cores() // jobs)
    stopping = threading.Event()
    old = {}

    def handler(signum, frame):
        stopping.set()
        _stop_live(signum)
        raise _Stop(signum)

    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            old[sig] = signal.signal(sig, handler)
    pool = ThreadPoolExecutor(max_workers=jobs)
    pending = {}
    try:
        queue = list(todo)
        while queue or pending:
            while queue and len(pending) < jobs and not stopping.is_set():
                v, s, cfg = queue.pop(0)
                f = pool.submit(run_one, configs[(v.run_id, s)], run_dir(out, v, s), cfg, threads)
                pending[f] = (v, s)
            if not pending:
                break
            done, _ = wait(list(pending), return_when=FIRST_COMPLETED)
            for f in done:
                v, s = pending.pop(f)
                on_result(v, s, _result(f, run_dir(out, v, s)))
    except KeyboardInterrupt as e:
        stopping.set()
        _stop_live(getattr(e, "signum", signal.SIGINT))
        for f, (v, s) in list(pending.items()):   # the stopped runs save their checkpoints and exit
            try:
                on_result(v, s, _result(f, run_dir(out, v, s)))
            except KeyboardInterrupt:
                pass
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        for sig, h in old.items():
            signal.signal(sig, h)


def _run_dask(todo, configs, out, scheduler, on_result):
    try:
        from distributed import Client, as_completed
    except ImportError:
        raise StudyError("--scheduler needs Dask distributed: pip install 'minignn[cluster]'") from None
    out = os.path.abspath(out)
    with Client(scheduler) as client:
        futures = {}
        for v, s, cfg in todo:
            f = client.submit(run_one, configs[(v.run_id, s)], run_dir(out, v, s), os.path.abspath(cfg), None,
                              key=f"minignn-study-{os.path.basename(run_dir(out, v, s))}-{time.time_ns()}",
                              pure=False)
            futures[f] = (v, s)
        try:
            for f in as_completed(list(futures)):
                v, s = futures[f]
                on_result(v, s, _result(f, run_dir(out, v, s)))
        except KeyboardInterrupt:
            client.cancel(list(futures))
            raise


def _write_results(name, studies, seeds, out, configs, base_config, wall_s, plots) -> dict:
    finished = _finished(studies, seeds, out, configs)
    tables = results_of(studies, seeds, out, configs, finished)
    times = [r["time_s"] for r in finished.values() if r]
    c = base_config
    header = {"model": c.model, "epochs": c.epochs, "batch_size": c.batch_size, "optimizer": c.optimizer,
              "lr": c.lr, "schedule": c.schedule, "weight_decay": c.weight_decay, "dataset": c.dataset,
              "limit_train": c.limit_train, "limit_test": c.limit_test, "augment": c.augment, "width": c.width,
              "seeds": list(seeds), "commit": _commit(), "machine": _machine(), "runs": len(configs),
              "runs_done": len(times), "run_time_s": round(sum(times), 1), "wall_time_s": round(wall_s, 1),
              "written_at": time.strftime("%Y-%m-%d %H:%M:%S")}
    doc = {"study": name, "complete": len(times) == len(configs), "header": header, "tables": tables}
    atomic_write(os.path.join(out, RESULTS_JSON), lambda f: f.write(dumps_json(doc, indent=2) + "\n"), mode="w")
    atomic_write(os.path.join(out, RESULTS_MD), lambda f: f.write(markdown(doc) + "\n"), mode="w")
    if plots and any(v["mean"] is not None for t in tables for v in t["variants"]):
        plot_results(doc, os.path.join(out, RESULTS_PNG))
    return doc
