"""The ``minignn`` command (also ``python -m minignn``): ``train``, ``study``, ``analyze``,
``eval``, ``summary``, ``predict``, ``pools`` and ``bench``.

    minignn train                       # tiny net, GFGP pooling, CIFAR-10, 10 epochs
    minignn train --pool max --epochs 30 --out runs/tiny-max
    minignn train --pool gfgp --pool-opt stat=max --pool-opt hidden=0.25
    minignn train --optimizer adamw --lr 0.003                          # Adam / AdamW beside SGD
    minignn train --dataset synthetic --limit-train 512 --epochs 2     # a quick offline demo
    minignn train --resume runs/tiny-max/checkpoint.npz                 # continue exactly
    minignn train --config runs/tiny-max/config.json --seed 1           # repeat a run's settings
    minignn train --pool max --print-config                             # the settings, as JSON
    minignn train --out runs/tiny-max --overwrite                       # replace that run
    minignn train --data-dir DIR --allow-partial-data                   # a CIFAR copy with fewer images
    minignn train --pool gfgp --pool-at 2,3                             # GFGP at layers 2, 3; max at 1
    minignn study table1a --seeds 3 --jobs 2                            # the paper's Table 1a, 3 seeds
    minignn analyze runs/tiny-gfgp                                      # lam per image: Fig. 2-3, Table 5
    minignn eval runs/tiny-max/best.npz
    minignn predict runs/tiny-max cat.png dog.jpg --top 3               # classify image files
    minignn summary --model vgg11 --pool gfgp                           # layers, shapes, parameters, FLOPs
    minignn pools                       # every --pool name, its --pool-opt options and defaults
    minignn bench --help

``--pool`` and ``--pool-opt`` come from the registry :data:`minignn.layers.POOLINGS`: the names
of ``--pool-opt KEY=VALUE`` are checked against the chosen pooling's options, and their values by
building the model once, before any data are loaded (the value is read as a Python literal when
it is one). Every number on the command line must be finite: ``--lr inf`` or ``--weight-decay
nan`` is an error naming the flag. ``--data-dir`` is stored in the run's ``config.json`` as an
absolute path, so ``minignn eval RUN`` works from any folder. Progress bars are drawn only when
stderr is a terminal (``--progress`` forces them, ``--no-progress`` turns them off).

The run folder (``--out``) is locked while a run trains: a second run on it is refused, naming
the folder and the owner's process id. A fresh run refuses a folder that already holds a run;
``--resume`` continues that run, ``--overwrite`` replaces it.

Exit status: 0 done; 2 for every error a user can fix (a bad flag or option value, no data, a
corrupted checkpoint, no GPU, a busy or already used run folder, a training run that diverged to
an inf/NaN loss), each reported as one line ``minignn COMMAND: error: ...`` naming the flag or
file (a missing dataset lists where it looked; ``MINIGNN_DEBUG=1`` shows the traceback). A
diverged run keeps its last good checkpoint. Ctrl-C during training saves a checkpoint and exits
with status 130, SIGTERM (``kill``, ``timeout``, job schedulers) likewise with 143.
"""
from __future__ import annotations

import argparse
import ast
import json
import math
import os
import signal
import sys

from .backend import DEVICES
from .checks import OneLineParser, int_at_least
from .data import DATASETS
from .layers.registry import POOLINGS, format_options, validate_options
from .models import MODELS
from .optim import OPTIMIZERS
from .schedule import SCHEDULES
from .train import DEFAULT_LR



_Parser = OneLineParser


class UsageError(ValueError):
    """A mistake in the command line itself: reported as one line ``minignn COMMAND: error: ...``
    (status 2, no traceback hint: there is nothing to debug)."""


