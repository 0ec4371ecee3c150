"""SGD in both styles against hand-computed values and an independent reference, param groups,
decay_groups, state round trips; PyTorch as an extra cross-check where it is importable."""
import json

import numpy as np
import pytest
from hypothesis import assume, given, strategies as st

import minidl
from minidl.nn import Parameter
from minidl.optim import SGD, Optimizer, decay_groups

from conftest import require
from train_helpers import TinyMLP


def _param(values, dtype=np.float64, device="cpu"):
    return Parameter(minidl.Tensor(np.array(values, dtype=dtype), device=device).data)


def _run(p, opt, grads, lrs=None):
    """Apply ``grads`` (a list of arrays) with ``opt``; ``lrs[i]`` is the rate of step i."""
    out = []
    for i, g in enumerate(grads):
        if lrs is not None:
            for grp in opt.param_groups:
                grp["lr"] = lrs[i]
        p.grad = minidl.Tensor(np.asarray(g, dtype=p.dtype), device=p.device)
        opt.step()
        out.append(p.numpy().copy())
    return out


# -- hand-computed sequences (scalar, every number worked out by hand) ---------------------------

def test_plain_sgd_and_weight_decay_by_hand():
    p = _param([1.0])
    opt = SGD([p], lr=0.1, weight_decay=0.1)
    ws = _run(p, opt, [[0.0], [0.0]])
    # w1 = 1 - 0.1*(0 + 0.1*1) = 0.99 ; w2 = 0.99 - 0.1*(0.1*0.99) = 0.9801
    assert ws[0][0] == pytest.approx(0.99, abs=1e-15)
    assert ws[1][0] == pytest.approx(0.9801, abs=1e-15)
    assert opt.state == {}  # no momentum, no buffer


def test_torch_momentum_by_hand():
    p = _param([1.0])
    opt = SGD([p], lr=0.1, momentum=0.9)
    ws = _run(p, opt, [[1.0]] * 3)
    # b1 = 1, w1 = 0.9 ; b2 = 0.9 + 1 = 1.9, w2 = 0.71 ; b3 = 1.71 + 1 = 2.71, w3 = 0.439
    np.testing.assert_allclose([w[0] for w in ws], [0.9, 0.71, 0.439], rtol=0, atol=1e-14)
    np.testing.assert_allclose(opt.state[p]["momentum_buffer"], [2.71], atol=1e-14)


def test_paper_momentum_by_hand_equals_torch_at_constant_lr():
    p = _param([1.0])
    opt = SGD([p], lr=0.1, momentum=0.9, style="paper")
    ws = _run(p, opt, [[1.0]] * 3)
    # v1 = -0.1, w1 = 0.9 ; v2 = -0.09 - 0.1 = -0.19, w2 = 0.71 ; v3 = -0.171 - 0.1, w3 = 0.439
    np.testing.assert_allclose([w[0] for w in ws], [0.9, 0.71, 0.439], rtol=0, atol=1e-14)
    np.testing.assert_allclose(opt.state[p]["velocity"], [-0.271], atol=1e-14)


def test_paper_and_torch_weight_decay_by_hand():
    # g = 0, wd = 0.1, lr = 0.1, m = 0.9, w0 = 1
    # paper: v1 = -0.1*0.1*1 = -0.01, w1 = 0.99 ; v2 = -0.009 - 0.01*0.99 = -0.0189, w2 = 0.9711
    # torch: b1 = 0.1, w1 = 0.99 ; b2 = 0.09 + 0.099 = 0.189, w2 = 0.99 - 0.0189 = 0.9711
    for style in ("paper", "torch"):
        p = _param([1.0])
        ws = _run(p, SGD([p], lr=0.1, momentum=0.9, weight_decay=0.1, style=style),
                  [[0.0], [0.0]])
        np.testing.assert_allclose([w[0] for w in ws], [0.99, 0.9711], atol=1e-14, err_msg=style)


