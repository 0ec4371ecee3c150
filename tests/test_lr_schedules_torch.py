"""CosineAnnealingLR, OneCycleLR and LambdaLR against hand-computed rates and step by step
against torch.optim.lr_scheduler; argument validation of every schedule (NaN / negative gamma,
milestones that are not non-negative integers, ...), the error naming the argument.

torch is required where CI is set; elsewhere its cross-checks skip without it."""
import json
import math

import numpy as np
import pytest

import minidl
from minidl.nn import Parameter
from minidl.optim import SGD, Adam
from minidl.optim.lr_scheduler import (CosineAnnealingLR, LambdaLR, MultiStepLR, OneCycleLR,
                                       ReduceLROnPlateau, StepLR, Warmup)
from conftest import require


def _torch():
    """torch for the cross-checks: skips locally, fails in CI (conftest.require)."""
    return require("torch")


def _opt(lr=1.0, groups=1, momentum=0.9, cls=SGD):
    ps = [Parameter(minidl.Tensor(np.zeros(2)).data) for _ in range(groups)]
    kw = {"momentum": momentum} if cls is SGD else {}
    return cls([{"params": [p]} for p in ps], lr=lr, **kw)


def _lrs(sched, n):
    out = []
    for _ in range(n):
        out.append(sched.get_last_lr()[0])
        sched.step()
    return out


# -- hand-computed rates ---------------------------------------------------------------------------

def test_cosine_by_hand_and_past_t_max():
    s = CosineAnnealingLR(_opt(1.0), T_max=4)
    # (1 + cos(pi t / 4)) / 2 for t = 0..8: cos(pi/4) = sqrt(2)/2
    a, b = (1 + math.sqrt(0.5)) / 2, (1 - math.sqrt(0.5)) / 2
    np.testing.assert_allclose(_lrs(s, 9), [1, a, 0.5, b, 0, b, 0.5, a, 1], atol=1e-15)
    s = CosineAnnealingLR(_opt(1.1), T_max=2, eta_min=0.1)
    np.testing.assert_allclose(_lrs(s, 3), [1.1, 0.6, 0.1], atol=1e-15)


def test_lambda_by_hand_one_function_per_group():
    opt = _opt(2.0, groups=2)
    s = LambdaLR(opt, [lambda t: 0.5 ** t, lambda t: 1.0 / (t + 1)])
    got = []
    for _ in range(4):
        got.append(s.get_last_lr())
        s.step()
    assert got == [[2.0, 2.0], [1.0, 1.0], [0.5, 2 / 3], [0.25, 0.5]]
    assert [g["lr"] for g in opt.param_groups] == [0.125, 0.4]
    s = LambdaLR(_opt(3.0, groups=2), lambda t: t)  # one function for all groups
    s.step()
    assert s.get_last_lr() == [3.0, 3.0]


def test_one_cycle_by_hand_with_momentum():
    opt = _opt(123.0)
    s = OneCycleLR(opt, max_lr=1.0, total_steps=10, anneal_strategy="linear")
    g = opt.param_groups[0]
    # start 1/25 = 0.04, peak 1 at step 0.3*10 - 1 = 2, end 0.04/1e4 = 4e-6 at step 9
    assert g["initial_lr"] == 0.04 and g["max_lr"] == 1.0 and g["min_lr"] == pytest.approx(4e-6)
    lrs, moms = [], []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        moms.append(opt.param_groups[0]["momentum"])
        s.step()
    up = [0.04, 0.52, 1.0]
    down = [1 + (4e-6 - 1) * k / 7 for k in range(1, 8)]
    np.testing.assert_allclose(lrs, up + down, rtol=1e-14)
    np.testing.assert_allclose(moms[:3], [0.95, 0.90, 0.85], rtol=1e-14)
    np.testing.assert_allclose(moms[-1], 0.95, rtol=1e-14)
    with pytest.raises(ValueError, match="total_steps"):
        s.step()  # step 11 of 10


def test_one_cycle_cos_and_adam_beta1():
    opt = _opt(0.1, cls=Adam)
    s = OneCycleLR(opt, max_lr=0.5, epochs=2, steps_per_epoch=5, pct_start=0.5)
    # phase 1 ends at step 4: cos anneal from 0.02 to 0.5; step 2 is halfway
    s.step()
    s.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.5 + (0.02 - 0.5) / 2, rel=1e-14)
    assert opt.param_groups[0]["betas"] == pytest.approx((0.9, 0.999), rel=1e-14)


