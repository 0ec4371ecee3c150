"""Adam, AdamW, RMSprop and Adadelta: hand-computed steps, step-by-step agreement with
torch.optim (values and state_dict layout, both ways), argument validation, version bumps.

torch is required where the environment variable CI is set; elsewhere the torch cross-checks
skip when it is not installed (the hand-computed tests always run)."""
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as hst

import minidl
from minidl.nn import Parameter
from minidl.optim import SGD, Adadelta, Adam, AdamW, RMSprop
from conftest import require

IMPL_SWITCHES = {"foreach", "capturable", "differentiable", "fused"}  # torch-only switches


def _torch():
    """torch for the cross-checks: skips locally, fails in CI (conftest.require)."""
    return require("torch")


def _param(values, dtype=np.float64, device="cpu"):
    return Parameter(minidl.Tensor(np.array(values, dtype=dtype), device=device).data)


def _grad(p, g):
    p.grad = minidl.Tensor(np.asarray(g, dtype=p.dtype), device=p.device)


# -- hand-computed steps ---------------------------------------------------------------------------

def test_adam_two_steps_by_hand():
    p = _param([1.0])
    opt = Adam([p], lr=0.1)
    _grad(p, [1.0])
    opt.step()
    # m = 0.1, v = 0.001, bias corrections 0.1 and 0.001: w = 1 - (0.1/0.1) * 0.1 / (1 + 1e-8)
    assert p.numpy()[0] == pytest.approx(1 - 0.1 / (1 + 1e-8), abs=1e-15)
    _grad(p, [-1.0])
    opt.step()
    # m = 0.1 + 0.1 * (-1 - 0.1) = -0.01, v = 0.000999 + 0.001 = 0.001999 = 1 - 0.999**2,
    # so sqrt(v / bc2) = 1; bc1 = 1 - 0.81 = 0.19: w += (0.1 / 0.19) * 0.01 / (1 + 1e-8)
    w1 = 1 - 0.1 / (1 + 1e-8)
    assert p.numpy()[0] == pytest.approx(w1 + 0.1 / 19 / (1 + 1e-8), abs=1e-14)
    st = opt.state[p]
    assert float(st["step"]) == 2.0 and st["step"].dtype == np.float32
    np.testing.assert_allclose(st["exp_avg"], [-0.01], atol=1e-16)
    np.testing.assert_allclose(st["exp_avg_sq"], [0.001999], atol=1e-16)


def test_adam_l2_and_adamw_decoupled_decay_by_hand():
    # gradient 0, weight 2, lr 0.1, wd 0.5
    pw = _param([2.0])
    adamw = AdamW([pw], lr=0.1, weight_decay=0.5)
    for _ in range(2):
        _grad(pw, [0.0])
        adamw.step()
    # decoupled: w *= 1 - 0.05 each step; the Adam part moves nothing (m = 0)
    assert pw.numpy()[0] == pytest.approx(2 * 0.95 * 0.95, abs=1e-15)

    pa = _param([2.0])
    adam = Adam([pa], lr=0.1, weight_decay=0.5)
    _grad(pa, [0.0])
    adam.step()
    # L2: g = 0.5 * 2 = 1 -> the first Adam step is lr * g / |g| = 0.1 (up to eps)
    w1 = 2 - 0.1 / (1 + 1e-8)
    assert pa.numpy()[0] == pytest.approx(w1, abs=1e-14)
    _grad(pa, [0.0])
    adam.step()
    g2 = 0.5 * w1
    m2 = 0.1 + 0.1 * (g2 - 0.1)
    v2 = 0.999 * 0.001 + 0.001 * g2 * g2
    w2 = w1 - 0.1 / 0.19 * m2 / (math.sqrt(v2) / math.sqrt(0.001999) + 1e-8)
    assert pa.numpy()[0] == pytest.approx(w2, abs=1e-14)


def test_adam_amsgrad_keeps_the_largest_second_moment():
    p = _param([0.0])
    opt = Adam([p], lr=0.1, amsgrad=True)
    for g in ([10.0], [0.0]):
        _grad(p, g)
        opt.step()
    # v1 = 0.1, v2 = 0.0999; the max stays at 0.1
    np.testing.assert_allclose(opt.state[p]["max_exp_avg_sq"], [0.1], rtol=1e-15)
    np.testing.assert_allclose(opt.state[p]["exp_avg_sq"], [0.0999], rtol=1e-14)


