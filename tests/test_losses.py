"""The losses of torch.nn.functional and their nn modules: hand-computed values, forward and
gradients against torch (both inputs), float64 hypothesis gradchecks, argument errors.

torch is required where CI is set; elsewhere its cross-checks skip without it."""
import math

import numpy as np
import pytest
from hypothesis import given, strategies as st

import minidl.functional as F
from minidl import Tensor, gradcheck, nn
from conftest import require

LN2 = math.log(2.0)


def _torch():
    """torch for the cross-checks: skips locally, fails in CI (conftest.require)."""
    return require("torch")


def _t(a, grad=False):
    return Tensor(np.asarray(a, dtype=np.float64), requires_grad=grad)


# -- hand-computed values --------------------------------------------------------------------------

def test_mse_and_l1_by_hand():
    x, y = _t([1.0, 2.0, 3.0]), _t([1.0, 0.0, 5.0])  # d = 0, 2, -2
    assert F.mse_loss(x, y).item() == pytest.approx(8 / 3, abs=1e-15)
    assert F.mse_loss(x, y, reduction="sum").item() == 8.0
    np.testing.assert_array_equal(F.mse_loss(x, y, reduction="none").numpy(), [0, 4, 4])
    assert F.l1_loss(x, y).item() == pytest.approx(4 / 3, abs=1e-15)
    np.testing.assert_array_equal(F.l1_loss(x, y, reduction="none").numpy(), [0, 2, 2])


def test_mse_gradient_by_hand_both_inputs():
    x, y = _t([1.0, 2.0, 3.0], True), _t([1.0, 0.0, 5.0], True)
    F.mse_loss(x, y).backward()
    np.testing.assert_allclose(x.grad.numpy(), [0, 4 / 3, -4 / 3], atol=1e-15)  # 2 d / 3
    np.testing.assert_allclose(y.grad.numpy(), [0, -4 / 3, 4 / 3], atol=1e-15)


def test_smooth_l1_by_hand():
    x, y = _t([0.0, 0.5, -2.0]), _t([0.0, 0.0, 0.0])
    np.testing.assert_allclose(F.smooth_l1_loss(x, y, reduction="none").numpy(),
                               [0.0, 0.125, 1.5], atol=1e-15)  # 0.5 d^2 | |d| - 0.5
    np.testing.assert_allclose(F.smooth_l1_loss(x, y, reduction="none", beta=2.0).numpy(),
                               [0.0, 0.0625, 1.0], atol=1e-15)  # 0.5 d^2 / 2 | |d| - 1
    np.testing.assert_allclose(F.smooth_l1_loss(x, y, reduction="none", beta=0.0).numpy(),
                               [0.0, 0.5, 2.0], atol=1e-15)  # beta 0: L1
    x = _t([0.5, -2.0], True)
    F.smooth_l1_loss(x, _t([0.0, 0.0]), reduction="sum").backward()
    np.testing.assert_allclose(x.grad.numpy(), [0.5, -1.0], atol=1e-15)


def test_binary_cross_entropy_by_hand():
    x, y = _t([0.5, 0.9]), _t([1.0, 0.0])
    # -log 0.5 and -log 0.1
    np.testing.assert_allclose(F.binary_cross_entropy(x, y, reduction="none").numpy(),
                               [LN2, math.log(10)], rtol=1e-14)
    assert F.binary_cross_entropy(x, y).item() == pytest.approx((LN2 + math.log(10)) / 2)
    w = _t([2.0, 0.5])
    assert F.binary_cross_entropy(x, y, weight=w, reduction="sum").item() == pytest.approx(
        2 * LN2 + 0.5 * math.log(10), rel=1e-14)
    # log 0 is clamped at -100, as torch: a confident wrong answer costs 100, not inf
    assert F.binary_cross_entropy(_t([0.0, 1.0]), _t([1.0, 0.0]), reduction="sum").item() == 200
    x = _t([0.25], True)
    F.binary_cross_entropy(x, _t([1.0])).backward()
    # d/dx -log x = -1/x = -4 (torch: (x - y) / (x (1 - x)) = -0.75 / 0.1875 = -4)
    np.testing.assert_allclose(x.grad.numpy(), [-4.0], rtol=1e-14)