def test_cosine_as_the_after_of_a_warmup():
    opt = _opt(1.0)
    main = CosineAnnealingLR(opt, T_max=4)
    w = Warmup(opt, factor=0.1, steps=2, after=main)
    got = _lrs(w, 5)
    c = [(1 + math.cos(math.pi * t / 4)) / 2 for t in range(5)]
    np.testing.assert_allclose(got, [0.1 * c[0], 0.1 * c[1], c[2], c[3], c[4]], atol=1e-15)


# -- against torch ---------------------------------------------------------------------------------

def _torch_opt(torch, lr, groups, cls="SGD"):
    ps = [torch.nn.Parameter(torch.zeros(2)) for _ in range(groups)]
    kw = {"momentum": 0.9} if cls == "SGD" else {}
    return getattr(torch.optim, cls)([{"params": [p]} for p in ps], lr=lr, **kw)


ONE_CYCLE = [dict(max_lr=0.3, total_steps=17),
             dict(max_lr=[0.3, 1.0], total_steps=23, anneal_strategy="linear", pct_start=0.25),
             dict(max_lr=0.2, epochs=3, steps_per_epoch=7, three_phase=True, div_factor=10.0,
                  final_div_factor=100.0, base_momentum=0.8, max_momentum=0.9),
             dict(max_lr=0.2, total_steps=9, cycle_momentum=False)]


def _make_pair(torch, kind, kw, cls="SGD"):
    mine_opt = _opt(0.1, groups=2, cls=SGD if cls == "SGD" else Adam)
    theirs_opt = _torch_opt(torch, 0.1, 2, cls)
    T = torch.optim.lr_scheduler
    if kind == "cosine":
        return CosineAnnealingLR(mine_opt, **kw), T.CosineAnnealingLR(theirs_opt, **kw)
    if kind == "onecycle":
        return OneCycleLR(mine_opt, **kw), T.OneCycleLR(theirs_opt, **kw)
    if kind == "lambda":
        fns = [lambda t: 0.9 ** t, lambda t: 1 / (1 + 0.1 * t)]
        return LambdaLR(mine_opt, fns), T.LambdaLR(theirs_opt, fns)
    raise AssertionError(kind)


@pytest.mark.parametrize("kind,kw,cls", [
    ("cosine", dict(T_max=7), "SGD"), ("cosine", dict(T_max=3, eta_min=0.01), "SGD"),
    ("lambda", {}, "SGD"),
    *[("onecycle", kw, "SGD") for kw in ONE_CYCLE],
    ("onecycle", ONE_CYCLE[0], "Adam"), ("onecycle", ONE_CYCLE[2], "AdamW")])
def test_matches_torch_step_by_step(kind, kw, cls):
    torch = _torch()
    mine, theirs = _make_pair(torch, kind, kw, cls)
    n = getattr(mine, "total_steps", 15)
    keys = {"SGD": "momentum", "Adam": "betas", "AdamW": "betas"}[cls]
    for _ in range(n):
        np.testing.assert_allclose(mine.get_last_lr(), theirs.get_last_lr(), rtol=1e-12)
        for g, tg in zip(mine.optimizer.param_groups, theirs.optimizer.param_groups):
            assert g["lr"] == pytest.approx(tg["lr"], rel=1e-12)
            assert np.allclose(g[keys], tg[keys], rtol=1e-12)
        mine.step()
        theirs.optimizer.step()
        theirs.step()


class _Decay:
    """A callable object: its __dict__ is saved by LambdaLR.state_dict (as torch)."""

    def __init__(self, rate):
        self.rate = rate

    def __call__(self, t):
        return self.rate ** t


@pytest.mark.parametrize("kind", ["cosine", "onecycle", "lambda"])
def test_state_round_trip_continues_identically(kind):
    def make(opt):
        if kind == "cosine":
            return CosineAnnealingLR(opt, T_max=5, eta_min=0.001)
        if kind == "onecycle":
            return OneCycleLR(opt, max_lr=[0.5, 0.2], total_steps=12, three_phase=True)
        return LambdaLR(opt, [_Decay(0.9), lambda t: 1 / (t + 1)])

    opt = _opt(0.1, groups=2)
    s = make(opt)
    for _ in range(5):
        s.step()
    saved_opt, saved = opt.state_dict(), json.loads(json.dumps(s.state_dict()))
    opt2 = _opt(7.0, groups=2)
    s2 = make(opt2)
    if kind == "lambda":
        s2.lr_lambdas[0].rate = 0.5  # restored from the state dict
    opt2.load_state_dict(saved_opt)
    s2.load_state_dict(saved)
    for _ in range(6):
        s.step()
        s2.step()
        assert s2.get_last_lr() == s.get_last_lr()
        assert opt2.param_groups == [dict(g, params=g2["params"]) for g, g2 in
                                     zip(opt.param_groups, opt2.param_groups)]


