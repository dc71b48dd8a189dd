"""Adam and AdamW (minignn.optim) against the formula, written out again here in plain float64
NumPy; their state_dict round trip and its validation; settings; make_optimizer; state_arrays of
every optimizer; and, where PyTorch imports, torch.optim.Adam / AdamW step for step."""
import copy

import numpy as np
import pytest

from minignn import Parameter
from minignn.checkpoint import load_checkpoint, save_checkpoint
from minignn.optim import OPTIMIZERS, SGD, Adam, AdamW, adam_update, make_optimizer

SHAPES = [(3, 4), (5,), (2, 1, 3)]


# ------------------------------------------------------------------------- the formula, by hand
def reference_adam(w0, grads, lrs, beta1, beta2, eps, weight_decay, decoupled):
    """The weights and moments after each step, from the formula of the task, elementwise in
    float64: a list of (w, m, v) per step. ``lrs`` holds one learning rate per step."""
    w = np.array(w0, dtype=np.float64)
    m = np.zeros_like(w)
    v = np.zeros_like(w)
    out = []
    for t, (g, lr) in enumerate(zip(grads, lrs), start=1):
        g = np.array(g, dtype=np.float64)
        if decoupled:
            w = w - lr * weight_decay * w
        else:
            g = g + weight_decay * w
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g * g
        m_hat = m / (1 - beta1 ** t)
        v_hat = v / (1 - beta2 ** t)
        w = w - lr * m_hat / (np.sqrt(v_hat) + eps)
        out.append((w.copy(), m.copy(), v.copy()))
    return out


def make_params(seed, dtype=np.float64):
    rng = np.random.default_rng(seed)
    return [Parameter(rng.standard_normal(s).astype(dtype)) for s in SHAPES]


def gradient_sequence(seed, steps, dtype=np.float64):
    """Per step, one gradient per parameter, changing from step to step (scale and sign)."""
    rng = np.random.default_rng(seed)
    return [[(rng.standard_normal(s) * (0.5 + t)).astype(dtype) for s in SHAPES] for t in range(steps)]


def run(opt, grads, lrs=None):
    """Step ``opt`` through ``grads``, setting ``opt.lr`` from ``lrs`` first (as a schedule does);
    a list of per-step snapshots of (weights, first moments, second moments)."""
    snaps = []
    for t, gs in enumerate(grads):
        if lrs is not None:
            opt.lr = lrs[t]
        opt.zero_grad()
        for p, g in zip(opt.params, gs):
            p.grad += g
        before = [p.grad.copy() for p in opt.params]
        opt.step()
        for p, b in zip(opt.params, before):
            np.testing.assert_array_equal(p.grad, b, err_msg="step() changed a gradient")
        snaps.append(([p.data.copy() for p in opt.params], [m.copy() for m in opt.first_moments],
                      [v.copy() for v in opt.second_moments]))
    return snaps


# ------------------------------------------------------------------------------ against the formula
@pytest.mark.parametrize("decoupled", [False, True], ids=["adam", "adamw"])
@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
@pytest.mark.parametrize("betas, eps", [((0.9, 0.999), 1e-8), ((0.5, 0.9), 1e-3), ((0.0, 0.0), 1e-8)])
def test_every_step_matches_the_formula_in_float64(decoupled, weight_decay, betas, eps):
    steps = 5
    params = make_params(1)
    w0 = [p.data.copy() for p in params]
    grads = gradient_sequence(2, steps)
    lrs = [0.01, 0.02, 0.005, 0.03, 0.01]         # overwritten every step, as a schedule does
    cls = AdamW if decoupled else Adam
    opt = cls(params, lr=0.5, betas=betas, eps=eps, weight_decay=weight_decay)
    got = run(opt, grads, lrs)
    assert opt.step_count == steps
    for i in range(len(SHAPES)):
        want = reference_adam(w0[i], [g[i] for g in grads], lrs, *betas, eps, weight_decay, decoupled)
        for t in range(steps):
            for k, what in enumerate(("weights", "first moment", "second moment")):
                np.testing.assert_allclose(got[t][k][i], want[t][k], rtol=1e-13, atol=1e-15,
                                           err_msg=f"param {i}, step {t + 1}: {what}")