def test_lr_drop_separates_the_two_styles_by_hand():
    lrs = [0.1, 0.1, 0.01]
    p = _param([1.0])
    paper = _run(p, SGD([p], lr=0.1, momentum=0.9, style="paper"), [[1.0]] * 3, lrs)
    q = _param([1.0])
    torch_ = _run(q, SGD([q], lr=0.1, momentum=0.9), [[1.0]] * 3, lrs)
    # paper: v3 = 0.9 * -0.19 - 0.01 = -0.181, w3 = 0.71 - 0.181 = 0.529 (old rate still in v)
    # torch: b3 = 2.71, w3 = 0.71 - 0.01 * 2.71 = 0.6829 (the whole buffer at the new rate)
    assert paper[2][0] == pytest.approx(0.529, abs=1e-14)
    assert torch_[2][0] == pytest.approx(0.6829, abs=1e-14)
    assert paper[1][0] == pytest.approx(torch_[1][0], abs=1e-15)


def test_nesterov_by_hand():
    p = _param([1.0])
    ws = _run(p, SGD([p], lr=0.1, momentum=0.9, nesterov=True), [[1.0]] * 2)
    # b1 = 1, g' = 1 + 0.9*1 = 1.9, w1 = 0.81 ; b2 = 1.9, g' = 1 + 1.71 = 2.71, w2 = 0.539
    np.testing.assert_allclose([w[0] for w in ws], [0.81, 0.539], atol=1e-14)


def test_dampening_by_hand():
    p = _param([1.0])
    ws = _run(p, SGD([p], lr=0.1, momentum=0.9, dampening=0.5), [[1.0]] * 3)
    # the first step takes the gradient undamped: b1 = 1, w1 = 0.9
    # b2 = 0.9 + 0.5 = 1.4, w2 = 0.76 ; b3 = 1.26 + 0.5 = 1.76, w3 = 0.584
    np.testing.assert_allclose([w[0] for w in ws], [0.9, 0.76, 0.584], atol=1e-14)


# -- an independent element-wise reference over random sequences ---------------------------------

def _ref_torch(w, grads, lrs, m, d, wd, nesterov):
    w = [float(v) for v in w]
    bufs = [None] * len(w)
    out = []
    for g, lr in zip(grads, lrs):
        for i in range(len(w)):
            gi = float(g[i]) + wd * w[i]
            if m:
                bufs[i] = gi if bufs[i] is None else m * bufs[i] + (1 - d) * gi
                gi = gi + m * bufs[i] if nesterov else bufs[i]
            w[i] = w[i] - lr * gi
        out.append(list(w))
    return out


def _ref_paper(w, grads, lrs, m, wd):
    w = [float(v) for v in w]
    v = [0.0] * len(w)
    out = []
    for g, lr in zip(grads, lrs):
        for i in range(len(w)):
            v[i] = m * v[i] - wd * lr * w[i] - lr * float(g[i])
            w[i] = w[i] + v[i]
        out.append(list(w))
    return out


floats = st.floats(-3, 3, allow_nan=False)


@given(w0=st.lists(floats, min_size=1, max_size=4), steps=st.integers(1, 6),
       m=st.sampled_from([0.0, 0.5, 0.9]), d=st.sampled_from([0.0, 0.3]),
       wd=st.sampled_from([0.0, 5e-4, 0.1]), nesterov=st.booleans(), seed=st.integers(0, 99),
       drop=st.booleans())