def test_bce_with_logits_by_hand():
    x, y = _t([0.0, 2.0, -800.0]), _t([1.0, 0.0, 0.0])
    # log(1 + e^0) = ln 2; 2 + log(1 + e^-2); x = -800, y = 0: log(1 + e^-800) = 0 (stable)
    np.testing.assert_allclose(
        F.binary_cross_entropy_with_logits(x, y, reduction="none").numpy(),
        [LN2, 2 + math.log1p(math.exp(-2)), 0.0], rtol=1e-14, atol=1e-300)
    # pos_weight 3 scales the positive term
    got = F.binary_cross_entropy_with_logits(_t([0.0]), _t([1.0]), pos_weight=_t([3.0]))
    assert got.item() == pytest.approx(3 * LN2, rel=1e-14)
    x = _t([0.0, 2.0], True)
    F.binary_cross_entropy_with_logits(x, _t([1.0, 0.0]), reduction="sum").backward()
    s2 = 1 / (1 + math.exp(-2))
    np.testing.assert_allclose(x.grad.numpy(), [0.5 - 1, s2], rtol=1e-14)  # sigmoid(x) - y


def test_cross_entropy_label_smoothing_by_hand():
    # logits [0, ln 3]: p = [1/4, 3/4]; log p = [-ln 4, -ln(4/3)]
    x = _t([[0.0, math.log(3.0)]])
    t = Tensor(np.array([0]))
    ln4, ln43 = math.log(4.0), math.log(4 / 3)
    assert F.cross_entropy(x, t).item() == pytest.approx(ln4, rel=1e-14)
    # (1 - 0.2) * ln 4 + (0.2 / 2) * (ln 4 + ln 4/3)
    got = F.cross_entropy(x, t, label_smoothing=0.2).item()
    assert got == pytest.approx(0.8 * ln4 + 0.1 * (ln4 + ln43), rel=1e-14)
    # label_smoothing = 1: the uniform target
    assert F.cross_entropy(x, t, label_smoothing=1.0).item() == pytest.approx(
        (ln4 + ln43) / 2, rel=1e-14)


def test_cross_entropy_label_smoothing_with_weight_and_ignore_by_hand():
    x = _t([[0.0, math.log(3.0)], [0.0, 0.0], [5.0, 1.0]])
    t = Tensor(np.array([0, 1, -100]))  # the third sample is ignored
    w = _t([2.0, 1.0])
    ln4, ln43 = math.log(4.0), math.log(4 / 3)
    # nll: 2 ln4 + 1 ln2, smooth: (2 ln4 + ln4/3) + (2 ln2 + ln2); both / (w[0] + w[1]) = 3
    nll = (2 * ln4 + LN2) / 3
    smooth = (2 * ln4 + ln43 + 3 * LN2) / 3
    got = F.cross_entropy(x, t, weight=w, label_smoothing=0.4).item()
    assert got == pytest.approx(0.6 * nll + 0.2 * smooth, rel=1e-14)
    per = F.cross_entropy(x, t, weight=w, label_smoothing=0.4, reduction="none").numpy()
    np.testing.assert_allclose(per, [0.6 * 2 * ln4 + 0.2 * (2 * ln4 + ln43),
                                     0.6 * LN2 + 0.2 * 3 * LN2, 0.0], rtol=1e-14)