@pytest.mark.parametrize("cls", [Adam, AdamW])
def test_float32_stays_float32_and_follows_the_float64_formula(cls):
    params = make_params(3, np.float32)
    w0 = [p.data.copy() for p in params]
    grads = gradient_sequence(4, 5, np.float32)
    opt = cls(params, lr=0.01, weight_decay=0.05)
    got = run(opt, grads)
    for i in range(len(SHAPES)):
        want = reference_adam(w0[i], [g[i] for g in grads], [0.01] * 5, 0.9, 0.999, 1e-8, 0.05,
                              cls is AdamW)
        for t in range(5):
            for k in range(3):
                assert got[t][k][i].dtype == np.float32
                np.testing.assert_allclose(got[t][k][i], want[t][k], rtol=2e-5, atol=1e-6)


def test_first_step_moves_every_weight_by_lr_against_the_sign_of_its_gradient():
    """Step 1, no weight decay: m_hat = g, v_hat = g^2, so the step is lr * g / (|g| + eps)."""
    rng = np.random.default_rng(5)
    w0 = rng.standard_normal((4, 6))
    g = rng.standard_normal((4, 6))
    g = np.where(np.abs(g) < 0.1, 0.1 * np.sign(g) + 0.05 * g, g)  # |g| >= 0.1 (and never 0)
    for cls in (Adam, AdamW):
        p = Parameter(w0.copy())
        opt = cls([p], lr=0.01, weight_decay=0.0)
        p.grad[...] = g
        opt.step()
        delta = p.data - w0
        assert np.all(np.sign(delta) == -np.sign(g))
        # exactly -lr * g / (|g| + eps), i.e. -lr * sign(g) up to lr * eps / |g|
        assert np.all(np.abs(delta + 0.01 * np.sign(g)) <= 0.01 * 1e-8 / np.abs(g) + 1e-16), cls.__name__


def test_adam_and_adamw_differ_only_where_the_decay_enters():
    rng = np.random.default_rng(6)
    w0 = rng.standard_normal(50)
    w0 = np.where(np.abs(w0) < 0.1, 0.1, w0)
    lr, wd = 0.01, 0.1
    # a zero gradient: Adam's L2 term is a whole Adam step on wd * w, about lr * sign(w) ...
    pa, pw = Parameter(w0.copy()), Parameter(w0.copy())
    adam, adamw = Adam([pa], lr=lr, weight_decay=wd), AdamW([pw], lr=lr, weight_decay=wd)
    adam.step()
    adamw.step()
    np.testing.assert_allclose(pa.data - w0, -lr * wd * w0 / (np.abs(wd * w0) + 1e-8), rtol=1e-12)
    assert np.all(np.abs((pa.data - w0) + lr * np.sign(w0)) <= lr * 1e-6)
    # ... AdamW's only the shrink by lr * wd * w, and its moments stay zero
    np.testing.assert_allclose(pw.data - w0, -lr * wd * w0, rtol=1e-12, atol=1e-18)
    assert not adamw.first_moments[0].any() and not adamw.second_moments[0].any()
    np.testing.assert_allclose(adam.first_moments[0], (1 - 0.9) * wd * w0, rtol=1e-15)
    # without weight decay the two are the same optimizer, bit for bit
    grads = [[rng.standard_normal(50)] for _ in range(4)]
    pa, pw = Parameter(w0.copy()), Parameter(w0.copy())
    a = run(Adam([pa], lr=lr), grads)
    b = run(AdamW([pw], lr=lr, weight_decay=0.0), grads)
    for sa, sb in zip(a, b):
        for xa, xb in zip(sa, sb):
            np.testing.assert_array_equal(xa[0], xb[0])