def _kv(text: str):
    """``key=value`` with the value read as a Python literal when it is one (``0.5``, ``True``);
    a non-finite number (``1e999``) is refused."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    k, raw = text.split("=", 1)
    try:
        v = ast.literal_eval(raw)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        v = raw
    if isinstance(v, (float, complex)) and not math.isfinite(abs(v)):
        raise argparse.ArgumentTypeError(f"{k.strip()}: expected a finite number, got {raw!r}")
    return k.strip(), v


def _number(expected: str, ok):
    """An argparse type: a finite float for which ``ok(v)`` holds (argparse's message then names
    the flag: ``argument --lr: expected a finite number > 0, got 'inf'``)."""
    def parse(text):
        try:
            v = float(text)
        except ValueError:
            v = math.nan
        if not (math.isfinite(v) and ok(v)):
            raise argparse.ArgumentTypeError(f"expected a finite number {expected}, got {text!r}")
        return v
    parse.__name__ = f"number {expected}"
    return parse


_pos_float = _number("> 0", lambda v: v > 0)
_nonneg_float = _number(">= 0", lambda v: v >= 0)
_fraction = _number("in [0, 1)", lambda v: 0 <= v < 1)


_pos_int = int_at_least(1)
_nonneg_int = int_at_least(0)


def _pool_options_help() -> str:
    """``"maxent, maxent-param: lam_init, prior; gfgp, gfgp-local: stat, ..."`` (from the registry)."""
    groups: dict[tuple, list[str]] = {}
    for name, spec in POOLINGS.items():
        if spec.options:
            groups.setdefault(tuple(spec.options), []).append(name)
    return "; ".join(f"{', '.join(names)}: {', '.join(keys)}" for keys, names in groups.items())


def _check_pool_opts(pool: str, options: dict) -> dict:
    """``--pool-opt`` against the pooling's spec: the names only (the layer checks the values)."""
    try:
        return validate_options(pool, options, where="--pool-opt")
    except (ValueError, TypeError) as e:
        raise UsageError(str(e)) from None


def _add_settings(p, skip=()):
    """The options that make a TrainConfig (model, data, optimisation; --device and
    --checkpoint-every are added with the run group), less those named in ``skip`` (dests)."""
    from .train import TrainConfig
    d = TrainConfig()

    class _Group:
        def __init__(self, g):
            self.g = g

        def add_argument(self, *flags, **kw):
            if flags[0].lstrip("-").replace("-", "_") not in skip:
                self.g.add_argument(*flags, **kw)

    # every option defaults to None here so that --resume can tell which ones were given;
    # the shown defaults are TrainConfig's
    g = _Group(p.add_argument_group("model"))
    g.add_argument("--model", choices=tuple(MODELS), default=None, help=f"architecture (default {d.model})")
    g.add_argument("--pool", choices=tuple(POOLINGS), default=None,
                   help=f"every local pooling layer (default {d.pool}; 'minignn pools' describes them)")
    g.add_argument("--pool-opt", type=_kv, action="append", default=None, metavar="KEY=VALUE",
                   help=f"an option of the chosen pool, repeatable: {_pool_options_help()}; e.g. stat=max,"
                        f" hidden=0.25, activation=softplus ('minignn pools' lists the defaults)")
    g.add_argument("--pool-at", type=_layer_list, default=None, metavar="I,J,...",
                   help="put --pool at these local pooling layers only (1-based, in network order: tiny has 3,"
                        " vgg11 5, resnet20 2) and --other-pool at the others (default: --pool everywhere)")
    g.add_argument("--other-pool", choices=tuple(POOLINGS), default=None,
                   help=f"the pooling at the layers --pool-at leaves out, with its default options"
                        f" (default {d.other_pool})")
    g.add_argument("--width", type=_pos_float, default=None, help=f"channel-width multiplier, for quick tests (default {d.width})")
    g = _Group(p.add_argument_group("data"))
    g.add_argument("--dataset", choices=DATASETS, default=None, help=f"(default {d.dataset}; 'synthetic' is generated,"
                   " no download)")
    g.add_argument("--data-dir", default=None, help="data root holding cifar-10-batches-py/ (default: $MINIGNN_DATA,"
                   " else a per-user cache folder)")
    g.add_argument("--no-download", action="store_true", default=None, help="never download; fail if the data are absent")
    g.add_argument("--limit-train", type=_pos_int, default=None, metavar="N", help="use a fixed random subset of N training images")
    g.add_argument("--limit-test", type=_pos_int, default=None, metavar="N", help="use a fixed random subset of N test images")
    g.add_argument("--no-augment", action="store_true", default=None, help="no random crop / flip")
    g.add_argument("--allow-partial-data", action="store_true", default=None,
                   help="accept a CIFAR copy with fewer than the canonical 50000/10000 images (the loader's"
                        " check_counts=False)")
    g = _Group(p.add_argument_group("optimisation"))
    g.add_argument("--epochs", type=_pos_int, default=None, help=f"(default {d.epochs})")
    g.add_argument("--batch-size", type=_pos_int, default=None, help=f"(default {d.batch_size})")
    g.add_argument("--optimizer", choices=tuple(OPTIMIZERS), default=None,
                   help=f"sgd (momentum, Nesterov, L2 weight decay), adam (L2 weight decay) or adamw (decoupled"
                        f" weight decay) (default {d.optimizer})")
    g.add_argument("--lr", type=_pos_float, default=None,
                   help=f"peak learning rate (default {DEFAULT_LR['sgd']} for sgd, {DEFAULT_LR['adam']} for adam"
                        f" and adamw)")
    g.add_argument("--schedule", choices=SCHEDULES, default=None, help=f"(default {d.schedule})")
    g.add_argument("--momentum", type=_fraction, default=None, help=f"in [0, 1) (default {d.momentum})")
    g.add_argument("--no-nesterov", action="store_true", default=None, help="plain momentum instead of Nesterov")
    g.add_argument("--betas", type=_betas, default=None, metavar="B1,B2",
                   help=f"adam/adamw: the moments' decay rates (default {d.betas[0]},{d.betas[1]})")
    g.add_argument("--eps", type=_pos_float, default=None, help=f"adam/adamw: added to the root of the second"
                   f" moment (default {d.eps:g})")
    g.add_argument("--weight-decay", type=_nonneg_float, default=None, help=f"(default {d.weight_decay})")
    g.add_argument("--label-smoothing", type=_fraction, default=None, help=f"in [0, 1) (default {d.label_smoothing})")
    g.add_argument("--seed", type=_nonneg_int, default=None, help=f"(default {d.seed})")
    return d