def test_cross_entropy_with_class_probabilities_by_hand():
    x = _t([[0.0, math.log(3.0)]])  # log p = [-ln 4, -ln 4/3]
    ln4, ln43 = math.log(4.0), math.log(4 / 3)
    q = _t([[0.5, 0.5]])
    assert F.cross_entropy(x, q).item() == pytest.approx(0.5 * (ln4 + ln43), rel=1e-14)
    # weights multiply each class term; "mean" divides by the number of samples only
    got = F.cross_entropy(x, q, weight=_t([2.0, 1.0])).item()
    assert got == pytest.approx(ln4 + 0.5 * ln43, rel=1e-14)
    # smoothing 0.5 of a one-hot target: q = [0.75, 0.25]
    got = F.cross_entropy(x, _t([[1.0, 0.0]]), label_smoothing=0.5).item()
    assert got == pytest.approx(0.75 * ln4 + 0.25 * ln43, rel=1e-14)
    # a one-hot probability target gives the class-index loss
    x = _t(np.random.default_rng(0).normal(size=(5, 4)))
    t = np.array([0, 3, 1, 1, 2])
    assert F.cross_entropy(x, _t(np.eye(4)[t])).item() == pytest.approx(
        F.cross_entropy(x, Tensor(t)).item(), rel=1e-14)
    with pytest.raises(ValueError, match="weight"):
        F.cross_entropy(x, _t(np.eye(4)[t]), weight=_t([1.0, 2.0]))


@given(n=st.integers(1, 4), c=st.integers(2, 6), spatial=st.sampled_from([(), (2,), (2, 3)]),
       reduction=st.sampled_from(["mean", "sum", "none"]),
       smoothing=st.sampled_from([0.0, 0.2, 1.0]),
       weighted=st.booleans(), seed=st.integers(0, 2**16))
def test_cross_entropy_probabilities_gradcheck(n, c, spatial, reduction, smoothing, weighted,
                                               seed):
    rng = np.random.default_rng(seed)
    x = _t(rng.normal(0, 2, (n, c) + spatial), True)
    q = _t(np.moveaxis(rng.dirichlet(np.ones(c), size=(n,) + spatial), -1, 1), True)
    w = _t(rng.uniform(0.2, 2, c)) if weighted else None
    assert gradcheck(lambda x, q: F.cross_entropy(x, q, weight=w, reduction=reduction,
                                                  label_smoothing=smoothing), [x, q])


# -- against torch ---------------------------------------------------------------------------------

def _both(torch, a, grad=True):
    return _t(a, grad), torch.tensor(np.asarray(a, dtype=np.float64), requires_grad=grad)


def _same_value_and_grads(torch, rng, out, tout, pairs):
    """minidl's ``out`` equals torch's ``tout``; backward of the same random upstream gradient
    through both gives equal gradients for every (minidl, torch) leaf in ``pairs``."""
    np.testing.assert_allclose(out.numpy(), tout.detach().numpy(), rtol=1e-12, atol=1e-14)
    g = rng.normal(size=out.shape)
    out.backward(Tensor(g))
    tout.backward(torch.tensor(g))
    for a, ta in pairs:
        np.testing.assert_allclose(a.grad.numpy(), ta.grad.numpy(), rtol=1e-10, atol=1e-13)