def test_adam_update_leaves_g_alone_updates_m_and_v_in_place_and_checks_step():
    rng = np.random.default_rng(7)
    w, g = rng.standard_normal(5), rng.standard_normal(5)
    w0, g0 = w.copy(), g.copy()
    m, v = np.zeros(5), np.zeros(5)
    m2, v2 = adam_update(w, g, m, v, 1, 0.1, 0.9, 0.999, 1e-8, 0.5, False)
    assert m2 is m and v2 is v
    np.testing.assert_array_equal(g, g0)                       # the L2 term went into a copy
    (w1, m1, v1), = reference_adam(w0, [g0], [0.1], 0.9, 0.999, 1e-8, 0.5, False)
    for got, want in ((w, w1), (m, m1), (v, v1)):
        np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-16)
    m3, v3 = adam_update(w, g, None, None, 1, 0.1, 0.9, 0.999, 1e-8, 0.0, True)
    assert m3.shape == v3.shape == (5,) and m3 is not m
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match=r"adam_update: step: expected an integer >= 1, got"):
            adam_update(w, g, m, v, bad, 0.1, 0.9, 0.999, 1e-8, 0.0, False)


# --------------------------------------------------------------------------------- state_dict
@pytest.mark.parametrize("cls", [Adam, AdamW])
@pytest.mark.parametrize("k", [0, 1, 3])
@pytest.mark.parametrize("through_a_file", [False, True])
def test_state_dict_round_trip_continues_bit_for_bit(cls, k, through_a_file, tmp_path):
    steps = 6
    grads = gradient_sequence(8, steps)
    lrs = [0.01 * (1 + t) for t in range(steps)]
    whole = run(cls(make_params(9), lr=0.1, betas=(0.8, 0.99), weight_decay=0.05), grads, lrs)

    first = cls(make_params(9), lr=0.1, betas=(0.8, 0.99), weight_decay=0.05)
    run(first, grads[:k], lrs[:k])
    state = first.state_dict()
    weights = [p.data.copy() for p in first.params]
    if through_a_file:
        save_checkpoint(str(tmp_path / "opt.npz"), {"optimizer": state})
        state = load_checkpoint(str(tmp_path / "opt.npz"))["optimizer"]
    fresh = cls(make_params(10))                       # other weights and settings: all replaced
    for p, w in zip(fresh.params, weights):
        p.data[...] = w
    assert fresh.load_state_dict(state) is fresh
    assert fresh.step_count == k and fresh.betas == (0.8, 0.99) and fresh.weight_decay == 0.05
    rest = run(fresh, grads[k:], lrs[k:])
    for t, (a, b) in enumerate(zip(whole[k:], rest)):
        for what, xa, xb in zip(("weights", "first moments", "second moments"), a, b):
            for i, (ya, yb) in enumerate(zip(xa, xb)):
                np.testing.assert_array_equal(ya, yb, err_msg=f"step {k + t + 1}, {what}[{i}]")


def test_state_dict_holds_the_keys_and_host_copies():
    opt = Adam(make_params(11), lr=0.01)
    s0 = opt.state_dict()
    assert tuple(s0) == Adam._STATE_KEYS == AdamW._STATE_KEYS
    assert s0["first_moments"] == [None] * 3 and s0["step_count"] == 0 and s0["decoupled"] is False
    run(opt, gradient_sequence(12, 1))
    s1 = opt.state_dict()
    assert s1["first_moments"][0] is not opt.first_moments[0]
    s1["first_moments"][0][...] = 7.0
    assert not np.any(opt.first_moments[0] == 7.0)
    assert AdamW(make_params(11)).state_dict()["decoupled"] is True


def _snapshot(opt):
    return copy.deepcopy((opt.lr, opt.betas, opt.eps, opt.weight_decay, opt.step_count,
                          opt.first_moments, opt.second_moments))


def _same(a, b):
    for x, y in zip(a, b):
        if isinstance(x, list):
            assert len(x) == len(y)
            for xi, yi in zip(x, y):
                assert (xi is None and yi is None) or np.array_equal(xi, yi)
        else:
            assert x == y