def _train_parser(sub):
    p = sub.add_parser(
        "train", help="train a model (default: the tiny net with GFGP pooling on CIFAR-10)",
        description="Train a CNN from scratch. Results (metrics.jsonl, checkpoint.npz, best.npz, curves.png,"
                    " summary.json, and per pooling diagnostic <name>.png and <name>.npz: lam.png, gate.png, ...)"
                    " go to the run folder. Ctrl-C or SIGTERM saves a checkpoint (exit status 130 or 143); --resume continues exactly where it stopped. A loss that becomes inf or"
                    " NaN stops the run (exit status 2), keeping the last good checkpoint.")
    d = _add_settings(p)
    g = p.add_argument_group("run")
    g.add_argument("--device", choices=DEVICES, default=None, help=f"(default {d.device})")
    g.add_argument("--out", default=None, help="run folder (default runs/<model>-<pool>-<dataset>-<timestamp>); one"
                   " that holds a run is refused without --overwrite")
    g.add_argument("--overwrite", action="store_true",
                   help="start afresh in an --out that already holds a run, deleting that run's files")
    g.add_argument("--resume", default=None, metavar="CHECKPOINT",
                   help="continue the run saved in CHECKPOINT (a checkpoint.npz or its run folder) with its saved"
                        " settings")
    g.add_argument("--checkpoint-every", type=_nonneg_int, default=None, metavar="STEPS",
                   help=f"also checkpoint every STEPS steps within an epoch, 0 = only at epoch ends"
                        f" (default {d.checkpoint_every})")
    g.add_argument("--config", default=None, metavar="FILE",
                   help="start from the settings in FILE (a run's config.json, or its run folder; what"
                        " --print-config prints); flags given as well override them")
    g.add_argument("--print-config", action="store_true",
                   help="print the settings this command would train with, as JSON, and exit")
    g.add_argument("--no-progress", action="store_true", help="no progress bars (they are off anyway when stderr"
                   " is not a terminal)")
    g.add_argument("--progress", action="store_true", help="progress bars even when stderr is not a terminal")
    g.add_argument("--no-plots", action="store_true", help="no PNG plots at the end")
    p.set_defaults(func=cmd_train)
    return p