POINTWISE = [
    ("mse_loss", {}), ("l1_loss", {}), ("smooth_l1_loss", {}), ("smooth_l1_loss", {"beta": 0.3}),
    ("smooth_l1_loss", {"beta": 0.0}), ("binary_cross_entropy", {}),
    ("binary_cross_entropy", {"weight": "w"}), ("binary_cross_entropy_with_logits", {}),
    ("binary_cross_entropy_with_logits", {"weight": "w", "pos_weight": "pw"}),
]


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("name,kw", POINTWISE)
def test_pointwise_losses_match_torch(name, kw, reduction):
    torch = _torch()
    rng = np.random.default_rng(1)
    shape = (3, 4, 5)
    if name == "binary_cross_entropy":
        a, b = rng.uniform(0.02, 0.98, shape), rng.uniform(0, 1, shape)
    elif name.endswith("logits"):
        a, b = rng.normal(0, 3, shape), (rng.uniform(0, 1, shape) > 0.5).astype(float)
    else:
        a, b = rng.normal(size=shape), rng.normal(size=shape)
    x, tx = _both(torch, a)
    y, ty = _both(torch, b)
    extra = {"w": rng.uniform(0.5, 2, (4, 1)), "pw": rng.uniform(0.5, 3, (5,))}
    mkw = {k: (_t(extra[v]) if isinstance(v, str) else v) for k, v in kw.items()}
    tkw = {k: (torch.tensor(extra[v]) if isinstance(v, str) else v) for k, v in kw.items()}
    out = getattr(F, name)(x, y, reduction=reduction, **mkw)
    tout = getattr(torch.nn.functional, name)(tx, ty, reduction=reduction, **tkw)
    _same_value_and_grads(torch, rng, out, tout, [(x, tx), (y, ty)])


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("smoothing", [0.0, 0.3])
@pytest.mark.parametrize("weighted", [False, True])
def test_cross_entropy_with_probabilities_matches_torch(reduction, smoothing, weighted):
    torch = _torch()
    rng = np.random.default_rng(6)
    logits = rng.normal(0, 2, (3, 4, 2, 2))
    q = np.moveaxis(rng.dirichlet(np.ones(4), size=(3, 2, 2)), -1, 1)
    w = rng.uniform(0.2, 2, 4) if weighted else None
    x, tx = _both(torch, logits)
    y, ty = _both(torch, q)
    out = F.cross_entropy(x, y, weight=None if w is None else _t(w), reduction=reduction,
                          label_smoothing=smoothing)
    tout = torch.nn.functional.cross_entropy(tx, ty, weight=None if w is None else
                                             torch.tensor(w), reduction=reduction,
                                             label_smoothing=smoothing)
    _same_value_and_grads(torch, rng, out, tout, [(x, tx), (y, ty)])


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.75])
@pytest.mark.parametrize("weighted", [False, True])
def test_cross_entropy_and_nll_match_torch(reduction, smoothing, weighted):
    torch = _torch()
    rng = np.random.default_rng(4)
    logits = rng.normal(0, 2, (4, 5, 3, 2))
    target = rng.integers(0, 5, (4, 3, 2))
    target[0, 0, 0] = target[2, 1, 1] = -100
    w = rng.uniform(0.2, 2, 5) if weighted else None
    x, tx = _both(torch, logits)
    kw = dict(ignore_index=-100, reduction=reduction)
    out = F.cross_entropy(x, Tensor(target), weight=None if w is None else _t(w),
                          label_smoothing=smoothing, **kw)
    tout = torch.nn.functional.cross_entropy(tx, torch.tensor(target),
                                             weight=None if w is None else torch.tensor(w),
                                             label_smoothing=smoothing, **kw)
    _same_value_and_grads(torch, rng, out, tout, [(x, tx)])
    if smoothing == 0.0:
        lp, tlp = _both(torch, F.log_softmax(_t(logits), 1).numpy())
        out = F.nll_loss(lp, Tensor(target), weight=None if w is None else _t(w), **kw)
        tout = torch.nn.functional.nll_loss(tlp, torch.tensor(target),
                                            weight=None if w is None else torch.tensor(w), **kw)
        np.testing.assert_allclose(out.numpy(), tout.detach().numpy(), rtol=1e-12, atol=1e-14)


MODULES = [
    ("CrossEntropyLoss", dict(label_smoothing=0.1), "class"),
    ("CrossEntropyLoss", dict(weight="w5", ignore_index=1, reduction="sum"), "class"),
    ("NLLLoss", dict(weight="w5"), "class"), ("MSELoss", {}, "real"),
    ("L1Loss", dict(reduction="none"), "real"), ("SmoothL1Loss", dict(beta=0.5), "real"),
    ("BCELoss", dict(weight="w1"), "prob"),
    ("BCEWithLogitsLoss", dict(pos_weight="w5", reduction="sum"), "binary"),
]