def _bad_states(good):
    def with_(**kw):
        return {**copy.deepcopy(good), **kw}

    def without(key):
        s = copy.deepcopy(good)
        del s[key]
        return s

    def moment(key, i, value):
        s = copy.deepcopy(good)
        s[key][i] = value
        return s

    return [
        (without("lr"), r"Adam.load_state_dict: missing entry 'lr'"),
        (without("second_moments"), r"Adam.load_state_dict: missing entry 'second_moments'"),
        (with_(lr=float("inf")), r"Adam.load_state_dict: lr: expected a finite real number > 0, got inf"),
        (with_(lr=float("nan")), r"Adam.load_state_dict: lr: expected a finite real number > 0, got nan"),
        (with_(eps=0.0), r"Adam.load_state_dict: eps: expected a finite real number > 0, got 0.0"),
        (with_(betas=[0.9, 1.0]), r"Adam.load_state_dict: betas\[1\]: expected a finite real number in \[0, 1\)"),
        (with_(betas=[0.9]), r"Adam.load_state_dict: betas: expected a pair"),
        (with_(weight_decay=-1.0), r"Adam.load_state_dict: weight_decay: expected a finite real number >= 0"),
        (with_(step_count=-1), r"Adam.load_state_dict: step_count: expected an integer >= 0, got -1"),
        (with_(decoupled=True), r"Adam.load_state_dict: decoupled: expected False \(an Adam state\), got True"),
        (moment("first_moments", 1, np.zeros((4,))),
         r"Adam.load_state_dict: first_moments\[1\]: expected shape \(5,\), got \(4,\)"),
        (moment("second_moments", 2, np.zeros((2, 3, 1))),
         r"Adam.load_state_dict: second_moments\[2\]: expected shape \(2, 1, 3\), got \(2, 3, 1\)"),
        (moment("second_moments", 0, -np.ones((3, 4))),
         r"Adam.load_state_dict: second_moments\[0\]: expected values >= 0"),
        (moment("first_moments", 0, np.full((3, 4), np.nan)),
         r"Adam.load_state_dict: first_moments\[0\]: expected finite values, got 12 NaN"),
        (moment("first_moments", 1, None),
         r"Adam.load_state_dict: first_moments\[1\]: expected an array of shape \(5,\), got None"),
        (moment("first_moments", 1, np.array(["a"] * 5)),
         r"Adam.load_state_dict: first_moments\[1\]: expected an integer or float array"),
        (with_(first_moments=good["first_moments"][:2]),
         r"Adam.load_state_dict: first_moments: expected 3 entries, got 2"),
    ]


def test_bad_state_names_the_entry_and_changes_nothing():
    source = Adam(make_params(13), lr=0.02)
    run(source, gradient_sequence(14, 2))
    good = source.state_dict()
    target = Adam(make_params(15), lr=0.5, betas=(0.5, 0.6), eps=1e-4, weight_decay=0.3)
    run(target, gradient_sequence(16, 1))
    for state, message in _bad_states(good):
        before = _snapshot(target)
        with pytest.raises(ValueError, match=message):
            target.load_state_dict(state)
        _same(before, _snapshot(target))
    with pytest.raises(TypeError, match=r"Adam.load_state_dict: state: expected a dict, got list"):
        target.load_state_dict([])
    # AdamW's messages name AdamW
    with pytest.raises(ValueError, match=r"AdamW.load_state_dict: decoupled: expected True \(an AdamW state\),"
                                         r" got False \(an Adam state"):
        AdamW(make_params(15)).load_state_dict(good)
    target.load_state_dict(good)        # and the good one still loads
    assert target.step_count == 2 and target.lr == 0.02


