"""Schedules, checkpoints and the training loop: exact resume, Ctrl-C, atomic checkpoint writes."""
import json
import math
import os
import signal

import numpy as np
import pytest
from hypothesis import given, strategies as st

from minignn import SGD, Parameter
from minignn.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from minignn.schedule import Schedule, cosine_lr, make_schedule, one_cycle_lr, step_lr


# --- schedules ----------------------------------------------------------------------------------
def test_one_cycle_known_values():
    T, peak = 100, 0.1
    # phase ends (PyTorch OneCycleLR): warm-up ends at pct_start*T - 1 = 29, annealing at T - 1 = 99
    assert one_cycle_lr(0, T, peak) == pytest.approx(peak / 25)
    assert one_cycle_lr(29, T, peak) == pytest.approx(peak)
    assert one_cycle_lr(99, T, peak) == pytest.approx(peak / 25 / 1e4)
    # halfway up: the mean of the two ends (cosine through its midpoint)
    assert one_cycle_lr(0, 100, peak, pct_start=0.21) == pytest.approx(peak / 25)  # warm-up ends at 20
    assert one_cycle_lr(10, 100, peak, pct_start=0.21) == pytest.approx((peak / 25 + peak) / 2)
    # one step of the annealing phase by the formula: pct = (t - 29) / (99 - 29)
    t = 50
    pct = (t - 29) / 70
    lo = peak / 25 / 1e4
    assert one_cycle_lr(t, T, peak) == pytest.approx(lo + (peak - lo) * (1 + math.cos(math.pi * pct)) / 2)
    # past the end it keeps the final value
    assert one_cycle_lr(150, T, peak) == pytest.approx(lo)


def test_one_cycle_matches_pytorch():
    torch = pytest.importorskip("torch")
    T, peak = 37, 0.1
    w = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([w], lr=peak, momentum=0.9)
    sch = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=peak, total_steps=T, cycle_momentum=False)
    for t in range(T):
        assert one_cycle_lr(t, T, peak) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-12), t
        opt.step()
        sch.step()


def test_cosine_and_step_known_values():
    assert cosine_lr(0, 10, 0.2) == pytest.approx(0.2)
    assert cosine_lr(5, 10, 0.2) == pytest.approx(0.1)
    assert cosine_lr(10, 10, 0.2, min_lr=0.01) == pytest.approx(0.01)
    assert cosine_lr(3, 10, 0.2) == pytest.approx(0.1 * (1 + math.cos(math.pi * 0.3)))
    # linear warm-up over 4 steps from 0.2/25, then cosine over the remaining 6
    assert cosine_lr(0, 10, 0.2, warmup_steps=4) == pytest.approx(0.2 / 25)
    assert cosine_lr(2, 10, 0.2, warmup_steps=4) == pytest.approx((0.2 / 25 + 0.2) / 2)
    assert cosine_lr(7, 10, 0.2, warmup_steps=4) == pytest.approx(0.1)
    assert step_lr(0, 0.1, [5, 8]) == pytest.approx(0.1)
    assert step_lr(4, 0.1, [5, 8]) == pytest.approx(0.1)
    assert step_lr(5, 0.1, [5, 8]) == pytest.approx(0.01)
    assert step_lr(8, 0.1, [5, 8], gamma=0.5) == pytest.approx(0.025)


@given(total=st.integers(2, 500), peak=st.floats(1e-3, 1.0), pct=st.floats(0.05, 0.95))
def test_one_cycle_shape(total, peak, pct):
    lrs = [one_cycle_lr(t, total, peak, pct_start=pct) for t in range(total)]
    lo = peak / 25 / 1e4
    assert all(lo * (1 - 1e-9) <= v <= peak * (1 + 1e-9) for v in lrs)
    k = int(np.argmax(lrs))
    # rises (weakly) to the peak, then falls (weakly) to the final value
    assert all(a <= b + 1e-15 for a, b in zip(lrs[:k], lrs[1:k + 1]))
    assert all(a + 1e-15 >= b for a, b in zip(lrs[k:], lrs[k + 1:]))
    assert lrs[-1] == pytest.approx(lo if pct * total - 1 < total - 1 else peak)