@pytest.mark.parametrize("name,kw,kind", MODULES)
def test_nn_loss_modules_match_torch(name, kw, kind):
    torch = _torch()
    rng = np.random.default_rng(9)
    extra = {"w5": rng.uniform(0.5, 2, 5), "w1": rng.uniform(0.5, 2, (1, 5))}
    mkw = {k: (_t(extra[v]) if isinstance(v, str) and v in extra else v) for k, v in kw.items()}
    tkw = {k: (torch.tensor(extra[v]) if isinstance(v, str) and v in extra else v)
           for k, v in kw.items()}
    a = rng.normal(size=(4, 5))
    if kind == "class":
        b = rng.integers(0, 5, 4)
        if name == "NLLLoss":
            a = F.log_softmax(_t(a), 1).numpy()
    elif kind == "prob":
        a, b = rng.uniform(0.05, 0.95, (4, 5)), rng.uniform(0, 1, (4, 5))
    elif kind == "binary":
        b = (rng.uniform(size=(4, 5)) > 0.5).astype(float)
    else:
        b = rng.normal(size=(4, 5))
    mod, tmod = getattr(nn, name)(**mkw), getattr(torch.nn, name)(**tkw)
    x, tx = _both(torch, a)
    out = mod(x, Tensor(b))
    tout = tmod(tx, torch.tensor(b))
    np.testing.assert_allclose(out.numpy(), tout.detach().numpy(), rtol=1e-12, atol=1e-14)
    out.sum().backward()
    tout.sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), tx.grad.numpy(), rtol=1e-10, atol=1e-13)
    assert sorted(mod.state_dict()) == sorted(tmod.state_dict())  # weight buffers as torch


def test_module_defaults_and_repr():
    m = nn.CrossEntropyLoss()
    assert (m.reduction, m.ignore_index, m.label_smoothing, m.weight) == ("mean", -100, 0.0, None)
    assert nn.SmoothL1Loss().beta == 1.0 and nn.BCEWithLogitsLoss().pos_weight is None
    assert "label_smoothing=0.1" in repr(nn.CrossEntropyLoss(label_smoothing=0.1))
    assert "reduction='sum'" in repr(nn.MSELoss(reduction="sum"))
    with pytest.raises(ValueError, match="reduction"):
        nn.L1Loss(reduction="avg")


# -- float64 gradchecks (hypothesis) ---------------------------------------------------------------

shapes = st.lists(st.integers(1, 4), min_size=1, max_size=3).map(tuple)
reductions = st.sampled_from(["mean", "sum", "none"])


@given(shape=shapes, reduction=reductions, seed=st.integers(0, 2**16),
       beta=st.sampled_from([0.5, 1.0, 2.0]))
def test_regression_losses_gradcheck(shape, reduction, seed, beta):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=shape)
    b = a + rng.choice([-1, 1], size=shape) * rng.uniform(0.1, 3.0, size=shape)
    # |d| stays away from 0 and from beta, where l1/smooth-l1 have kinks
    b = np.where(np.abs(np.abs(a - b) - beta) < 0.05, b + 0.2, b)
    x, y = _t(a, True), _t(b, True)
    assert gradcheck(lambda x, y: F.mse_loss(x, y, reduction=reduction), [x, y])
    assert gradcheck(lambda x, y: F.l1_loss(x, y, reduction=reduction), [x, y])
    assert gradcheck(lambda x, y: F.smooth_l1_loss(x, y, reduction=reduction, beta=beta),
                     [x, y])