def test_rmsprop_by_hand_plain_centered_momentum():
    p = _param([1.0])
    opt = RMSprop([p], lr=0.01)
    _grad(p, [2.0])
    opt.step()
    # s = 0.01 * 4 = 0.04, sqrt = 0.2: w = 1 - 0.01 * 2 / (0.2 + 1e-8)
    assert p.numpy()[0] == pytest.approx(1 - 0.02 / (0.2 + 1e-8), abs=1e-15)

    p = _param([1.0])
    opt = RMSprop([p], lr=0.01, centered=True, momentum=0.5)
    _grad(p, [2.0])
    opt.step()
    # a = 0.02, s - a*a = 0.0396; b = 2 / (sqrt(0.0396) + 1e-8); w = 1 - 0.01 * b
    b1 = 2 / (math.sqrt(0.0396) + 1e-8)
    assert p.numpy()[0] == pytest.approx(1 - 0.01 * b1, abs=1e-14)
    _grad(p, [2.0])
    opt.step()
    s2, a2 = 0.99 * 0.04 + 0.04, 0.02 + 0.01 * (2 - 0.02)
    b2 = 0.5 * b1 + 2 / (math.sqrt(s2 - a2 * a2) + 1e-8)
    assert p.numpy()[0] == pytest.approx(1 - 0.01 * b1 - 0.01 * b2, abs=1e-13)
    assert set(opt.state[p]) == {"step", "square_avg", "momentum_buffer", "grad_avg"}


def test_adadelta_by_hand():
    p = _param([1.0])
    opt = Adadelta([p])  # lr 1, rho 0.9, eps 1e-6
    _grad(p, [1.0])
    opt.step()
    # s = 0.1; d = sqrt(0 + 1e-6) / sqrt(0.1 + 1e-6) * 1; u = 0.1 * d^2; w = 1 - d
    d1 = 1e-3 / math.sqrt(0.100001)
    assert p.numpy()[0] == pytest.approx(1 - d1, abs=1e-15)
    _grad(p, [1.0])
    opt.step()
    d2 = math.sqrt(0.1 * d1 * d1 + 1e-6) / math.sqrt(0.19 + 1e-6)
    assert p.numpy()[0] == pytest.approx(1 - d1 - d2, abs=1e-15)
    np.testing.assert_allclose(opt.state[p]["acc_delta"], [0.9 * 0.1 * d1 * d1 + 0.1 * d2 * d2],
                               rtol=1e-13)


def test_torch_defaults():
    p = _param([1.0])
    assert Adam([p]).defaults == dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0,
                                      amsgrad=False, maximize=False,
                                      decoupled_weight_decay=False)
    assert AdamW([p]).defaults["weight_decay"] == 1e-2
    assert AdamW([p]).defaults["decoupled_weight_decay"] is True
    assert RMSprop([p]).defaults == dict(lr=1e-2, momentum=0, alpha=0.99, eps=1e-8,
                                         centered=False, weight_decay=0, maximize=False)
    assert Adadelta([p]).defaults == dict(lr=1.0, rho=0.9, eps=1e-6, weight_decay=0,
                                          maximize=False)


# -- step by step against torch --------------------------------------------------------------------

CASES = [
    ("Adam", {}), ("Adam", dict(weight_decay=0.1, amsgrad=True)),
    ("Adam", dict(betas=(0.5, 0.9), eps=1e-3, maximize=True)),
    ("Adam", dict(weight_decay=0.05, decoupled_weight_decay=True)),
    ("AdamW", {}), ("AdamW", dict(weight_decay=0.3, amsgrad=True, maximize=True)),
    ("RMSprop", {}), ("RMSprop", dict(alpha=0.9, momentum=0.9)),
    ("RMSprop", dict(centered=True, weight_decay=0.1, momentum=0.5, maximize=True)),
    ("Adadelta", {}), ("Adadelta", dict(lr=0.5, rho=0.5, eps=1e-4, weight_decay=0.1)),
    ("Adadelta", dict(maximize=True)),
    ("SGD", dict(momentum=0.9, nesterov=True, weight_decay=0.01)),
    ("SGD", dict(momentum=0.9, dampening=0.1, maximize=True)),
]
MINE = {"Adam": Adam, "AdamW": AdamW, "RMSprop": RMSprop, "Adadelta": Adadelta, "SGD": SGD}