_CONFIG_ARGS = {  # argparse dest -> (TrainConfig field, converter)
    "model": ("model", None), "pool": ("pool", None), "width": ("width", None), "dataset": ("dataset", None),
    "data_dir": ("data_dir", None), "no_download": ("download", lambda v: not v),
    "limit_train": ("limit_train", None), "limit_test": ("limit_test", None),
    "no_augment": ("augment", lambda v: not v), "epochs": ("epochs", None), "batch_size": ("batch_size", None),
    "lr": ("lr", None), "schedule": ("schedule", None), "momentum": ("momentum", None),
    "no_nesterov": ("nesterov", lambda v: not v), "weight_decay": ("weight_decay", None),
    "label_smoothing": ("label_smoothing", None), "seed": ("seed", None), "device": ("device", None),
    "checkpoint_every": ("checkpoint_every", None), "pool_opt": ("pool_kw", dict),
    "allow_partial_data": ("allow_partial_data", None), "optimizer": ("optimizer", None), "betas": ("betas", None),
    "eps": ("eps", None), "pool_at": ("pool_at", None), "other_pool": ("other_pool", None),
}
_SGD_ONLY = ("momentum", "no_nesterov")
_ADAM_ONLY = ("betas", "eps")


def _layer_list(text: str):
    """``I,J,...``: distinct pooling-layer numbers >= 1."""
    try:
        vals = [int(t) for t in text.split(",")]
    except ValueError:
        vals = []
    if not vals or min(vals) < 1 or len(set(vals)) != len(vals):
        raise argparse.ArgumentTypeError(f"expected distinct layer numbers >= 1 as I,J,..., got {text!r}")
    return sorted(vals)


def _betas(text: str):
    """``B1,B2``: two finite numbers in [0, 1)."""
    try:
        vals = tuple(float(t) for t in text.split(","))
    except ValueError:
        vals = ()
    if len(vals) != 2 or not all(math.isfinite(v) and 0 <= v < 1 for v in vals):
        raise argparse.ArgumentTypeError(f"expected two numbers in [0, 1) as B1,B2, got {text!r}")
    return vals