# -- validation ------------------------------------------------------------------------------------

NAN = float("nan")
BAD = [
    (lambda o: StepLR(o, 3, gamma=NAN), ValueError, "gamma"),
    (lambda o: StepLR(o, 3, gamma=-0.1), ValueError, "gamma"),
    (lambda o: StepLR(o, 0), ValueError, "step_size"),
    (lambda o: StepLR(o, 2.5), TypeError, "step_size"),
    (lambda o: StepLR(o, "3"), TypeError, "step_size"),
    (lambda o: MultiStepLR(o, "10"), TypeError, "milestones"),
    (lambda o: MultiStepLR(o, ["10"]), TypeError, "milestones"),
    (lambda o: MultiStepLR(o, [5, 2.5]), TypeError, "milestones"),
    (lambda o: MultiStepLR(o, [-1, 3]), ValueError, "milestones"),
    (lambda o: MultiStepLR(o, 10), TypeError, "milestones"),
    (lambda o: MultiStepLR(o, [10], gamma=NAN), ValueError, "gamma"),
    (lambda o: MultiStepLR(o, [10], gamma=-1.0), ValueError, "gamma"),
    (lambda o: CosineAnnealingLR(o, 0), ValueError, "T_max"),
    (lambda o: CosineAnnealingLR(o, 2.5), TypeError, "T_max"),
    (lambda o: CosineAnnealingLR(o, 10, eta_min=NAN), ValueError, "eta_min"),
    (lambda o: CosineAnnealingLR(o, 10, eta_min=-1e-3), ValueError, "eta_min"),
    (lambda o: OneCycleLR(o, NAN, total_steps=10), ValueError, "max_lr"),
    (lambda o: OneCycleLR(o, -1.0, total_steps=10), ValueError, "max_lr"),
    (lambda o: OneCycleLR(o, 1.0, total_steps=0), ValueError, "total_steps"),
    (lambda o: OneCycleLR(o, 1.0), ValueError, "total_steps"),
    (lambda o: OneCycleLR(o, 1.0, epochs=2, steps_per_epoch=2.5), TypeError, "steps_per_epoch"),
    (lambda o: OneCycleLR(o, 1.0, total_steps=10, pct_start=1.5), ValueError, "pct_start"),
    (lambda o: OneCycleLR(o, 1.0, total_steps=10, div_factor=0.0), ValueError, "div_factor"),
    (lambda o: OneCycleLR(o, 1.0, total_steps=10, base_momentum=NAN), ValueError,
     "base_momentum"),
    (lambda o: OneCycleLR(o, 1.0, total_steps=10, anneal_strategy="exp"), ValueError,
     "anneal_strategy"),
    (lambda o: LambdaLR(o, 0.5), TypeError, "lr_lambda"),
    (lambda o: Warmup(o, factor=NAN, steps=3), ValueError, "factor"),
    (lambda o: Warmup(o, factor=-0.1, steps=3), ValueError, "factor"),
    (lambda o: ReduceLROnPlateau(o, factor=NAN), ValueError, "factor"),
    (lambda o: ReduceLROnPlateau(o, factor=-0.5), ValueError, "factor"),
    (lambda o: ReduceLROnPlateau(o, patience=-1), ValueError, "patience"),
    (lambda o: ReduceLROnPlateau(o, min_lr=NAN), ValueError, "min_lr"),
    (lambda o: StepLR(o, 3, last_epoch=-2), ValueError, "last_epoch"),
]


@pytest.mark.parametrize("build,err,arg", BAD)
def test_bad_arguments_raise_naming_the_argument(build, err, arg):
    with pytest.raises(err, match=arg):
        build(_opt(0.1))


def test_one_cycle_without_momentum_needs_cycle_momentum_false():
    opt = SGD([Parameter(minidl.Tensor(np.zeros(2)).data)], lr=0.1)
    OneCycleLR(opt, 1.0, total_steps=5)  # SGD has "momentum" in its defaults, as in torch
    from minidl.optim import Adadelta
    with pytest.raises(ValueError, match="cycle_momentum"):
        OneCycleLR(Adadelta([Parameter(minidl.Tensor(np.zeros(2)).data)]), 1.0, total_steps=5)


def test_numpy_integer_milestones_are_fine():
    s = MultiStepLR(_opt(1.0), np.array([2, 4]), gamma=0.5)
    assert _lrs(s, 6) == [1.0, 1.0, 0.5, 0.5, 0.25, 0.25]