def _pair_of_runs(torch, name, kw, w0s, dtype=np.float64):
    """Two parameters in two groups (the second with its own lr), for minidl and torch."""
    ps = [_param(w, dtype) for w in w0s]
    tps = [torch.nn.Parameter(torch.tensor(np.array(w, dtype=dtype))) for w in w0s]
    lr = kw.get("lr", 1e-2)
    rest = {k: v for k, v in kw.items() if k != "lr"}
    mine = MINE[name]([{"params": [ps[0]]}, {"params": [ps[1]], "lr": lr * 3}], lr=lr, **rest)
    theirs = getattr(torch.optim, name)([{"params": [tps[0]]}, {"params": [tps[1]],
                                                               "lr": lr * 3}], lr=lr, **rest)
    return ps, tps, mine, theirs


@pytest.mark.parametrize("name,kw", CASES)
def test_matches_torch_step_by_step(name, kw):
    torch = _torch()
    rng = np.random.default_rng(7)
    w0s = [rng.normal(size=(3, 4)), rng.normal(size=(5,))]
    ps, tps, mine, theirs = _pair_of_runs(torch, name, kw, w0s)
    for step in range(10):
        if step == 6:  # a schedule changed the rate mid-run
            for o in (mine, theirs):
                o.param_groups[0]["lr"] *= 0.1
        for p, tp in zip(ps, tps):
            g = rng.normal(size=p.shape) * (1 + step)
            if step == 3 and p is ps[1]:
                continue  # a parameter without a gradient this step is skipped by both
            p.grad = minidl.Tensor(g)
            tp.grad = torch.tensor(g)
        mine.step()
        theirs.step()
        for p, tp in zip(ps, tps):
            p.grad, tp.grad = None, None
            np.testing.assert_allclose(p.numpy(), tp.detach().numpy(), rtol=1e-12, atol=1e-14)
    _compare_state_dicts(mine.state_dict(), theirs.state_dict())


def _compare_state_dicts(mine, theirs):
    assert set(mine) == {"state", "param_groups"}
    assert sorted(mine["state"]) == sorted(theirs["state"])
    for idx, tst in theirs["state"].items():
        st = mine["state"][idx]
        assert list(st) == list(tst), (list(st), list(tst))  # same keys, same order
        for k, tv in tst.items():
            v = st[k]
            assert isinstance(v, np.ndarray) and v.shape == tuple(tv.shape), k
            assert str(v.dtype) == str(tv.dtype).replace("torch.", ""), (k, v.dtype, tv.dtype)
            np.testing.assert_allclose(v, tv.numpy(), rtol=1e-12, atol=1e-15)
    assert len(mine["param_groups"]) == len(theirs["param_groups"])
    for g, tg in zip(mine["param_groups"], theirs["param_groups"]):
        assert set(g) - {"style"} == set(tg) - IMPL_SWITCHES  # style: SGD's paper form
        for k in set(g) - {"style"}:
            assert g[k] == tg[k] and type(g[k]) is type(tg[k]), (k, g[k], tg[k])


@given(name=hst.sampled_from(["Adam", "AdamW", "RMSprop", "Adadelta", "SGD"]),
       lr=hst.sampled_from([1e-3, 0.05, 1.0]), wd=hst.sampled_from([0, 0.01, 0.3]),
       flag=hst.booleans(), maximize=hst.booleans(), m=hst.sampled_from([0.0, 0.5, 0.95]),
       shape=hst.tuples(hst.integers(1, 4), hst.integers(1, 5)), steps=hst.integers(1, 6),
       seed=hst.integers(0, 2**16))
def test_drawn_hyperparameters_match_torch(name, lr, wd, flag, maximize, m, shape, steps, seed):
    torch = _torch()
    kw = {"lr": lr, "weight_decay": wd, "maximize": maximize}
    if name in ("Adam", "AdamW"):
        kw.update(amsgrad=flag, betas=(m, 0.999 if flag else 0.9))
    elif name == "RMSprop":
        kw.update(centered=flag, momentum=m, alpha=0.9 if flag else 0.99)
    elif name == "Adadelta":
        kw.update(rho=m)
    else:
        kw.update(momentum=m, nesterov=flag and m > 0)
    rng = np.random.default_rng(seed)
    w0 = rng.normal(size=shape)
    p, tp = _param(w0), torch.nn.Parameter(torch.tensor(w0))
    mine, theirs = MINE[name]([p], **kw), getattr(torch.optim, name)([tp], **kw)
    for _ in range(steps):
        g = rng.normal(size=shape) * rng.choice([1e-3, 1.0, 1e3])
        p.grad, tp.grad = minidl.Tensor(g), torch.tensor(g)
        mine.step()
        theirs.step()
        np.testing.assert_allclose(p.numpy(), tp.detach().numpy(), rtol=1e-11, atol=1e-13)