def _flag(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def _read_config_file(path: str) -> dict:
    """The settings in a run's ``config.json`` (or a run folder holding one), for ``--config``."""
    from .train import CONFIG
    if os.path.isdir(path):
        path = os.path.join(path, CONFIG)
    try:
        with open(path, encoding="utf-8") as f:
            d = json.load(f)
    except FileNotFoundError:
        raise UsageError(f"--config: no file at {path!r}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UsageError(f"--config: {path!r} is not a JSON settings file ({e})") from None
    if not isinstance(d, dict):
        raise UsageError(f"--config: {path!r}: expected a JSON object of settings, got a {type(d).__name__}")
    return d


def _progress_wanted(args) -> bool:
    """Bars on a terminal only (a piped log gets no ``\\r`` updates) unless ``--progress``."""
    if args.no_progress:
        return False
    return bool(args.progress) or sys.stderr.isatty()


def _config_from_args(args, given: dict):
    """The TrainConfig of a fresh run: ``--config``'s settings (if any), then the flags given."""
    from .train import TrainConfig, record_data_root
    kw = _read_config_file(args.config) if args.config else {}
    source = f"--config {args.config}: " if args.config else ""
    if "pool" in given and given["pool"] != kw.get("pool", given["pool"]) and "pool_opt" not in given:
        kw.pop("pool_kw", None)  # the file's options belong to the file's pool
    for dest, v in given.items():
        field_name, conv = _CONFIG_ARGS[dest]
        kw[field_name] = conv(v) if conv else v
    optimizer = kw.get("optimizer", TrainConfig.optimizer)
    wrong = [d for d in (_ADAM_ONLY if optimizer == "sgd" else _SGD_ONLY) if d in given]
    if wrong:
        applies = "adam and adamw" if optimizer == "sgd" else "sgd"
        raise UsageError(f"{', '.join(_flag(d) for d in wrong)}: applies to --optimizer {applies} only, not"
                         f" {optimizer}")
    if "pool_opt" in given:
        kw["pool_kw"] = _check_pool_opts(kw.get("pool", TrainConfig.pool), kw["pool_kw"])
    if kw.get("momentum") == 0 and "nesterov" not in kw:
        kw["nesterov"] = False  # Nesterov needs momentum; --momentum 0 means plain SGD
    try:
        config = TrainConfig.from_dict(kw).validate()
    except (ValueError, TypeError) as e:
        raise UsageError(f"{source}{e}") from None
    record_data_root(config)  # --print-config shows, and config.json keeps, the folder used
    if config.pool_kw or config.pool_at is not None:
        _check_pool_values(config)
    return config


def _check_pool_values(config):
    """Build the model once to let its layers check the ``--pool-opt`` values (a UsageError naming
    the options), before any data are loaded; the library's random state is left as it was."""
    from . import init
    from .models import build_model
    state = init.get_rng_state()
    try:
        build_model(config.model, pool=config.pool, num_classes=10, width=config.width, pool_at=config.pool_at,
                    other_pool=config.other_pool, **config.pool_kw)
    except (ValueError, TypeError) as e:
        if str(e).startswith("pool_at"):
            raise UsageError(f"--pool-at: {e}") from None
        given = " ".join(f"{k}={v!r}" for k, v in config.pool_kw.items())
        raise UsageError(f"--pool-opt {given}: {e}") from None
    finally:
        init.set_rng_state(state)


def _interrupt_status(e: BaseException) -> int:
    """128 + the signal that stopped the run: 130 for Ctrl-C (SIGINT), 143 for SIGTERM."""
    return 128 + int(getattr(e, "signum", signal.SIGINT))


def cmd_train(args) -> int:
    from .checkpoint import dumps_json
    from .train import Trainer
    progress = _progress_wanted(args)
    given = {dest: getattr(args, dest) for dest in _CONFIG_ARGS if getattr(args, dest) is not None}
    if args.resume:
        if args.config or args.print_config:
            raise UsageError("--resume continues with the checkpoint's saved settings; it takes no --config or"
                             " --print-config")
        ignored = sorted(_flag(k) for k in given if k not in ("device", "allow_partial_data"))
        if ignored:
            print(f"minignn train --resume: using the checkpoint's saved settings; ignoring {', '.join(ignored)}",
                  file=sys.stderr)
        trainer = Trainer.from_checkpoint(args.resume, device=args.device, out=args.out,
                                          allow_partial_data=args.allow_partial_data, progress=progress,
                                          plots=not args.no_plots, overwrite=args.overwrite)
    else:
        config = _config_from_args(args, given)
        if args.print_config:
            print(dumps_json(config.to_dict(), indent=2))
            return 0
        trainer = Trainer(config, out=args.out, progress=progress, plots=not args.no_plots, overwrite=args.overwrite)
    try:
        trainer.run()
    except KeyboardInterrupt as e:  # the checkpoint is saved (train.Interrupted carries the signal)
        return _interrupt_status(e)
    return 0


_STUDY_SKIP = ("pool", "pool_opt", "pool_at", "other_pool", "seed")  # the study sets them per run


def _study_parser(sub):
    from .study import study_names
    p = sub.add_parser(
        "study", help="the GFGP paper's ablations: variants x seeds, with intervals (table1a, ..., table6, all)",
        description="Train every variant of a study with several seeds, each an ordinary run folder under"
                    " DIR/runs/, and write DIR/results.md, results.json and results.png: per variant the mean test"
                    " accuracy, the per-seed values, a 95%% Student t interval and the difference to the study's"
                    " baseline with its interval. Re-running the same command skips finished runs and resumes"
                    " interrupted ones. Studies: table1a (lam: max, maxent, maxent-param, gfgp), table1b"
                    " (gfgp, gfgp-local), table1c (rho: none, trained, predicted), table2a (statistics t), table2b"
                    " (mapping), table2c (activation), table4 (depth), table6 (every pooling), all.")
    p.add_argument("name", choices=study_names(), metavar="NAME", help=f"one of {', '.join(study_names())}")
    g = p.add_argument_group("study")
    g.add_argument("--seeds", type=_pos_int, default=3, metavar="N", help="seeds 0..N-1 for every variant (default 3)")
    g.add_argument("--jobs", type=_pos_int, default=1, metavar="J",
                   help="runs at a time on this machine, the cores split between them (default 1)")
    g.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="run on an existing Dask distributed cluster (tcp://host:8786) instead of local jobs; its"
                        " workers must see --out at the same path (pip install 'minignn[cluster]')")
    g.add_argument("--out", default=None, metavar="DIR", help="the study folder (default studies/<NAME>-<model>)")
    g.add_argument("--dry-run", action="store_true", help="list the runs and their states, and exit")
    g.add_argument("--config", default=None, metavar="FILE",
                   help="start every run from the settings in FILE (a run's config.json); the flags given as well"
                        " override them; the pooling and the seed are the study's")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g.add_argument("--progress", action="store_true", help="a progress bar even when stderr is not a terminal")
    g.add_argument("--no-plots", action="store_true", help="no results.png")
    d = _add_settings(p, skip=_STUDY_SKIP)
    g = p.add_argument_group("run")
    g.add_argument("--device", choices=DEVICES, default=None, help=f"(default {d.device})")
    g.add_argument("--checkpoint-every", type=_nonneg_int, default=None, metavar="STEPS",
                   help=f"also checkpoint every STEPS steps within an epoch (default {d.checkpoint_every})")
    p.set_defaults(func=cmd_study)
    return p


def cmd_study(args) -> int:
    from . import study
    given = {dest: getattr(args, dest) for dest in _CONFIG_ARGS
             if dest not in _STUDY_SKIP and getattr(args, dest, None) is not None}
    base = _config_from_args(args, given)
    seeds = list(range(args.seeds))
    if args.dry_run:
        out = args.out or os.path.join("studies", f"{args.name}-{base.model}")
        runs, configs = study._plan(study.get_studies(args.name, base.model), seeds, base)
        for v, s in runs:
            path = study.run_dir(out, v, s)
            try:
                state = study.run_state(path, configs[(v.run_id, s)])
            except study.StudyError as e:
                state = f"conflict: {e}"
            print(f"{v.label:28s} seed {s}  {state:8s} {path}")
        return 0
    try:
        study.run_study(args.name, base, seeds=seeds, out=args.out, jobs=args.jobs, scheduler=args.scheduler,
                        progress=_progress_wanted(args), plots=not args.no_plots)
    except KeyboardInterrupt as e:   # the runs saved their checkpoints; the results so far are written
        return _interrupt_status(e)
    return 0


def _analyze_parser(sub):
    p = sub.add_parser(
        "analyze", help="the GFGP paper's analysis of lam (Fig. 2-3, Table 5) for a trained run",
        description="For every image of a split (eval mode) and every pooling layer whose parameter varies per"
                    " image (lam of gfgp and gfgp-local; a, gate, gamma, alpha, eta, logit of the zoo's adaptive"
                    " poolings), a 3-bin histogram of the layer's values, a point on the 2-simplex. Writes"
                    " analysis.json, analysis.md (the Fisher discriminant score per layer and the first canonical"
                    " correlation between layers, beside the paper's Table 5), histograms.npz, and the plots"
                    " fig2-<name>.png (simplex scatter per layer) and fig3-<name>.png (two images of one class).")
    p.add_argument("run", metavar="RUN_DIR", help="a training run's folder (its best.npz, else checkpoint.npz) or"
                   " one of those files")
    p.add_argument("--split", choices=("test", "train"), default="test", help="(default test: 10,000 CIFAR images)")
    p.add_argument("--out", default=None, metavar="DIR", help="where the files go (default RUN_DIR/analysis)")
    p.add_argument("--limit", type=_pos_int, default=None, metavar="N",
                   help="a fixed random subset of N images of the split (default all)")
    p.add_argument("--batch-size", type=_pos_int, default=250)
    p.add_argument("--data-dir", default=None, help="the data root (default: the run's)")
    p.add_argument("--device", choices=DEVICES, default="cpu")
    p.add_argument("--no-plots", action="store_true", help="no PNGs")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_analyze)
    return p