# ------------------------------------------------------------------------------- settings
@pytest.mark.parametrize("cls", [Adam, AdamW])
@pytest.mark.parametrize("kw, expect", [
    (dict(lr=0), "lr: expected a finite real number > 0, got 0"),
    (dict(lr=-1), "lr: expected a finite real number > 0, got -1"),
    (dict(lr=float("inf")), "lr: expected a finite real number > 0, got inf"),
    (dict(lr=True), "lr: expected a finite real number > 0, got True (a bool)"),
    (dict(betas=(1.0, 0.999)), "betas[0]: expected a finite real number in [0, 1), got 1.0"),
    (dict(betas=(0.9, -0.1)), "betas[1]: expected a finite real number in [0, 1), got -0.1"),
    (dict(betas=(0.9, float("nan"))), "betas[1]: expected a finite real number in [0, 1), got nan"),
    (dict(betas=0.9), "betas: expected a pair (beta1, beta2) of finite real numbers in [0, 1), got 0.9"),
    (dict(betas=(0.9, 0.99, 0.999)), "betas: expected a pair"),
    (dict(betas="0.9,0.99"), "betas: expected a pair"),
    (dict(eps=0.0), "eps: expected a finite real number > 0, got 0.0"),
    (dict(eps=float("inf")), "eps: expected a finite real number > 0, got inf"),
    (dict(weight_decay=-1e-4), "weight_decay: expected a finite real number >= 0, got -0.0001"),
    (dict(weight_decay=float("nan")), "weight_decay: expected a finite real number >= 0, got nan"),
])
def test_bad_settings_name_the_argument(cls, kw, expect):
    with pytest.raises((ValueError, TypeError)) as e:
        cls([Parameter(np.zeros(3, np.float32))], **kw)
    assert str(e.value).startswith(f"{cls.__name__}: {expect}"), str(e.value)


def test_bad_params_and_accepted_scalar_types():
    with pytest.raises(ValueError, match=r"Adam: params: expected at least one Parameter, got none"):
        Adam([])
    with pytest.raises(TypeError, match=r"AdamW: params\[0\]: expected a Parameter, got ndarray"):
        AdamW([np.zeros(3)])
    opt = Adam([Parameter(np.zeros(3))], lr=np.float32(0.5), betas=[np.float64(0.5), np.array(0.25)], eps=1,
               weight_decay=np.int64(0))
    assert (opt.lr, opt.betas, opt.eps, opt.weight_decay) == (0.5, (0.5, 0.25), 1.0, 0.0)
    assert all(type(x) is float for x in (opt.lr, *opt.betas, opt.eps, opt.weight_decay))
    assert Adam([Parameter(np.zeros(1))]).weight_decay == 0.0 and AdamW([Parameter(np.zeros(1))]).weight_decay == 1e-2


def test_make_optimizer_builds_each_with_its_settings():
    assert set(OPTIMIZERS) == {"sgd", "adam", "adamw"}
    sgd = make_optimizer("sgd", make_params(0), lr=0.1, momentum=0.8, nesterov=False, weight_decay=5e-4,
                         betas=(0.1, 0.2), eps=1.0)
    assert type(sgd) is SGD and (sgd.lr, sgd.momentum, sgd.nesterov, sgd.weight_decay) == (0.1, 0.8, False, 5e-4)
    default = make_optimizer("sgd", make_params(0), lr=0.1)
    assert default.momentum == 0.9 and default.nesterov is True and default.weight_decay == 0.0
    for name, cls in (("adam", Adam), ("adamw", AdamW)):
        opt = make_optimizer(name, make_params(0), lr=3e-4, momentum=0.0, nesterov=True, weight_decay=0.01,
                             betas=(0.8, 0.95), eps=1e-6)
        assert type(opt) is cls and (opt.lr, opt.betas, opt.eps, opt.weight_decay) == (3e-4, (0.8, 0.95), 1e-6, 0.01)
        assert make_optimizer(name, make_params(0), lr=1e-3).weight_decay == 0.0
    with pytest.raises(ValueError, match=r"^optimizer: expected one of 'sgd', 'adam', 'adamw', got 'rmsprop'$"):
        make_optimizer("rmsprop", make_params(0), lr=0.1)
    with pytest.raises(ValueError, match=r"^optimizer: expected one of 'sgd', 'adam', 'adamw', got \['adam'\]$"):
        make_optimizer(["adam"], make_params(0), lr=0.1)
    with pytest.raises(ValueError, match=r"^Adam: eps: expected"):
        make_optimizer("adam", make_params(0), lr=0.1, eps=-1.0)