def test_schedule_sets_optimizer_lr_and_is_pure():
    opt = SGD([Parameter(np.zeros(3))], lr=1.0, momentum=0.9)
    s = make_schedule("onecycle", 0.1, epochs=3, steps_per_epoch=10)
    assert s.total_steps == 30
    vals = [s.apply(opt, t) for t in range(30)]
    assert opt.lr == vals[-1]
    # a function of the step only: the same value however often and in whatever order it is asked
    assert [s.lr_at(t) for t in reversed(range(30))] == vals[::-1]
    st_ = make_schedule("step", 0.1, epochs=4, steps_per_epoch=10)
    assert st_.options["milestones"] == [20, 30]
    assert make_schedule("step", 0.1, 4, 10, milestone_epochs=[1]).lr_at(10) == pytest.approx(0.01)


def test_schedule_errors():
    with pytest.raises(ValueError, match="schedule: expected one of"):
        Schedule("linear", 0.1, 10)
    with pytest.raises(ValueError, match="total_steps"):
        Schedule("cosine", 0.1, 0)
    with pytest.raises(ValueError, match="step: expected an integer >= 0"):
        one_cycle_lr(-1, 10, 0.1)
    with pytest.raises(ValueError, match="pct_start"):
        Schedule("onecycle", 0.1, 10, pct_start=1.5)
    with pytest.raises(TypeError):
        Schedule("cosine", 0.1, 10, milestones=[3])
    for bad in (float("inf"), float("nan"), 0.0, -1.0):
        with pytest.raises(ValueError, match=r"schedule: base_lr: expected a finite real number > 0, got"):
            Schedule("cosine", bad, 10)
    with pytest.raises(TypeError, match=r"schedule: base_lr: .*got True \(a bool\)"):
        Schedule("cosine", True, 10)


@pytest.mark.parametrize("lr", [np.float32(0.5), np.float64(0.5), np.int64(1), np.array(0.5)])
def test_schedule_accepts_every_real_scalar_type(lr):
    s = Schedule("constant", lr, 10)
    assert type(s.base_lr) is float and s.lr_at(3) == float(lr)


# --- checkpoints --------------------------------------------------------------------------------
def _state(seed=0):
    rng = np.random.default_rng(seed)
    rng.random(5)
    return {"model": {"conv.weight": rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
                      "bn.running_var": np.ones(4, np.float32)},
            "optimizer": {"buffers": [None, rng.standard_normal(7)], "lr": 0.05, "nesterov": True},
            "rng": rng.bit_generator.state, "position": {"epoch": 2, "step_in_epoch": 13},
            "config": {"pool_kw": {"stat": "max"}, "limit_train": None}}


def _assert_same(a, b):
    if isinstance(a, dict):
        assert set(a) == set(b)
        for k in a:
            _assert_same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for u, v in zip(a, b):
            _assert_same(u, v)
    elif isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray) and a.dtype == b.dtype and a.shape == b.shape
        assert np.array_equal(a, b)
    else:
        assert a == b


def test_checkpoint_roundtrip_exact(tmp_path):
    s = _state()
    p = save_checkpoint(str(tmp_path / "c.npz"), s)
    back = load_checkpoint(p)
    _assert_same(s, back)
    # the RNG state (128-bit integers) round-trips: the restored generator continues identically
    g1, g2 = np.random.default_rng(), np.random.default_rng()
    g1.bit_generator.state, g2.bit_generator.state = s["rng"], back["rng"]
    assert np.array_equal(g1.random(4), g2.random(4))
    assert [f for f in os.listdir(tmp_path)] == ["c.npz"]  # no temporary file left