def cmd_analyze(args) -> int:
    from .analyze import analyze
    doc = analyze(args.run, split=args.split, out=args.out, limit=args.limit, batch_size=args.batch_size,
                  device=args.device, data_dir=args.data_dir, progress=not args.no_progress and sys.stderr.isatty(),
                  plots=not args.no_plots)
    for d, e in doc["diagnostics"].items():
        names = [la["name"] for la in e["layers"]]
        print(f"{d}: Fisher score per layer: " + ", ".join(
            f"{n} {'-' if la['fisher'] is None else format(la['fisher'], '.4f')}" for n, la in zip(names, e["layers"])))
        pairs = [f"{names[i]}-{names[j]} {'-' if e['cca'][i][j] is None else format(e['cca'][i][j], '.4f')}"
                 for i in range(len(names)) for j in range(i + 1, len(names))]
        if pairs:
            print(f"{d}: first canonical correlation: " + ", ".join(pairs))
    return 0


def _eval_parser(sub):
    p = sub.add_parser("eval", help="evaluate a checkpoint on the test set",
                       description="Evaluate a saved model (checkpoint.npz or best.npz of a run) on its dataset's"
                                   " test set: loss, accuracy, and the mean and std of each pooling diagnostic per layer"
                                   " (lam for max-entropy pooling, gate for gated pooling, p for LP pooling, ...).")
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="a checkpoint file, or a run folder (uses its best.npz,"
                   " else checkpoint.npz)")
    p.add_argument("--data-dir", default=None, help="data root (default: the one saved in the checkpoint, else"
                   " $MINIGNN_DATA, else the cache folder)")
    p.add_argument("--dataset", choices=DATASETS, default=None, help="evaluate on this dataset instead of the saved one")
    p.add_argument("--device", choices=DEVICES, default="cpu", help="(default cpu)")
    p.add_argument("--batch-size", type=_pos_int, default=256, help="(default 256)")
    p.add_argument("--limit-test", type=_pos_int, default=None, metavar="N", help="a fixed random subset of N test images")
    p.add_argument("--allow-partial-data", action="store_true",
                   help="accept a CIFAR copy with fewer than the canonical 50000/10000 images (default: as the run"
                        " was trained)")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object (standard JSON: inf and"
                   " NaN are null)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_eval)
    return p


def cmd_eval(args) -> int:
    from . import backend
    from .checkpoint import CheckpointError, dumps_json, load_checkpoint
    from .data import BatchLoader, load_dataset
    from .saving import resolve_model_file
    from .train import TrainConfig, evaluate, model_from_config
    progress = not args.no_progress and sys.stderr.isatty()
    path = resolve_model_file(args.checkpoint)   # a run folder: its best.npz, else checkpoint.npz
    state = load_checkpoint(path)
    if "model" not in state or "config" not in state:
        raise ValueError(f"eval: {path!r} is a checkpoint without a model and config")
    config = TrainConfig.from_dict(state["config"])
    backend.check_device(args.device)
    name = args.dataset or config.dataset
    ds = load_dataset(name, data_dir=args.data_dir or config.data_dir, download=config.download,
                      check_counts=not (args.allow_partial_data or config.allow_partial_data),
                      progress=progress)
    if name == config.dataset and config.limit_test is not None and args.limit_test is None:
        args.limit_test = config.limit_test
    if args.limit_test is not None:
        ds = ds.limit(None, min(args.limit_test, len(ds.y_test)))
    if ds.num_classes != state.get("num_classes", ds.num_classes):
        raise ValueError(f"eval: the model predicts {state['num_classes']} classes but {name} has {ds.num_classes}")
    model = model_from_config(config, ds.num_classes)
    try:
        model.load_state_dict(state["model"])
    except KeyError as e:          # missing/unexpected tensors: not the model its config describes
        raise CheckpointError(f"eval: {path!r}: {e.args[0] if e.args else e}") from e
    if args.device != "cpu":
        model.to(args.device)
    x_test = backend.to_device(ds.x_test, args.device) if args.device != "cpu" else ds.x_test
    loader = BatchLoader(x_test, ds.y_test, args.batch_size, train=False, augment=False, mean=ds.mean,
                         std=ds.std, seed=config.seed)
    r = evaluate(model, loader, args.device, progress=progress, desc=f"eval {name}", collect_diagnostics=True)
    result = {"checkpoint": path, "model": config.model, "pool": config.pool, "dataset": name, "images": r["n"],
              "test_loss": r["loss"], "test_acc": r["acc"], "time": r["time"],
              "epoch": state.get("epoch", state.get("position", {}).get("epoch"))}
    result.update(r["diagnostics"])  # "lam": {layer: {"mean", "std"}}, "gate": ..., as metrics.jsonl has them
    if args.json:
        print(dumps_json(result))
    else:
        print(f"{path}: {config.model} (pool={config.pool}) on {name} test ({r['n']} images):"
              f" loss {r['loss']:.4f}, accuracy {100 * r['acc']:.2f}%  [{r['time']:.1f} s,"
              f" {r['n'] / max(r['time'], 1e-9):.0f} img/s]")
        for d, layers in r["diagnostics"].items():
            for layer, st in layers.items():
                print(f"  {d} {layer}: mean {st['mean']:.4g}, std {st['std']:.4g}")
    return 0


def _pools_parser(sub):
    p = sub.add_parser("pools", help="list the local poolings (--pool) with their options (--pool-opt)",
                       description="List the registered local poolings (minignn.layers.POOLINGS): each --pool"
                                   " name, the --pool-opt options it takes with their defaults, and what it is.")
    p.add_argument("--json", action="store_true", help="print the registry as one JSON object")
    p.set_defaults(func=cmd_pools)
    return p


def cmd_pools(args) -> int:
    from .checkpoint import dumps_json
    rows = [(name, spec.description, format_options(name)) for name, spec in POOLINGS.items()]
    if args.json:
        print(dumps_json({name: {"options": dict(spec.options), "description": spec.description,
                                 "diagnostics": list(spec.diagnostics)} for name, spec in POOLINGS.items()}))
        return 0
    header = ("pool", "description", "options (--pool-opt KEY=VALUE) with their defaults")
    w0 = max(len(r[0]) for r in rows + [header])
    w1 = max(len(r[1]) for r in rows + [header])
    for name, desc, opts in [header] + rows:
        print(f"{name:<{w0}}  {desc:<{w1}}  {opts}")
    return 0


def _bench_parser(sub):
    p = sub.add_parser("bench", help="run the benchmarks (arguments go to minignn.bench)", add_help=False,
                       description="Run minignn's benchmarks; every argument is passed to minignn.bench.main.")
    p.add_argument("bench_args", nargs=argparse.REMAINDER, help="arguments of the benchmark runner (try --help)")
    p.set_defaults(func=cmd_bench)
    return p


def cmd_bench(args) -> int:
    try:
        from . import bench
    except ImportError as e:  # pragma: no cover - the benchmarks ship with the package
        raise RuntimeError(f"bench: the benchmark package is not available ({e})") from e
    if not hasattr(bench, "main"):
        raise RuntimeError("bench: minignn.bench has no main(argv) entry point")
    rc = bench.main(list(args.bench_args))
    return int(rc or 0)


def build_parser() -> argparse.ArgumentParser:
    from . import __version__
    p = _Parser(
        prog="minignn", description="minignn: a from-scratch deep-learning engine with max-entropy and GFGP pooling."
                                    " Train small CNNs on CIFAR, evaluate checkpoints, run the benchmarks.",
        epilog="Run 'minignn COMMAND --help' for a command's options. Errors are one line (exit status 2);"
               " MINIGNN_DEBUG=1 shows the traceback behind one.")
    p.add_argument("--version", action="version", version=f"minignn {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    _train_parser(sub)
    _study_parser(sub)
    _analyze_parser(sub)
    _eval_parser(sub)
    from .summary import add_parser as _summary_parser
    _summary_parser(sub)
    from .predict import add_parser as _predict_parser
    _predict_parser(sub)
    _pools_parser(sub)
    _bench_parser(sub)
    return p


def main(argv=None) -> int:
    """Entry point of the ``minignn`` command; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if argv and argv[0] == "bench":  # everything after 'bench' belongs to the benchmark runner
        args = argparse.Namespace(command="bench", bench_args=argv[1:], func=cmd_bench)
    else:
        args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    from .checkpoint import CheckpointError
    from .runlock import RunFolderError
    from .train import TrainingDiverged
    try:
        return args.func(args)
    except KeyboardInterrupt as e:
        print("\nminignn: interrupted", file=sys.stderr)
        return _interrupt_status(e)
    except (UsageError, RunFolderError, TrainingDiverged, CheckpointError, ValueError, TypeError, RuntimeError,
            OSError, NotImplementedError) as e:
        if os.environ.get("MINIGNN_DEBUG"):
            raise
        msg = str(e)   # a library message may start with the command's name already ('predict: ...')
        msg = msg[len(args.command) + 2:] if msg.startswith(f"{args.command}: ") else msg
        print(f"minignn {args.command}: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