# ---------------------------------------------------------------------------- state_arrays
def test_state_arrays_of_every_optimizer():
    params = make_params(17)
    plain = SGD(params, lr=0.1)
    plain.step()
    assert list(plain.state_arrays()) == [] and plain.buffers == [None] * 3

    momentum = SGD(make_params(17), lr=0.1, momentum=0.9)
    assert list(momentum.state_arrays()) == []
    momentum.params[1].grad[...] = 1.0
    momentum.step()
    got = list(momentum.state_arrays())
    assert [(i, label) for i, label, _ in got] == [(0, "momentum buffer"), (1, "momentum buffer"),
                                                   (2, "momentum buffer")]
    assert all(a is b for (_, _, a), b in zip(got, momentum.buffers))
    momentum.buffers[0] = None          # a buffer that is None is left out
    assert [i for i, _, _ in momentum.state_arrays()] == [1, 2]

    for cls in (Adam, AdamW):
        opt = cls(make_params(17))
        assert list(opt.state_arrays()) == []
        run(opt, gradient_sequence(18, 1))
        got = list(opt.state_arrays())
        assert [(i, label) for i, label, _ in got] == [(i, lab) for i in range(3)
                                                       for lab in ("first moment", "second moment")]
        for i, label, a in got:
            assert a is (opt.first_moments if label == "first moment" else opt.second_moments)[i]
        opt.second_moments[2][0, 0] = np.inf
        assert [(i, label) for i, label, a in opt.state_arrays() if not np.isfinite(a).all()] == \
            [(2, "second moment")]


def test_sgd_state_dict_format_is_unchanged():
    opt = SGD(make_params(19), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    assert SGD._STATE_KEYS == ("lr", "momentum", "nesterov", "weight_decay", "step_count", "buffers")
    assert tuple(opt.state_dict()) == SGD._STATE_KEYS


# --------------------------------------------------------------------------------- PyTorch
@pytest.mark.parametrize("name, weight_decay", [("adam", 0.0), ("adam", 0.1), ("adamw", 0.0), ("adamw", 0.1)])
def test_ten_steps_match_torch_in_float64(name, weight_decay):
    torch = pytest.importorskip("torch")
    steps = 10
    params = make_params(20)
    tparams = [torch.tensor(p.data.copy(), dtype=torch.float64, requires_grad=True) for p in params]
    lrs = [1e-2 * (1 + 0.3 * np.sin(t)) for t in range(steps)]
    kw = dict(lr=lrs[0], betas=(0.85, 0.99), eps=1e-6, weight_decay=weight_decay)
    ours = (Adam if name == "adam" else AdamW)(params, **kw)
    theirs = (torch.optim.Adam if name == "adam" else torch.optim.AdamW)(tparams, amsgrad=False, maximize=False,
                                                                           foreach=False, **kw)
    grads = gradient_sequence(21, steps)
    for t in range(steps):
        ours.lr = lrs[t]
        for group in theirs.param_groups:
            group["lr"] = lrs[t]
        ours.zero_grad()
        for p, tp, g in zip(ours.params, tparams, grads[t]):
            p.grad += g
            tp.grad = torch.tensor(g, dtype=torch.float64)
        ours.step()
        theirs.step()
        for i, (p, tp) in enumerate(zip(ours.params, tparams)):
            st = theirs.state[tp]
            np.testing.assert_allclose(p.data, tp.detach().numpy(), rtol=1e-10, atol=1e-14,
                                       err_msg=f"{name} step {t + 1}: weights {i}")
            np.testing.assert_allclose(ours.first_moments[i], st["exp_avg"].numpy(), rtol=1e-10, atol=1e-14)
            np.testing.assert_allclose(ours.second_moments[i], st["exp_avg_sq"].numpy(), rtol=1e-10, atol=1e-14)