def test_torch_style_matches_reference(w0, steps, m, d, wd, nesterov, seed, drop):
    assume(not (nesterov and (m == 0 or d != 0)))  # SGD refuses these (as torch)
    rng = np.random.default_rng(seed)
    grads = rng.normal(size=(steps, len(w0)))
    lrs = [0.1 if (not drop or i < steps // 2) else 0.01 for i in range(steps)]
    p = _param(w0)
    ws = _run(p, SGD([p], lr=0.1, momentum=m, dampening=d, weight_decay=wd, nesterov=nesterov),
              list(grads), lrs)
    np.testing.assert_allclose(ws, _ref_torch(w0, grads, lrs, m, d, wd, nesterov), rtol=1e-12,
                               atol=1e-12)


@given(w0=st.lists(floats, min_size=1, max_size=4), steps=st.integers(1, 6),
       m=st.sampled_from([0.0, 0.5, 0.9]), wd=st.sampled_from([0.0, 5e-4, 0.1]),
       seed=st.integers(0, 99), drop=st.booleans())
def test_paper_style_matches_reference_and_torch_style_at_constant_lr(w0, steps, m, wd, seed,
                                                                      drop):
    rng = np.random.default_rng(seed)
    grads = rng.normal(size=(steps, len(w0)))
    lrs = [0.1 if (not drop or i < steps // 2) else 0.01 for i in range(steps)]
    p = _param(w0)
    ws = _run(p, SGD([p], lr=0.1, momentum=m, weight_decay=wd, style="paper"), list(grads), lrs)
    np.testing.assert_allclose(ws, _ref_paper(w0, grads, lrs, m, wd), rtol=1e-12, atol=1e-12)
    if not drop:  # constant lr: the two forms are the same algorithm
        np.testing.assert_allclose(ws, _ref_torch(w0, grads, lrs, m, 0.0, wd, False),
                                   rtol=1e-10, atol=1e-12)


def test_styles_differ_after_a_drop_with_momentum():
    grads = [np.ones(3)] * 5
    lrs = [0.1, 0.1, 0.01, 0.01, 0.01]
    out = {}
    for style in ("torch", "paper"):
        p = _param([0.0, 1.0, 2.0])
        out[style] = _run(p, SGD([p], lr=0.1, momentum=0.9, style=style), grads, lrs)
    np.testing.assert_allclose(out["torch"][1], out["paper"][1], atol=1e-15)
    assert np.all(out["paper"][2] < out["torch"][2])  # paper still takes the big old steps


# -- PyTorch cross-check (extra) -------------------------------------------------------------------

@pytest.mark.parametrize("kw", [dict(momentum=0.0), dict(momentum=0.9, weight_decay=1e-2),
                                dict(momentum=0.9, dampening=0.3),
                                dict(momentum=0.9, nesterov=True, weight_decay=5e-4),
                                dict(momentum=0.5, weight_decay=1e-2, maximize=True)])
def test_torch_style_matches_torch_optim_sgd(kw):
    torch = require("torch")
    rng = np.random.default_rng(3)
    w0 = rng.normal(size=(3, 4))
    grads = rng.normal(size=(6, 3, 4))
    lrs = [0.1, 0.1, 0.1, 0.01, 0.01, 0.001]
    p = _param(w0)
    mine = _run(p, SGD([p], lr=0.1, **kw), list(grads), lrs)
    tp = torch.nn.Parameter(torch.tensor(w0))
    topt = torch.optim.SGD([tp], lr=0.1, **kw)
    for g, lr, w in zip(grads, lrs, mine):
        topt.param_groups[0]["lr"] = lr
        tp.grad = torch.tensor(g)
        topt.step()
        np.testing.assert_allclose(w, tp.detach().numpy(), rtol=1e-12, atol=1e-13)


# -- float32, identity, devices --------------------------------------------------------------------

def test_float32_update_stays_float32_in_place(device):
    p = _param(np.ones((2, 3)), dtype=np.float32, device=device)
    arr = p.data
    opt = SGD([p], lr=0.1, momentum=0.9, weight_decay=1e-4)
    _run(p, opt, [np.ones((2, 3))] * 2)
    assert p.data is arr and p.dtype == np.float32 and p.device == device
    assert opt.state[p]["momentum_buffer"].dtype == np.float32
    ref = _ref_torch([1.0], [[1.0], [1.0]], [0.1, 0.1], 0.9, 0.0, 1e-4, False)[-1][0]
    np.testing.assert_allclose(p.numpy(), ref, rtol=1e-6)


def test_same_result_on_each_device(device):
    rng = np.random.default_rng(0)
    w0, grads = rng.normal(size=(4, 5)), list(rng.normal(size=(3, 4, 5)))
    for style in ("torch", "paper"):
        p_dev = _param(w0, np.float32, device)
        p_cpu = _param(w0, np.float32, "cpu")
        a = _run(p_dev, SGD([p_dev], lr=0.05, momentum=0.9, weight_decay=1e-3, style=style),
                 grads)
        b = _run(p_cpu, SGD([p_cpu], lr=0.05, momentum=0.9, weight_decay=1e-3, style=style),
                 grads)
        np.testing.assert_allclose(a[-1], b[-1], rtol=1e-6, atol=1e-7)


def test_parameters_without_grad_are_skipped():
    p, q = _param([1.0]), _param([2.0])
    opt = SGD([p, q], lr=0.1, momentum=0.9)
    p.grad = minidl.Tensor(np.array([1.0]))
    opt.step()
    assert q.numpy()[0] == 2.0 and q not in opt.state
    opt.zero_grad()
    assert p.grad is None and q.grad is None


def test_closure_is_called_and_returned():
    p = _param([1.0])
    opt = SGD([p], lr=0.5)

    def closure():
        opt.zero_grad()
        loss = (p * p).sum()
        loss.backward()
        return loss
    loss = opt.step(closure)
    assert float(loss.item()) == 1.0 and p.numpy()[0] == pytest.approx(0.0)


def test_invalid_arguments_raise():
    p = _param([1.0])
    with pytest.raises(ValueError, match="nesterov"):
        SGD([p], lr=0.1, nesterov=True)
    with pytest.raises(ValueError, match="paper"):
        SGD([p], lr=0.1, momentum=0.9, dampening=0.1, style="paper")
    with pytest.raises(ValueError, match="style"):
        SGD([p], lr=0.1, style="caffe")
    with pytest.raises(ValueError, match="learning rate"):
        SGD([p], lr=-1.0)
    with pytest.raises(ValueError, match="required"):
        SGD([p])
    with pytest.raises(ValueError, match="more than one"):
        SGD([{"params": [p]}, {"params": [p]}], lr=0.1)
    with pytest.raises(ValueError, match="empty"):
        SGD([], lr=0.1)
    with pytest.raises(TypeError, match="set"):
        SGD([{"params": {p}}], lr=0.1)


# -- param groups and decay_groups -----------------------------------------------------------------

def test_param_groups_have_their_own_hyperparameters():
    p, q = _param([1.0]), _param([1.0])
    opt = SGD([{"params": [p]}, {"params": [q], "lr": 0.01, "weight_decay": 0.5}], lr=0.1,
              momentum=0.0)
    assert opt.param_groups[0]["lr"] == 0.1 and opt.param_groups[1]["momentum"] == 0.0
    p.grad = minidl.Tensor(np.array([1.0]))
    q.grad = minidl.Tensor(np.array([1.0]))
    opt.step()
    assert p.numpy()[0] == pytest.approx(0.9, abs=1e-15)
    assert q.numpy()[0] == pytest.approx(1 - 0.01 * (1 + 0.5), abs=1e-15)
    r = _param([3.0])
    opt.add_param_group({"params": [r], "lr": 1.0})
    assert opt.param_groups[2]["weight_decay"] == 0.0
    with pytest.raises(ValueError):
        opt.add_param_group({"params": [p]})


def test_decay_groups_exempts_prelu_slopes_and_optionally_biases():
    minidl.manual_seed(0)
    m = TinyMLP(prelu=True)
    names = {id(p): n for n, p in m.named_parameters()}
    decay, exempt = decay_groups(m, 5e-4)
    assert decay["weight_decay"] == 5e-4 and exempt["weight_decay"] == 0.0
    assert [names[id(p)] for p in exempt["params"]] == ["act.weight"]
    assert [names[id(p)] for p in decay["params"]] == ["fc1.weight", "fc1.bias", "fc2.weight",
                                                       "fc2.bias"]
    _, exempt = decay_groups(m, 5e-4, exempt_bias=True)
    assert [names[id(p)] for p in exempt["params"]] == ["fc1.bias", "act.weight", "fc2.bias"]
    _, exempt = decay_groups(m, 5e-4, no_decay=("fc2.*",), lr=0.3)
    assert [names[id(p)] for p in exempt["params"]] == ["fc2.weight", "fc2.bias"]
    assert exempt["lr"] == 0.3
    _, exempt = decay_groups(m, 5e-4, no_decay=("TinyLinear",))
    assert len(exempt["params"]) == 4


def test_decay_groups_batchnorm_and_real_layers():
    nn = minidl.nn
    m = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.PReLU(), nn.Linear(8, 2))
    decay, exempt = decay_groups(m, 1e-4)
    names = {id(p): n for n, p in m.named_parameters()}
    assert [names[id(p)] for p in exempt["params"]] == ["2.weight"]
    _, exempt = decay_groups(m, 1e-4, exempt_norm=True, exempt_bias=True)
    assert sorted(names[id(p)] for p in exempt["params"]) == sorted(
        ["0.bias", "1.weight", "1.bias", "2.weight", "3.bias"])


def test_no_decay_group_keeps_slope_while_weights_decay():
    minidl.manual_seed(0)
    m = TinyMLP(prelu=True)
    a0 = m.act.weight.numpy().copy()
    w0 = m.fc1.weight.numpy().copy()
    opt = SGD(decay_groups(m, 0.1), lr=0.1, momentum=0.9)
    for _ in range(3):
        for p in m.parameters():
            p.grad = minidl.Tensor(np.zeros(p.shape, p.dtype))
        opt.step()
    np.testing.assert_array_equal(m.act.weight.numpy(), a0)
    # three zero-gradient steps of decay (g' = 0.1 w): b1 = 0.1 w0, w1 = 0.99 w0;
    # b2 = 0.09 w0 + 0.099 w0 = 0.189 w0, w2 = 0.9711 w0;
    # b3 = 0.1701 w0 + 0.09711 w0 = 0.26721 w0, w3 = 0.9711 w0 - 0.026721 w0 = 0.944379 w0
    np.testing.assert_allclose(m.fc1.weight.numpy(), w0 * 0.944379, rtol=1e-5)


# -- state round trips -----------------------------------------------------------------------------

def _json_round_trip(sd):
    """The state through JSON + separate arrays, as a checkpoint stores it."""
    from minidl.train.checkpoint import _decode, _encode
    arrays = {}
    text = json.dumps(_encode(sd, arrays))
    return _decode(json.loads(text), arrays)


@pytest.mark.parametrize("style", ["torch", "paper"])
def test_state_dict_round_trip_continues_identically(style):
    rng = np.random.default_rng(1)
    w0 = rng.normal(size=(3, 2)).astype(np.float32)
    grads = list(rng.normal(size=(6, 3, 2)))
    a, b = _param(w0, np.float32), _param([0.5], np.float32)
    opt = SGD([{"params": [a]}, {"params": [b], "lr": 0.02}], lr=0.1, momentum=0.9,
              weight_decay=1e-3, style=style)
    for g in grads[:3]:
        a.grad = minidl.Tensor(g.astype(np.float32))
        b.grad = minidl.Tensor(np.ones(1, np.float32))
        opt.step()
    opt.param_groups[0]["lr"] = 0.05
    sd = opt.state_dict()
    a2, b2 = _param(a.numpy(), np.float32), _param(b.numpy(), np.float32)
    opt2 = SGD([{"params": [a2]}, {"params": [b2]}], lr=1.0, style=style)
    opt2.load_state_dict(_json_round_trip(sd))
    assert opt2.param_groups[0]["lr"] == 0.05 and opt2.param_groups[1]["lr"] == 0.02
    assert opt2.param_groups[0]["momentum"] == 0.9
    for g in grads[3:]:
        for (x, y) in ((a, a2), (b, b2)):
            gg = g.astype(np.float32) if x is a else np.ones(1, np.float32)
            x.grad = minidl.Tensor(gg)
            y.grad = minidl.Tensor(gg.copy())
        opt.step()
        opt2.step()
    np.testing.assert_array_equal(a.numpy(), a2.numpy())
    np.testing.assert_array_equal(b.numpy(), b2.numpy())


def test_state_dict_is_a_copy_and_checks_sizes():
    p = _param([1.0])
    opt = SGD([p], lr=0.1, momentum=0.9)
    _run(p, opt, [[1.0]])
    sd = opt.state_dict()
    assert sd["param_groups"][0]["params"] == [0]
    sd["state"][0]["momentum_buffer"][0] = 99.0
    assert opt.state[p]["momentum_buffer"][0] == 1.0
    q = _param([1.0, 2.0])
    with pytest.raises(ValueError, match="shape"):
        SGD([q], lr=0.1).load_state_dict(sd)
    with pytest.raises(ValueError, match="param groups"):
        SGD([{"params": [p]}, {"params": [q]}], lr=0.1).load_state_dict(sd)


def test_optimizer_base_is_exported():
    assert issubclass(SGD, Optimizer)
