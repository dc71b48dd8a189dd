#!/usr/bin/env python
"""The PyTorch CPU reference for minignn's CIFAR-10 training targets (issue 4).

Trains the tiny net of :mod:`minignn.models` (three conv3x3-BN-ReLU blocks of widths 32, 64 and
128, each followed by a 2x2 pool, global average pool, linear to 10; convolutions without bias)
in PyTorch eager on the CPU, with the recipe of ``minignn train``: batch 128, SGD momentum 0.9
Nesterov, weight decay 5e-4 (on every parameter), one-cycle to lr 0.1 (``OneCycleLR`` with
``cycle_momentum=False``, which :mod:`minignn.schedule` matches; checked at every step here),
no label smoothing.

The batches come from minignn's own pipeline (:class:`minignn.data.BatchLoader`: the same order,
4-pixel padded random crop + horizontal flip and per-channel normalisation, from the same seed),
and by default the initial weights are minignn's (``build_model`` after
``minignn.init.manual_seed(seed)``, copied into the torch model), so the engine is the only
difference between this run and ``minignn train --model tiny --pool P --seed S``.

Pooling:

* ``max``: ``nn.MaxPool2d(2)``;
* ``gfgp``: the straightforward composite of GFGP (MaxEntPool2d's defaults: global average,
  D = C/2 hidden units, MLP without bias, sigmoid):
  ``lam = sigmoid(V_lam ReLU(U avg_hw(x)))`` (N, C), then over each 2x2 window
  ``y = sum_q softmax_q(lam * x_q) * x_q``, the windows made with reshape/permute; autograd does
  the backward.

Usage::

    python benchmarks/torch_cifar.py --pool {max,gfgp} --epochs 10 [--data-dir D]
        [--limit-train N] [--limit-test N] [--threads 2] [--seed 0] [--init {minignn,torch}]
        [--check-forward] [--out results.json]

Prints one line per epoch (train loss and accuracy, test loss and accuracy, learning rate, train
pass time, time with evaluation) and a final summary line; ``--out`` writes the same as JSON
(settings, environment, per-epoch records, summary). The train pass time includes making the
batches (as minignn's trainer counts it); the evaluation runs in eval mode over the whole test set.

torch is optional for minignn: without it this script exits with status 2 and says so.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time

import numpy as np

TORCH_POOLS = ("max", "gfgp")  # the poolings of minignn.layers.POOLINGS written here in torch


def _import_torch():
    try:
        import torch
    except ImportError:
        print("torch_cifar.py: PyTorch is not installed; this reference needs it (pip install torch)."
              " minignn itself does not.", file=sys.stderr)
        sys.exit(2)
    return torch


def parse_args(argv=None):
    from minignn.layers import POOLINGS

    p = argparse.ArgumentParser(description="PyTorch CPU reference run of the tiny net on CIFAR-10 with minignn's "
                                            "recipe and data pipeline.")
    p.add_argument("--pool", choices=tuple(POOLINGS), default="max",
                   help=f"local pooling at the three 2x2 downsamplings (implemented here: {', '.join(TORCH_POOLS)})")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--data-dir", default=None, help="CIFAR data root (else $MINIGNN_DATA, else the user cache)")
    p.add_argument("--dataset", default="cifar10", choices=("cifar10", "cifar100"))
    p.add_argument("--limit-train", type=int, default=None, help="a fixed random subset of N training images")
    p.add_argument("--limit-test", type=int, default=None, help="a fixed random subset of N test images")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads (and Numba's, for the loader)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.1, help="one-cycle peak learning rate")
    p.add_argument("--seed", type=int, default=0, help="data order/augmentation seed (and init seed)")
    p.add_argument("--init", choices=("minignn", "torch"), default="minignn",
                   help="initial weights: minignn's build_model (default, same as minignn train) or torch's own")
    p.add_argument("--check-forward", action="store_true",
                   help="before training, compare logits, loss and parameter gradients of the torch model and"
                        " minignn's (same weights) on the first batch")
    p.add_argument("--no-download", action="store_true", help="fail instead of downloading missing CIFAR data")
    p.add_argument("--quiet", action="store_true", help="no progress output within an epoch")
    p.add_argument("--out", default=None, help="write the results as JSON to this file")
    a = p.parse_args(argv)
    if a.pool not in TORCH_POOLS:
        p.error(f"--pool {a.pool}: this PyTorch reference implements only {', '.join(TORCH_POOLS)}"
                f" (minignn train --pool {a.pool} runs it in minignn)")
    for name in ("epochs", "threads", "batch_size"):
        if getattr(a, name) < 1:
            p.error(f"--{name.replace('_', '-')}: expected an integer >= 1, got {getattr(a, name)}")
    for name in ("limit_train", "limit_test"):
        v = getattr(a, name)
        if v is not None and v < 1:
            p.error(f"--{name.replace('_', '-')}: expected an integer >= 1, got {v}")
    if a.seed < 0:
        p.error(f"--seed: expected an integer >= 0, got {a.seed}")
    return a


# ------------------------------------------------------------------------------------------------
# the model
# ------------------------------------------------------------------------------------------------
def build_torch_tiny(torch, pool: str, num_classes: int = 10):
    """The tiny net in torch, with minignn's layer names (so the state dicts line up)."""
    nn, F = torch.nn, torch.nn.functional

    class GFGPMapping(nn.Module):
        """lam = sigmoid(V_lam ReLU(U t)), no bias; U: (D, C), V_lam: (C, D), D = round(C / 2)."""

        def __init__(self, c):
            super().__init__()
            d = max(1, int(round(0.5 * c)))
            # torch's Linear init, U(-1/sqrt(fan_in), 1/sqrt(fan_in)), as minignn's GFGPMapping
            self.U = nn.Parameter(torch.empty(d, c).uniform_(-1 / math.sqrt(c), 1 / math.sqrt(c)))
            self.V_lam = nn.Parameter(torch.empty(c, d).uniform_(-1 / math.sqrt(d), 1 / math.sqrt(d)))

        def forward(self, t):
            return torch.sigmoid(F.linear(F.relu(F.linear(t, self.U)), self.V_lam))

    class GFGPPool2d(nn.Module):
        """Max-entropy 2x2 / stride-2 pooling with GFGP lam per sample and channel (autograd)."""

        def __init__(self, c):
            super().__init__()
            self.mapping = GFGPMapping(c)
            self.last_lam = None

        def forward(self, x):
            n, c, h, w = x.shape
            lam = self.mapping(x.mean(dim=(2, 3)))  # (N, C)
            self.last_lam = lam.detach()
            win = (x.reshape(n, c, h // 2, 2, w // 2, 2).permute(0, 1, 2, 4, 3, 5)
                   .reshape(n, c, h // 2, w // 2, 4))
            wts = torch.softmax(lam[:, :, None, None, None] * win, dim=-1)
            return (wts * win).sum(dim=-1)

    seq = nn.Sequential()
    cin = 3
    for i, cout in enumerate((32, 64, 128), start=1):
        seq.add_module(f"conv{i}", nn.Conv2d(cin, cout, 3, padding=1, bias=False))
        seq.add_module(f"bn{i}", nn.BatchNorm2d(cout, eps=1e-5, momentum=0.1))
        seq.add_module(f"relu{i}", nn.ReLU(inplace=True))
        seq.add_module(f"pool{i}", nn.MaxPool2d(2, 2) if pool == "max" else GFGPPool2d(cout))
        cin = cout
    seq.add_module("gap", nn.AdaptiveAvgPool2d(1))
    seq.add_module("flatten", nn.Flatten())
    seq.add_module("fc", nn.Linear(cin, num_classes))
    return seq


def build_minignn_tiny(pool: str, num_classes: int, seed: int):
    """minignn's tiny net exactly as ``minignn train`` builds it (seeded init)."""
    from minignn.train import TrainConfig, model_from_config
    return model_from_config(TrainConfig(model="tiny", pool=pool, seed=seed), num_classes)


def copy_minignn_weights(torch, tmodel, mmodel):
    """Load minignn's parameters and BN buffers into the torch model (names are the same)."""
    src = mmodel.state_dict()
    dst = tmodel.state_dict()
    ours = {k for k in dst if not k.endswith("num_batches_tracked")}
    if ours != set(src):
        raise RuntimeError(f"torch_cifar.py: parameter names differ between the models: only in torch "
                           f"{sorted(ours - set(src))}, only in minignn {sorted(set(src) - ours)}")
    with torch.no_grad():
        for k in ours:
            if tuple(dst[k].shape) != tuple(src[k].shape):
                raise RuntimeError(f"torch_cifar.py: {k}: torch shape {tuple(dst[k].shape)} vs minignn "
                                   f"{tuple(src[k].shape)}")
            dst[k].copy_(torch.from_numpy(np.ascontiguousarray(src[k])))


def check_forward(torch, tmodel, mmodel, xb, yb):
    """One batch through both models in train mode (BN batch statistics), weights equal: the max
    |logits difference|, the two losses, and the largest gradient difference over the parameters
    relative to that parameter's largest gradient. Leaves no gradients behind."""
    from minignn.loss import SoftmaxCrossEntropy

    tmodel.train()
    mmodel.train()
    state = {k: v.clone() for k, v in tmodel.state_dict().items()}  # BN running stats move
    logits = tmodel(torch.from_numpy(xb))
    loss_t = torch.nn.functional.cross_entropy(logits, torch.from_numpy(yb))
    tmodel.zero_grad(set_to_none=True)
    loss_t.backward()
    mmodel.zero_grad()
    ce = SoftmaxCrossEntropy()
    lm = mmodel.forward(xb)
    loss_m = ce.forward(lm, yb)
    mmodel.backward(ce.backward())
    mgrads = {n: np.asarray(p.grad) for n, p in mmodel.named_parameters()}
    worst, worst_name = 0.0, None
    for n, p in tmodel.named_parameters():
        gt, gm = p.grad.numpy(), mgrads[n]
        rel = float(np.max(np.abs(gt - gm)) / max(float(np.max(np.abs(gm))), 1e-30))
        if rel >= worst:
            worst, worst_name = rel, n
    tmodel.zero_grad(set_to_none=True)
    tmodel.load_state_dict(state)
    return {"max_abs_logit_diff": float(np.max(np.abs(logits.detach().numpy() - np.asarray(lm)))),
            "max_abs_logit": float(np.max(np.abs(lm))), "loss_torch": float(loss_t.detach()),
            "loss_minignn": float(loss_m), "max_rel_grad_diff": worst, "worst_param": worst_name}


# ------------------------------------------------------------------------------------------------
# training
# ------------------------------------------------------------------------------------------------
def _lam_layers(tmodel):
    return [(n, m) for n, m in tmodel.named_modules() if hasattr(m, "last_lam")]


def evaluate(torch, tmodel, loader):
    """Mean loss, accuracy, time and lam mean/std per GFGP layer over the test set (eval mode)."""
    F = torch.nn.functional
    tmodel.eval()
    lam_layers = _lam_layers(tmodel)
    lam_acc = {n: [0.0, 0.0, 0] for n, _ in lam_layers}
    loss_sum, correct, seen = 0.0, 0, 0
    t0 = time.perf_counter()
    with torch.no_grad():
        for xb, yb in loader.batches(0):
            x, y = torch.from_numpy(xb), torch.from_numpy(yb)
            logits = tmodel(x)
            n = int(y.shape[0])
            loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
            correct += int((logits.argmax(dim=1) == y).sum())
            seen += n
            for name, m in lam_layers:
                v = m.last_lam.double()
                a = lam_acc[name]
                a[0] += float(v.sum())
                a[1] += float((v * v).sum())
                a[2] += v.numel()
    dt = time.perf_counter() - t0
    lam = {}
    for name, (s1, s2, k) in lam_acc.items():
        if k:
            mean = s1 / k
            lam[name] = {"mean": mean, "std": math.sqrt(max(s2 / k - mean * mean, 0.0))}
    return {"loss": loss_sum / max(seen, 1), "acc": correct / max(seen, 1), "time": dt, "lam": lam}


def main(argv=None):
    args = parse_args(argv)
    torch = _import_torch()
    torch.set_num_threads(args.threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set (e.g. when imported by another script)
        pass
    import numba

    numba.set_num_threads(min(args.threads, numba.config.NUMBA_NUM_THREADS))

    from minignn.data import BatchLoader
    from minignn.schedule import one_cycle_lr
    from minignn.train import TrainConfig, load_data

    cfg = TrainConfig(model="tiny", pool=args.pool, dataset=args.dataset, data_dir=args.data_dir,
                      epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                      limit_train=args.limit_train, limit_test=args.limit_test,
                      download=not args.no_download).validate()
    ds = load_data(cfg, progress=not args.quiet)
    train_loader = BatchLoader(ds.x_train, ds.y_train, cfg.batch_size, train=True, augment=cfg.augment,
                               mean=ds.mean, std=ds.std, seed=cfg.seed, drop_last=cfg.drop_last)
    test_loader = BatchLoader(ds.x_test, ds.y_test, cfg.batch_size, train=False, augment=False,
                              mean=ds.mean, std=ds.std, seed=cfg.seed)
    steps = train_loader.num_batches(0)
    total = steps * cfg.epochs

    torch.manual_seed(cfg.seed)
    tmodel = build_torch_tiny(torch, cfg.pool, ds.num_classes)
    forward_check = None
    if args.init == "minignn" or args.check_forward:
        mmodel = build_minignn_tiny(cfg.pool, ds.num_classes, cfg.seed)
        copy_minignn_weights(torch, tmodel, mmodel)
        if args.check_forward:
            xb0, yb0 = train_loader.batch(0, 0)
            forward_check = fc = check_forward(torch, tmodel, mmodel, xb0, yb0)
            print(f"check (first batch, train mode, same weights): max |logits torch - minignn| ="
                  f" {fc['max_abs_logit_diff']:.3g} (max |logit| {fc['max_abs_logit']:.3g}); loss torch"
                  f" {fc['loss_torch']:.7f} minignn {fc['loss_minignn']:.7f}; max gradient difference"
                  f" {fc['max_rel_grad_diff']:.3g} of the largest (in {fc['worst_param']})", flush=True)
            if args.init == "torch":
                torch.manual_seed(cfg.seed)
                tmodel = build_torch_tiny(torch, cfg.pool, ds.num_classes)
        del mmodel
    n_params = sum(p.numel() for p in tmodel.parameters())

    opt = torch.optim.SGD(tmodel.parameters(), lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                          weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=total, cycle_momentum=False)
    F = torch.nn.functional

    env = {"torch": torch.__version__, "torch_threads": torch.get_num_threads(),
           "numba_threads": numba.get_num_threads(), "cpu_count": os.cpu_count(), "python": platform.python_version(),
           "machine": platform.machine(), "loadavg_start": list(os.getloadavg())}
    print(f"torch_cifar: tiny (pool={cfg.pool}, {n_params:,} parameters, init {args.init}) on {ds.name}"
          f" ({len(ds.y_train)} train / {len(ds.y_test)} test), {cfg.epochs} epochs x {steps} steps of"
          f" {cfg.batch_size}, onecycle lr {cfg.lr}, torch {torch.__version__} CPU, {env['torch_threads']}"
          f" threads, load average {env['loadavg_start'][0]:.2f}", flush=True)

    history, best = [], (-1.0, 0)
    run_t0 = time.perf_counter()
    step = 0
    for epoch in range(cfg.epochs):
        tmodel.train()
        loss_sum, correct, seen = 0.0, 0, 0
        t0 = time.perf_counter()
        for i, (xb, yb) in enumerate(train_loader.batches(epoch)):
            lr = opt.param_groups[0]["lr"]
            expect = one_cycle_lr(step, total, cfg.lr)
            if not math.isclose(lr, expect, rel_tol=1e-9, abs_tol=1e-15):
                raise RuntimeError(f"torch_cifar.py: step {step}: OneCycleLR gives lr {lr!r}, minignn's schedule"
                                   f" {expect!r}")
            x, y = torch.from_numpy(xb), torch.from_numpy(yb)
            opt.zero_grad(set_to_none=True)
            logits = tmodel(x)
            loss = F.cross_entropy(logits, y)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            n = int(y.shape[0])
            loss_sum += float(loss.detach()) * n
            correct += int((logits.detach().argmax(dim=1) == y).sum())
            seen += n
            if not args.quiet and (i + 1) % 50 == 0:
                el = time.perf_counter() - t0
                print(f"  epoch {epoch + 1} step {i + 1}/{steps}  loss {loss_sum / seen:.4f}"
                      f"  {seen / el:.0f} img/s", flush=True)
        train_time = time.perf_counter() - t0
        ev = evaluate(torch, tmodel, test_loader)
        rec = {"epoch": epoch + 1, "step": step, "lr": lr, "train_loss": loss_sum / seen, "train_acc": correct / seen,
               "test_loss": ev["loss"], "test_acc": ev["acc"], "train_time": train_time, "eval_time": ev["time"],
               "epoch_time": train_time + ev["time"], "train_images_per_s": seen / train_time,
               "loadavg": list(os.getloadavg())}
        if ev["lam"]:
            rec["lam"] = ev["lam"]
        history.append(rec)
        if ev["acc"] > best[0]:
            best = (ev["acc"], epoch + 1)
        lam_txt = ("  lam " + " ".join(f"{v['mean']:.3f}" for v in ev["lam"].values())) if ev["lam"] else ""
        print(f"epoch {epoch + 1}/{cfg.epochs}  train loss {rec['train_loss']:.4f} acc {100 * rec['train_acc']:.2f}%"
              f"  test loss {rec['test_loss']:.4f} acc {100 * rec['test_acc']:.2f}%  lr {lr:.4g}"
              f"  train {train_time:.1f} s ({rec['train_images_per_s']:.0f} img/s), with eval"
              f" {rec['epoch_time']:.1f} s{lam_txt}", flush=True)

    total_time = time.perf_counter() - run_t0
    summary = {"final_test_acc": history[-1]["test_acc"], "best_test_acc": best[0], "best_epoch": best[1],
               "final_train_loss": history[-1]["train_loss"],
               "mean_train_time": float(np.mean([r["train_time"] for r in history])),
               "median_train_time": float(np.median([r["train_time"] for r in history])),
               "mean_epoch_time": float(np.mean([r["epoch_time"] for r in history])),
               "total_time": total_time}
    env["loadavg_end"] = list(os.getloadavg())
    print(f"SUMMARY torch {cfg.pool}: final test acc {100 * summary['final_test_acc']:.2f}% (best"
          f" {100 * summary['best_test_acc']:.2f}% at epoch {summary['best_epoch']}), train pass"
          f" {summary['mean_train_time']:.1f} s/epoch (median {summary['median_train_time']:.1f}),"
          f" {summary['mean_epoch_time']:.1f} s/epoch with eval, total {total_time:.1f} s for {cfg.epochs}"
          f" epochs, {env['torch_threads']} threads", flush=True)
    if args.out:
        result = {"engine": "torch", "model": "tiny", "pool": cfg.pool, "init": args.init,
                  "config": cfg.to_dict(), "parameters": n_params, "num_train": int(len(ds.y_train)),
                  "num_test": int(len(ds.y_test)), "steps_per_epoch": steps, "env": env,
                  "forward_check": forward_check, "epochs": history, "summary": summary}
        d = os.path.dirname(os.path.abspath(args.out))
        os.makedirs(d, exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)
            f.write("\n")
        print(f"wrote {args.out}", flush=True)
    return summary


if __name__ == "__main__":
    main()