@pytest.mark.parametrize("fail_at", ["write", "replace"])
def test_checkpoint_failed_write_keeps_previous(tmp_path, monkeypatch, fail_at):
    import minignn.checkpoint as ck
    path = str(tmp_path / "checkpoint.npz")
    old = _state(0)
    save_checkpoint(path, old)

    if fail_at == "write":
        real = np.savez

        def broken_savez(f, **arrays):  # writes part of the archive, then the "disk" fails
            real(f, **arrays)
            f.truncate(f.tell() // 2)
            raise OSError(28, "No space left on device")
        monkeypatch.setattr(ck.np, "savez", broken_savez)
    else:
        def broken_replace(a, b):
            raise KeyboardInterrupt  # Ctrl-C just before the rename
        monkeypatch.setattr(ck.os, "replace", broken_replace)
    with pytest.raises((OSError, KeyboardInterrupt)):
        save_checkpoint(path, _state(1))
    monkeypatch.undo()
    _assert_same(old, load_checkpoint(path))
    assert os.listdir(tmp_path) == ["checkpoint.npz"]


def test_checkpoint_corrupt_and_missing(tmp_path):
    p = str(tmp_path / "c.npz")
    save_checkpoint(p, _state())
    data = open(p, "rb").read()
    open(tmp_path / "trunc.npz", "wb").write(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="trunc.npz.*truncated or corrupted"):
        load_checkpoint(str(tmp_path / "trunc.npz"))
    flipped = bytearray(data)
    flipped[len(data) // 3] ^= 0xFF
    open(tmp_path / "flip.npz", "wb").write(bytes(flipped))
    with pytest.raises(CheckpointError, match="flip.npz"):
        load_checkpoint(str(tmp_path / "flip.npz"))
    with pytest.raises(CheckpointError, match="no file at"):
        load_checkpoint(str(tmp_path / "nope.npz"))
    np.savez(tmp_path / "other.npz", a=np.zeros(2))
    with pytest.raises(CheckpointError, match="not a minignn checkpoint"):
        load_checkpoint(str(tmp_path / "other.npz"))
    with pytest.raises(TypeError, match="cannot store a object"):
        save_checkpoint(p, {"x": object()})


# --- the training loop: exact resume, Ctrl-C --------------------------------------------------------
@pytest.fixture(scope="module")
def small_data():
    from minignn.data import load_dataset
    return load_dataset("synthetic", n_train=64, n_test=24, image_size=16, num_classes=4, seed=1)


def _config(**kw):
    from minignn.train import TrainConfig
    base = dict(model="tiny", pool="gfgp", dataset="synthetic", width=0.25, epochs=2, batch_size=16, lr=0.05,
                checkpoint_every=0)
    base.update(kw)
    return TrainConfig(**base)


def _trainer(cfg, out, data, cls=None, **kw):
    from minignn.train import Trainer
    return (cls or Trainer)(cfg, out=str(out), progress=False, plots=False, log=lambda m: None, dataset=data, **kw)


def _resume(out, data):
    from minignn.train import Trainer
    return Trainer.from_checkpoint(str(out), progress=False, plots=False, log=lambda m: None, dataset=data)


def _final(trainer):
    return trainer.model.state_dict(), trainer.optimizer.state_dict(), trainer.history


@pytest.fixture(scope="module")
def uninterrupted(small_data, tmp_path_factory):
    t = _trainer(_config(), tmp_path_factory.mktemp("full"), small_data)
    summary = t.run()
    return t, summary


def _assert_equal_runs(a, b):
    wa, oa, ha = _final(a)
    wb, ob, hb = _final(b)
    assert list(wa) == list(wb)
    for k in wa:  # bit for bit
        assert wa[k].dtype == wb[k].dtype and np.array_equal(wa[k], wb[k]), f"{k} differs after resume"
    for i, (u, v) in enumerate(zip(oa["buffers"], ob["buffers"])):
        assert np.array_equal(u, v), f"momentum buffer {i} differs after resume"
    assert oa["step_count"] == ob["step_count"]
    assert [r["test_acc"] for r in ha] == [r["test_acc"] for r in hb]
    assert [r["train_loss"] for r in ha] == [r["train_loss"] for r in hb]


def test_uninterrupted_run_learns_and_writes(uninterrupted):
    t, summary = uninterrupted
    assert t.global_step == 8 and t.epoch == 2
    assert len(t.history) == 2 and t.history[1]["train_loss"] < t.history[0]["train_loss"]
    lines = open(os.path.join(t.out, "metrics.jsonl")).read().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [1, 2]
    assert summary["best_test_acc"] == max(r["test_acc"] for r in t.history)
    assert set(t.history[0]["lam"]) == {"pool1", "pool2", "pool3"}


@pytest.mark.parametrize("stop_after", [3, 4, 6])  # mid-epoch 1, end of epoch 1 (eval pending), mid-epoch 2
def test_ctrl_c_saves_and_resume_is_exact(small_data, uninterrupted, tmp_path, stop_after):
    from minignn.train import Trainer

    class CtrlC(Trainer):
        def train_step(self, x, y):
            if self.global_step + 1 == stop_after:
                signal.raise_signal(signal.SIGINT)  # a real Ctrl-C, arriving in the middle of a step
            return super().train_step(x, y)

    before = signal.getsignal(signal.SIGINT)  # default_int_handler, or SIG_IGN under nohup / in a background job
    t = _trainer(_config(), tmp_path, small_data, cls=CtrlC)
    with pytest.raises(KeyboardInterrupt):
        t.run()
    # the step in flight was finished, then the position saved
    state = load_checkpoint(str(tmp_path / "checkpoint.npz"))
    pos = state["position"]
    assert pos["global_step"] == stop_after
    epoch = (stop_after - 1) // 4  # 4 steps per epoch; a full epoch's position is (epoch, 4): eval pending
    assert (pos["epoch"], pos["step_in_epoch"]) == (epoch, stop_after - 4 * epoch)
    assert len(state["history"]) == (stop_after - 1) // 4
    assert signal.getsignal(signal.SIGINT) == before  # the caller's handler restored

    resumed = _resume(tmp_path, small_data)
    assert resumed.global_step == stop_after
    resumed.run()
    _assert_equal_runs(uninterrupted[0], resumed)
    assert len(open(tmp_path / "metrics.jsonl").read().splitlines()) == 2


def test_interrupt_during_eval_resumes_exactly(small_data, uninterrupted, tmp_path, monkeypatch):
    import minignn.train as tr
    real = tr.evaluate
    calls = []

    def eval_then_ctrl_c(*a, **kw):
        calls.append(1)
        if len(calls) == 1:
            kw["guard"].requested = True  # Ctrl-C arrives during the first evaluation
        return real(*a, **kw)
    monkeypatch.setattr(tr, "evaluate", eval_then_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        _trainer(_config(), tmp_path, small_data).run()
    monkeypatch.undo()
    pos = load_checkpoint(str(tmp_path / "checkpoint.npz"))["position"]
    assert (pos["epoch"], pos["step_in_epoch"], pos["global_step"]) == (0, 4, 4)
    r = _resume(tmp_path, small_data)
    r.run()
    _assert_equal_runs(uninterrupted[0], r)


def test_crash_inside_a_step_keeps_last_checkpoint(small_data, uninterrupted, tmp_path):
    """An exception in the middle of a step (no clean boundary) writes nothing new: the periodic
    checkpoint before it stays, and resuming from it still ends exactly like the full run."""
    from minignn.train import Trainer
    logs = []

    class Crash(Trainer):
        def train_step(self, x, y):
            if self.global_step == 3:
                self.model.forward(x)  # half a step: batch-norm running statistics already moved
                raise KeyboardInterrupt
            return super().train_step(x, y)

    t = _trainer(_config(checkpoint_every=2), tmp_path, small_data, cls=Crash)
    t.log = logs.append
    with pytest.raises(KeyboardInterrupt):
        t.run()
    assert any("no checkpoint was written" in m for m in logs)
    assert load_checkpoint(str(tmp_path / "checkpoint.npz"))["position"]["global_step"] == 2
    r = _resume(tmp_path, small_data)
    r.run()
    _assert_equal_runs(uninterrupted[0], r)


def test_resume_needs_matching_data(small_data, uninterrupted, tmp_path):
    from minignn.data import load_dataset
    other = load_dataset("synthetic", n_train=40, n_test=24, image_size=16, num_classes=4, seed=1)
    with pytest.raises(ValueError, match="steps per epoch"):
        from minignn.train import Trainer
        Trainer.from_checkpoint(uninterrupted[0].out, progress=False, plots=False, dataset=other)
    with pytest.raises(ValueError, match="holds model weights only"):
        Trainer.from_checkpoint(os.path.join(uninterrupted[0].out, "best.npz"), dataset=small_data)


def test_label_smoothing_and_schedules_train(small_data, tmp_path):
    for sched in ("cosine", "step"):
        t = _trainer(_config(epochs=1, schedule=sched, label_smoothing=0.1, pool="max"), tmp_path / sched, small_data)
        t.run()
        assert np.isfinite(t.history[0]["train_loss"])
        assert t.optimizer.lr == pytest.approx(t.schedule.lr_at(t.global_step - 1))


def test_config_errors():
    with pytest.raises(ValueError, match="epochs: expected an integer >= 1, got 0"):
        _config(epochs=0).validate()
    with pytest.raises(ValueError, match="schedule: expected one of"):
        _config(schedule="exp").validate()
    with pytest.raises(ValueError, match="label_smoothing"):
        _config(label_smoothing=1.0).validate()
    from minignn.train import TrainConfig
    with pytest.raises(ValueError, match="unknown settings \\['colour'\\]"):
        TrainConfig.from_dict({"colour": 1})


def test_plots_write_pngs(tmp_path):
    from minignn import plots
    hist = [{"epoch": e, "train_loss": 2.0 / e, "test_loss": 2.1 / e, "train_acc": 0.2 * e, "test_acc": 0.18 * e}
            for e in (1, 2, 3)]
    p1 = plots.plot_curves(hist, str(tmp_path / "c.png"), title="t")
    lam = {"pool1": np.random.default_rng(0).normal(1, 0.3, 500), "pool2": np.full(40, 2.0)}
    p2 = plots.plot_lam_histograms(lam, str(tmp_path / "l.png"))
    for p in (p1, p2):
        assert open(p, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    fig = plots.lam_figure(lam)
    axes = [a for a in fig.axes if a.get_visible() and a.axison]
    assert len(axes) == 2 and all(a.get_xlabel() == "lam" and a.get_ylabel() for a in axes)
    fig = plots.curves_figure(hist)
    assert [a.get_ylabel() for a in fig.axes] == ["cross-entropy loss", "accuracy (%)", "learning rate"]
    with pytest.raises(ValueError, match="at least one"):
        plots.curves_figure([])


def test_atomic_write_keeps_the_previous_file_when_interrupted(tmp_path):
    """Every run file (checkpoints, metrics, lam.npz, plots) goes through atomic_write."""
    from minignn.checkpoint import atomic_write
    path = tmp_path / "summary.json"
    atomic_write(str(path), lambda f: f.write("old\n"), mode="w")

    def interrupted(f):
        f.write("half of the new")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(str(path), interrupted, mode="w")
    assert path.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]  # no temporary file left


def test_atomic_write_keeps_the_replaced_files_mode(tmp_path):
    import stat as st_mod

    from minignn.checkpoint import atomic_write
    path = tmp_path / "notes.txt"
    atomic_write(str(path), lambda f: f.write("a"), mode="w")
    os.chmod(path, 0o640)
    atomic_write(str(path), lambda f: f.write("b"), mode="w")
    assert st_mod.S_IMODE(os.stat(path).st_mode) == 0o640 and path.read_text() == "b"


# --- settings that would train on NaN -------------------------------------------------------------
@pytest.mark.parametrize("kw,expect", [
    (dict(lr=float("inf")), "SGD: lr: expected a finite real number > 0, got inf"),
    (dict(lr=float("nan")), "SGD: lr: expected a finite real number > 0, got nan"),
    (dict(lr=0), "SGD: lr: expected a finite real number > 0, got 0"),
    (dict(lr=True), "SGD: lr: expected a finite real number > 0, got True (a bool)"),
    (dict(lr="0.1"), "SGD: lr: expected a finite real number > 0, got '0.1' (a str)"),
    (dict(momentum=float("inf")), "SGD: momentum: expected a finite real number in [0, 1), got inf"),
    (dict(momentum=-float("inf")), "SGD: momentum: expected a finite real number in [0, 1), got -inf"),
    (dict(momentum=1.0), "SGD: momentum: expected a finite real number in [0, 1), got 1.0"),
    (dict(weight_decay=float("nan")), "SGD: weight_decay: expected a finite real number >= 0, got nan"),
    (dict(weight_decay=float("inf")), "SGD: weight_decay: expected a finite real number >= 0, got inf"),
    (dict(weight_decay=np.float32("nan")), "SGD: weight_decay: expected a finite real number >= 0, got"),
])
def test_sgd_rejects_non_finite_and_non_real_settings(kw, expect):
    with pytest.raises((ValueError, TypeError)) as e:
        SGD([Parameter(np.zeros(3, np.float32))], **kw)
    assert str(e.value).startswith(expect), str(e.value)


@pytest.mark.parametrize("lr", [0.1, np.float32(0.1), np.float64(0.1), np.array(0.1), 1, np.int64(1), np.uint8(1)],
                         ids=lambda v: type(v).__name__)
def test_sgd_accepts_every_real_scalar_type(lr):
    opt = SGD([Parameter(np.ones(3, np.float32))], lr=lr, momentum=np.float32(0.5), weight_decay=np.float64(0))
    assert type(opt.lr) is float and opt.lr == float(lr) and type(opt.momentum) is float
    opt.params[0].grad[...] = 1.0
    opt.step()
    assert np.array_equal(opt.params[0].data, np.ones(3, np.float32) - np.float32(float(lr)))


def test_sgd_load_state_dict_names_the_missing_entry():
    opt = SGD([Parameter(np.zeros(3, np.float32))], lr=0.1, momentum=0.9)
    state = opt.state_dict()
    del state["lr"]
    with pytest.raises(ValueError, match=r"SGD.load_state_dict: missing entry 'lr'"):
        opt.load_state_dict(state)
    with pytest.raises(ValueError, match=r"SGD.load_state_dict: lr: expected a finite real number > 0, got inf"):
        opt.load_state_dict({**opt.state_dict(), "lr": float("inf")})


@pytest.mark.parametrize("entry", ["position/global_step", "optimizer/lr", "rng", "config"])
def test_resume_names_a_missing_checkpoint_entry_and_the_file(small_data, uninterrupted, tmp_path, entry):
    from minignn.train import Trainer
    state = load_checkpoint(os.path.join(uninterrupted[0].out, "checkpoint.npz"))
    *parents, last = entry.split("/")
    d = state
    for k in parents:
        d = d[k]
    del d[last]
    path = str(tmp_path / "checkpoint.npz")
    save_checkpoint(path, state)
    with pytest.raises(CheckpointError) as e:
        Trainer.from_checkpoint(path, progress=False, plots=False, dataset=small_data)
    assert repr(path) in str(e.value) and repr(entry) in str(e.value), str(e.value)


def test_config_rejects_non_finite_numbers():
    for name in ("lr", "momentum", "weight_decay", "label_smoothing", "width"):
        for bad in (float("nan"), float("inf")):
            with pytest.raises(ValueError, match=f"^{name}: expected a finite real number"):
                _config(**{name: bad}).validate()
    _config(lr=np.float32(0.05), momentum=np.float64(0.9)).validate()  # numpy scalars are numbers too


# --- the trainer's library edges -----------------------------------------------------------------
def test_train_step_trains_in_training_mode_after_evaluate(small_data, tmp_path):
    from minignn.train import evaluate
    t = _trainer(_config(pool="max"), tmp_path, small_data)
    evaluate(t.model, t.test_loader)
    assert not t.model.training
    bn = t.model.bn1
    before = bn.running_mean.copy()
    x, y = next(t.train_loader.batches(0))
    t.train_step(x, y)
    assert all(m.training for m in t.model.modules())
    assert not np.array_equal(bn.running_mean, before)  # batch statistics, not the running ones


def test_models_name_the_layer_that_sees_the_data(small_data, tmp_path):
    from minignn.models import build_model
    from minignn.train import _skip_input_grad
    for name, first in (("tiny", "conv1"), ("vgg11", "conv1"), ("resnet20", "conv")):
        m = build_model(name, pool="max", width=0.125)
        assert m.input_layer == first
        _skip_input_grad(m)
        convs = [(n, c) for n, c in m.named_modules() if hasattr(c, "needs_input_grad")]
        assert [n for n, c in convs if not c.needs_input_grad] == [first]


def test_a_layer_before_the_first_conv_keeps_its_gradient(small_data, tmp_path, monkeypatch):
    """A model whose data go through a batch norm before its first convolution: that
    convolution's input gradient is needed (the batch norm learns from it)."""
    from minignn.layers import BatchNorm2d, Conv2d, Flatten, GlobalAvgPool2d, Linear
    from minignn.models import MODELS
    from minignn.module import Sequential

    def bn_first(pool, num_classes, width, **pool_kw):
        return Sequential(BatchNorm2d(3), Conv2d(3, 4, 3, padding=1, bias=False), GlobalAvgPool2d(), Flatten(),
                          Linear(4, num_classes))
    monkeypatch.setitem(MODELS, "bn-first", bn_first)
    t = _trainer(_config(model="bn-first", pool="max"), tmp_path, small_data)
    assert t.model[1].needs_input_grad  # no input_layer declared: every input gradient is kept
    x, y = next(t.train_loader.batches(0))
    gamma = t.model[0].weight.data.copy()
    t.train_step(x, y)
    assert np.abs(t.model[0].weight.grad).max() > 0 and not np.array_equal(t.model[0].weight.data, gamma)
    # a model that names its data layer gets that one switched off
    m = bn_first("max", 4, 1.0)
    m.input_layer = "0"
    from minignn.train import _skip_input_grad
    _skip_input_grad(m)
    assert m[1].needs_input_grad
    m.input_layer = "nope"
    with pytest.raises(ValueError, match="input_layer: expected the name of one of its modules, got 'nope'"):
        _skip_input_grad(m)


def test_run_files_are_standard_json_and_checkpoints_keep_non_finite_values(small_data, tmp_path, monkeypatch):
    import minignn.train as tr
    real = tr.evaluate

    def inf_test_loss(*a, **kw):
        r = real(*a, **kw)
        r["loss"] = float("inf")  # e.g. a confidently wrong test prediction overflowing
        return r
    monkeypatch.setattr(tr, "evaluate", inf_test_loss)
    t = _trainer(_config(epochs=1, pool="max"), tmp_path, small_data)
    summary = t.run()

    def strict(text):
        return json.loads(text, parse_constant=lambda name: pytest.fail(f"not standard JSON: {name}"))
    rec = strict((tmp_path / "metrics.jsonl").read_text().splitlines()[0])
    assert rec["test_loss"] is None and rec["train_loss"] == t.history[0]["train_loss"]
    strict((tmp_path / "summary.json").read_text())
    strict((tmp_path / "config.json").read_text())
    assert summary["epochs"] == 1
    with np.load(tmp_path / "checkpoint.npz") as z:
        strict(z["__meta__"].tobytes().decode("utf-8"))
    # the checkpoint itself keeps the exact value
    hist = load_checkpoint(str(tmp_path / "checkpoint.npz"))["history"]
    assert hist[0]["test_loss"] == float("inf")
    state = {"a": [float("nan"), float("-inf"), 1.5], "b": np.float32("inf")}
    save_checkpoint(str(tmp_path / "c.npz"), state)
    back = load_checkpoint(str(tmp_path / "c.npz"))
    assert math.isnan(back["a"][0]) and back["a"][1:] == [float("-inf"), 1.5] and back["b"] == float("inf")