@pytest.mark.parametrize("name,kw", CASES[::2])
def test_state_dict_crosses_to_torch_and_back(name, kw):
    """A torch state dict (as arrays) loads into minidl and both continue identically; the
    minidl state dict (as torch tensors) loads into torch and both continue identically."""
    torch = _torch()
    rng = np.random.default_rng(11)
    w0s = [rng.normal(size=(2, 3)), rng.normal(size=(4,))]
    grads = [[rng.normal(size=(2, 3)), rng.normal(size=(4,))] for _ in range(8)]

    def run(ps, tps, mine, theirs, gs):
        for g in gs:
            for p, tp, gi in zip(ps, tps, g):
                p.grad, tp.grad = minidl.Tensor(gi), torch.tensor(gi)
            mine.step()
            theirs.step()

    ps, tps, mine, theirs = _pair_of_runs(torch, name, kw, w0s)
    run(ps, tps, mine, theirs, grads[:4])
    # torch -> minidl: a fresh minidl optimizer over copies of the current weights
    tsd = theirs.state_dict()
    as_arrays = {"state": {i: {k: v.numpy() for k, v in st.items()}
                           for i, st in tsd["state"].items()},
                 "param_groups": tsd["param_groups"]}
    ps2 = [_param(p.numpy()) for p in ps]
    mine2 = MINE[name]([{"params": [ps2[0]]}, {"params": [ps2[1]]}], lr=123.0)
    mine2.load_state_dict(as_arrays)
    assert mine2.param_groups[1]["lr"] == theirs.param_groups[1]["lr"]
    # minidl -> torch: a fresh torch optimizer over copies
    msd = mine.state_dict()
    as_tensors = {"state": {i: {k: torch.tensor(v) for k, v in st.items()}
                            for i, st in msd["state"].items()},
                  "param_groups": msd["param_groups"]}
    tps2 = [torch.nn.Parameter(tp.detach().clone()) for tp in tps]
    theirs2 = getattr(torch.optim, name)([{"params": [tps2[0]]}, {"params": [tps2[1]]}], lr=9.0)
    theirs2.load_state_dict(as_tensors)
    run(ps2, tps2, mine2, theirs2, grads[4:])
    run(ps, tps, mine, theirs, grads[4:])
    for a, b, c, d in zip(ps, ps2, tps, tps2):
        np.testing.assert_allclose(b.numpy(), c.detach().numpy(), rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(d.detach().numpy(), c.detach().numpy(), rtol=1e-12,
                                   atol=1e-14)
        np.testing.assert_allclose(a.numpy(), c.detach().numpy(), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name,kw", [CASES[1], CASES[8], CASES[10]])
def test_state_dict_files_cross_between_minidl_save_and_torch_load(tmp_path, name, kw):
    """minidl.save(opt.state_dict(), f.pt) -> torch.load -> torch optimizer, and torch.save ->
    minidl.load -> minidl optimizer: both continue as the optimizers they were saved from."""
    torch = _torch()
    rng = np.random.default_rng(3)
    w0s = [rng.normal(size=(2, 3)), rng.normal(size=(4,))]
    ps, tps, mine, theirs = _pair_of_runs(torch, name, kw, w0s)

    def run(pairs, n):
        for _ in range(n):
            gs = [rng.normal(size=p.shape) for p in ps]
            for params, opt, wrap in pairs:
                for p, g in zip(params, gs):
                    p.grad = wrap(g)
                opt.step()

    run([(ps, mine, minidl.Tensor), (tps, theirs, torch.tensor)], 3)
    minidl.save(mine.state_dict(), str(tmp_path / "mine.pt"))
    torch.save(theirs.state_dict(), str(tmp_path / "theirs.pt"))
    tps2 = [torch.nn.Parameter(torch.tensor(p.numpy())) for p in ps]
    theirs2 = getattr(torch.optim, name)([{"params": [tps2[0]]}, {"params": [tps2[1]]}], lr=5.0)
    theirs2.load_state_dict(torch.load(str(tmp_path / "mine.pt"), weights_only=True))
    ps2 = [_param(tp.detach().numpy()) for tp in tps]
    mine2 = MINE[name]([{"params": [ps2[0]]}, {"params": [ps2[1]]}], lr=5.0)
    mine2.load_state_dict(minidl.load(str(tmp_path / "theirs.pt")))
    run([(ps, mine, minidl.Tensor), (tps, theirs, torch.tensor), (tps2, theirs2, torch.tensor),
         (ps2, mine2, minidl.Tensor)], 4)
    for a, b, c, d in zip(ps, tps, tps2, ps2):
        for other in (b.detach().numpy(), c.detach().numpy(), d.numpy()):
            np.testing.assert_allclose(other, a.numpy(), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", ["Adam", "AdamW", "RMSprop", "Adadelta"])
def test_float32_matches_torch_float32_and_stays_in_place(name):
    torch = _torch()
    rng = np.random.default_rng(5)
    w0s = [rng.normal(size=(4, 3)), rng.normal(size=(3,))]
    ps, tps, mine, theirs = _pair_of_runs(torch, name, {}, w0s, dtype=np.float32)
    arrays = [p.data for p in ps]
    for _ in range(5):
        for p, tp in zip(ps, tps):
            g = rng.normal(size=p.shape).astype(np.float32)
            p.grad, tp.grad = minidl.Tensor(g), torch.tensor(g)
        mine.step()
        theirs.step()
    for p, tp, arr in zip(ps, tps, arrays):
        assert p.data is arr and p.dtype == np.float32
        np.testing.assert_allclose(p.numpy(), tp.detach().numpy(), rtol=1e-5, atol=1e-6)
    for st in mine.state.values():
        assert all(v.dtype == np.float32 for v in st.values())


# -- state round trip inside minidl (JSON-able checkpoint path) ------------------------------------

@pytest.mark.parametrize("name,kw", CASES[::3])
def test_state_dict_round_trip_through_a_checkpoint(tmp_path, name, kw):
    from minidl.train.checkpoint import load_checkpoint, save_checkpoint
    from train_helpers import TinyMLP
    rng = np.random.default_rng(2)

    def grads(model):
        return [rng.normal(size=p.shape) for p in model.parameters()]

    kw = dict(kw, lr=0.01)  # SGD has no default rate
    minidl.random.seed(0)
    model = TinyMLP()
    opt = MINE[name](model.parameters(), **kw)
    gs = [grads(model) for _ in range(6)]

    def run(model, opt, part):
        for g in part:
            for p, gi in zip(model.parameters(), g):
                p.grad = minidl.Tensor(gi.astype(p.dtype))
            opt.step()

    run(model, opt, gs[:3])
    save_checkpoint(tmp_path / "c.npz", model, opt)
    minidl.random.seed(1)
    model2 = TinyMLP()
    opt2 = MINE[name](model2.parameters(), **kw)
    load_checkpoint(tmp_path / "c.npz", model2, opt2)
    run(model, opt, gs[3:])
    run(model2, opt2, gs[3:])
    for a, b in zip(model.parameters(), model2.parameters()):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_load_state_dict_accepts_tensors_and_numbers():
    p = _param([1.0, 2.0])
    opt = Adam([p], lr=0.1)
    sd = {"state": {0: {"step": 3, "exp_avg": minidl.Tensor(np.array([0.1, 0.2])),
                        "exp_avg_sq": np.array([0.01, 0.02])}},
          "param_groups": [dict(opt.state_dict()["param_groups"][0])]}
    opt.load_state_dict(sd)
    st = opt.state[p]
    assert st["step"].dtype == np.float32 and float(st["step"]) == 3.0
    assert isinstance(st["exp_avg"], np.ndarray)
    np.testing.assert_array_equal(st["exp_avg"], [0.1, 0.2])


# -- versions --------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["SGD", "Adam", "AdamW", "RMSprop", "Adadelta"])
def test_each_update_bumps_the_version_of_updated_parameters_only(name):
    p, q = _param([1.0, 2.0]), _param([3.0])
    opt = MINE[name]([p, q], lr=0.1)
    v_p, v_q = p._version, q._version
    for i in range(3):
        _grad(p, [0.5, -0.5])
        opt.step()
        assert p._version == v_p + i + 1
    assert q._version == v_q  # no gradient: not touched, not bumped


@pytest.mark.parametrize("name", ["SGD", "Adam", "AdamW", "RMSprop", "Adadelta"])
def test_a_step_between_forward_and_backward_is_caught(name):
    w = _param([1.0, 2.0])
    opt = MINE[name]([w], lr=0.1)
    loss = (w * w).sum()  # the product saved w for its backward
    _grad(w, [1.0, 1.0])
    opt.step()  # changes w in place
    with pytest.raises(RuntimeError, match="modified by an in-place operation"):
        loss.backward()
    loss = (w * w).sum()  # a fresh forward after the step is fine
    w.grad = None
    loss.backward()
    np.testing.assert_allclose(w.grad.numpy(), 2 * w.numpy())


# -- validation (issue: NaN / negative hyperparameters are rejected, naming the argument) ----------

BAD = [
    ("Adam", "lr", float("nan")), ("Adam", "lr", -1e-3), ("Adam", "eps", -1.0),
    ("Adam", "weight_decay", -0.1), ("Adam", "weight_decay", float("nan")),
    ("AdamW", "lr", float("inf")),
    ("RMSprop", "alpha", 1.5), ("RMSprop", "alpha", float("nan")), ("RMSprop", "momentum", -0.9),
    ("RMSprop", "eps", float("nan")), ("RMSprop", "weight_decay", -1.0),
    ("Adadelta", "rho", 1.1), ("Adadelta", "rho", -0.1), ("Adadelta", "lr", float("nan")),
    ("Adadelta", "eps", -1e-6), ("SGD", "momentum", float("nan")), ("SGD", "lr", float("nan")),
    ("SGD", "weight_decay", -1e-4), ("SGD", "dampening", float("nan")),
]


@pytest.mark.parametrize("name,arg,value", BAD)
def test_bad_hyperparameters_raise_naming_the_argument(name, arg, value):
    p = _param([1.0])
    kw = {"lr": 0.1, arg: value}
    with pytest.raises(ValueError, match=rf"{name}: invalid .*{arg}"):
        MINE[name]([p], **kw)
    opt = MINE[name]([p], lr=0.1)  # the same checks for a group added later
    with pytest.raises(ValueError, match=arg):
        opt.add_param_group({"params": [_param([2.0])], arg: value})


@pytest.mark.parametrize("value", ["0.1", None, True, [0.1]])
def test_non_numbers_raise_type_error(value):
    with pytest.raises(TypeError, match="lr"):
        Adam([_param([1.0])], lr=value)


@pytest.mark.parametrize("betas,err", [((0.9, 1.0), ValueError), ((-0.1, 0.9), ValueError),
                                       ((float("nan"), 0.9), ValueError), ((0.9,), TypeError),
                                       ("ab", TypeError), ((0.9, "x"), TypeError)])
def test_bad_betas(betas, err):
    with pytest.raises(err, match="betas"):
        Adam([_param([1.0])], betas=betas)


def test_load_state_dict_with_a_bad_value_changes_nothing():
    p = _param([1.0])
    opt = Adam([p], lr=0.1)
    _grad(p, [1.0])
    opt.step()
    sd = opt.state_dict()
    before = (dict(opt.param_groups[0]), {k: np.copy(v) for k, v in opt.state[p].items()})
    sd["param_groups"][0]["lr"] = float("nan")
    sd["state"][0]["exp_avg"] = np.array([42.0])
    with pytest.raises(ValueError, match="lr"):
        opt.load_state_dict(sd)
    assert opt.param_groups[0] == before[0]
    np.testing.assert_array_equal(opt.state[p]["exp_avg"], before[1]["exp_avg"])


# -- devices ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["Adam", "AdamW", "RMSprop", "Adadelta"])
def test_same_result_on_each_device(device, name):
    rng = np.random.default_rng(0)
    w0, grads = rng.normal(size=(4, 5)), list(rng.normal(size=(3, 4, 5)))
    out = []
    for dev in (device, "cpu"):
        p = _param(w0, np.float32, dev)
        opt = MINE[name]([p], lr=0.05)
        for g in grads:
            _grad(p, g)
            opt.step()
        assert p.device == dev and all(getattr(v, "ndim", 0) == 0 or
                                       minidl.backend.device_of(v) == dev
                                       for v in opt.state[p].values())
        out.append(p.numpy())
    np.testing.assert_allclose(out[0], out[1], rtol=1e-5, atol=1e-6)