@given(shape=shapes, reduction=reductions, seed=st.integers(0, 2**16), weighted=st.booleans())
def test_binary_losses_gradcheck(shape, reduction, seed, weighted):
    rng = np.random.default_rng(seed)
    w = _t(rng.uniform(0.5, 2.0, shape[-1:])) if weighted else None
    p = _t(rng.uniform(0.05, 0.95, shape), True)
    y = _t(rng.uniform(0.0, 1.0, shape), True)
    assert gradcheck(lambda p, y: F.binary_cross_entropy(p, y, weight=w, reduction=reduction),
                     [p, y])
    z = _t(rng.normal(0, 3, shape), True)
    pw = _t(rng.uniform(0.5, 3.0, shape[-1:])) if weighted else None
    assert gradcheck(lambda z, y: F.binary_cross_entropy_with_logits(
        z, y, weight=w, reduction=reduction, pos_weight=pw), [z, y])


@given(n=st.integers(1, 4), c=st.integers(2, 6), spatial=st.sampled_from([(), (2,), (2, 3)]),
       reduction=reductions, smoothing=st.sampled_from([0.0, 0.05, 0.3, 1.0]),
       weighted=st.booleans(), seed=st.integers(0, 2**16))
def test_cross_entropy_label_smoothing_gradcheck(n, c, spatial, reduction, smoothing, weighted,
                                                 seed):
    rng = np.random.default_rng(seed)
    x = _t(rng.normal(0, 2, (n, c) + spatial), True)
    t = rng.integers(0, c, (n,) + spatial)
    t.reshape(-1)[0] = -100 if t.size > 1 else t.reshape(-1)[0]
    w = _t(rng.uniform(0.2, 2, c)) if weighted else None
    assert gradcheck(lambda x: F.cross_entropy(x, Tensor(t), weight=w, reduction=reduction,
                                               label_smoothing=smoothing), [x])


# -- errors ----------------------------------------------------------------------------------------

def test_argument_errors_name_what_is_wrong():
    x = _t(np.full((2, 3), 0.5))
    with pytest.raises(ValueError, match=r"target has shape \(3,\), input \(2, 3\)"):
        F.mse_loss(x, _t([1.0, 2.0, 3.0]))
    with pytest.raises(ValueError, match="reduction"):
        F.l1_loss(x, x, reduction="avg")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        F.binary_cross_entropy(_t([1.5]), _t([1.0]))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        F.binary_cross_entropy(_t([float("nan")]), _t([1.0]))
    with pytest.raises(ValueError, match="label_smoothing"):
        F.cross_entropy(x, Tensor(np.array([0, 1])), label_smoothing=1.5)
    with pytest.raises(TypeError, match="target"):
        F.cross_entropy(x, [0, 1])
    with pytest.raises(TypeError, match="target"):
        F.nll_loss(x, [0, 1])
    with pytest.raises(ValueError, match="beta"):
        F.smooth_l1_loss(x, x, beta=-1.0)
    with pytest.raises(ValueError, match="pos_weight"):
        F.binary_cross_entropy_with_logits(x, x, pos_weight=_t([1.0, 2.0]))
    with pytest.raises(TypeError, match="floating"):
        F.mse_loss(Tensor(np.array([1, 2])), Tensor(np.array([1, 2])))


def test_array_target_is_accepted_and_float32_stays_float32(device):
    x = Tensor(np.array([[0.2, 0.8]], dtype=np.float32), requires_grad=True, device=device)
    y = np.array([[0.0, 1.0]], dtype=np.float32)
    for fn in (F.mse_loss, F.l1_loss, F.smooth_l1_loss, F.binary_cross_entropy,
               F.binary_cross_entropy_with_logits):
        x.grad = None
        out = fn(x, Tensor(y, device=device))
        assert out.dtype == np.float32 and out.device == device
        out.backward()
        assert x.grad.dtype == np.float32
        ref = fn(Tensor(x.numpy().astype(np.float64)), Tensor(y.astype(np.float64)))
        assert out.item() == pytest.approx(ref.item(), rel=1e-6)
    assert F.mse_loss(Tensor(x.numpy()), y).item() == pytest.approx((0.04 + 0.04) / 2, rel=1e-6)
