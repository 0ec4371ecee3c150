"""Autograd semantics a user must be able to trust (issue 10) and PyTorch's hook API (issue 11).

Each case is checked against hand-computed values and, where torch is installed, against what
PyTorch does with the same program.
"""

import numpy as np
import pytest

import minidl
from minidl import Tensor, nn, ops
from minidl.optim import SGD

from conftest import require


def _torch():
    """torch, or a skip; under CI (CI=true) a missing torch is an error, not a skip."""
    return require("torch")


def leaf(values, dtype=np.float64):
    return Tensor(np.asarray(values, dtype=dtype), requires_grad=True)


# -- a graph used after it was freed ---------------------------------------------------------------

def test_shared_subgraph_freed_by_first_backward_raises():
    # issue 10's example: z's graph is freed by a.backward(); b.backward() used to give 2, not 8
    x = leaf(1.0)
    z = x * x
    a = z.sum()
    b = (z * 3).sum()
    a.backward()
    with pytest.raises(RuntimeError, match="retain_graph=True"):
        b.backward()
    assert x.grad.item() == 2.0  # nothing was accumulated by the refused backward


def test_shared_subgraph_with_retain_graph_gives_the_full_gradient():
    x = leaf(1.0)
    z = x * x
    a = z.sum()
    b = (z * 3).sum()
    a.backward(retain_graph=True)
    b.backward()
    assert x.grad.item() == 8.0  # d/dx (x^2 + 3x^2) at 1


def test_second_backward_on_the_same_loss_raises_and_retain_graph_allows_it():
    x = leaf([1.0, 2.0])
    loss = (x * x).sum()
    loss.backward()
    with pytest.raises(RuntimeError, match=r"second time.*retain_graph=True"):
        loss.backward()
    np.testing.assert_array_equal(x.grad.numpy(), [2.0, 4.0])

    y = leaf([1.0, 2.0])
    loss = (y * y).sum()
    loss.backward(retain_graph=True)
    loss.backward()
    np.testing.assert_array_equal(y.grad.numpy(), [4.0, 8.0])


def test_freed_graph_matches_torch():
    torch = _torch()
    xt = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)
    zt = xt * xt
    at, bt = zt.sum(), (zt * 3).sum()
    at.backward()
    with pytest.raises(RuntimeError, match="retain_graph=True"):
        bt.backward()


# -- version counter -------------------------------------------------------------------------------

def test_assignment_to_data_between_forward_and_backward_raises():
    x = leaf([1.0, 2.0])
    w = leaf([3.0, 4.0])
    y = (x * w).sum()  # Mul saves x and w
    w.data = w.data * 2
    with pytest.raises(RuntimeError, match=r"modified by an in-place operation.*\[2\].*"
                                           r"MulBackward.*version 1; expected version 0"):
        y.backward()


def test_augmented_assignment_to_data_bumps_the_version():
    w = leaf([3.0, 4.0])
    v0 = w._version
    w.data -= 1  # Python runs this as w.data = w.data.__isub__(1): the setter sees it
    assert w._version == v0 + 1
    np.testing.assert_array_equal(w.numpy(), [2.0, 3.0])


def test_optimizer_step_between_forward_and_backward_raises():
    lin = nn.Linear(3, 2)
    opt = SGD(lin.parameters(), lr=0.1)
    x = Tensor(np.ones((4, 3), np.float32))
    loss = lin(x).sum()
    (lin(x) * 2).sum().backward()   # another graph gives the weights a gradient
    opt.step()                      # updates weight and bias in place: versions bump
    with pytest.raises(RuntimeError, match=r"in-place operation.*\[2, 3\].*LinearBackward"):
        loss.backward()


def test_in_place_op_on_a_saved_input_raises_and_on_an_unsaved_one_does_not():
    x = leaf([1.0, -2.0])
    w = Tensor(np.array([3.0, 4.0]))
    y = (x * w).sum()
    with minidl.no_grad():
        w.add_(1)
    with pytest.raises(RuntimeError, match="version 1; expected version 0"):
        y.backward()
    # Add saves nothing: changing its operand afterwards does not change the gradient
    b = Tensor(np.array([3.0, 4.0]))
    y = (x + b).sum()
    b.mul_(5)
    y.backward()
    np.testing.assert_array_equal(x.grad.numpy(), [1.0, 1.0])


def test_in_place_change_of_a_saved_output_raises():
    x = leaf([0.5, 1.0])
    y = x.exp()          # Exp saves its output
    loss = (y + 1).sum()  # Add saves nothing
    with minidl.no_grad():
        y.mul_(0)
    with pytest.raises(RuntimeError, match="its output of ExpBackward"):
        loss.backward()


def test_version_check_matches_torch():
    torch = _torch()
    xt = torch.tensor([1.0, -2.0], dtype=torch.float64, requires_grad=True)
    wt = torch.tensor([3.0, 4.0], dtype=torch.float64)
    yt = (xt * wt).sum()
    wt.add_(1)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        yt.backward()


# -- in-place updates of leaves --------------------------------------------------------------------

def test_in_place_updates_under_no_grad_keep_the_parameter():
    p = nn.Parameter(np.array([1.0, 2.0, 3.0], np.float32))
    p.grad = Tensor(np.array([1.0, 1.0, 1.0], np.float32))
    obj, v = p, p._version
    with minidl.no_grad():
        p -= 0.5 * p.grad          # issue 10: used to rebind p to a new Tensor
        assert p is obj and isinstance(p, nn.Parameter)
        p.data -= 0.5
        p.add_(Tensor(np.ones(3, np.float32)), alpha=2)
        p.mul_(2)
        p.sub_(1)
        p.clamp_(min=0.0, max=6.0)
        p /= 2
    # [1,2,3] -0.5 -0.5 +2 -> [2,3,4]; *2 -1 -> [3,5,7]; clamp to 6; /2
    np.testing.assert_allclose(p.numpy(), [1.5, 2.5, 3.0])
    assert p is obj and p.dtype == np.float32 and p.requires_grad and p.is_leaf
    assert p._version == v + 7
    with minidl.no_grad():
        p.copy_(np.array([7.0, 8.0, 9.0]))
        np.testing.assert_array_equal(p.numpy(), [7.0, 8.0, 9.0])
        p.fill_(2.5)
        np.testing.assert_array_equal(p.numpy(), [2.5, 2.5, 2.5])
        p.zero_()
    np.testing.assert_array_equal(p.numpy(), [0.0, 0.0, 0.0])
    assert p._version == v + 10 and p.dtype == np.float32


def test_manual_sgd_loop_under_no_grad_trains_the_same_tensor():
    w = leaf([0.0, 0.0])
    target = np.array([1.0, -2.0])
    for _ in range(50):
        loss = ((w - Tensor(target)) ** 2).sum()
        loss.backward()
        with minidl.no_grad():
            w -= 0.1 * w.grad
        w.grad = None
    np.testing.assert_allclose(w.numpy(), target, atol=1e-4)


def test_in_place_on_a_leaf_that_requires_grad_raises_in_grad_mode():
    w = leaf([1.0, 2.0])
    for f in (lambda: w.add_(1), lambda: w.mul_(2), lambda: w.zero_(), lambda: w.fill_(1.0),
              lambda: w.clamp_(0, 1), lambda: w.copy_(np.zeros(2))):
        with pytest.raises(RuntimeError, match="leaf tensor that requires grad.*in-place"):
            f()
    with pytest.raises(RuntimeError, match="in-place"):
        w -= 1
    np.testing.assert_array_equal(w.numpy(), [1.0, 2.0])
    assert w._version == 0


def test_in_place_on_a_leaf_matches_torch():
    torch = _torch()
    wt = torch.tensor([1.0, 2.0], requires_grad=True)
    with pytest.raises(RuntimeError, match="leaf Variable that requires grad"):
        wt.add_(1)
    with torch.no_grad():
        ref = wt
        wt -= 0.5
    assert wt is ref


def test_in_place_on_a_tensor_inside_the_graph_raises():
    x = leaf([1.0, 2.0])
    h = x * 2
    with pytest.raises(RuntimeError, match=r"part of the autograd graph.*MulBackward.*y = y \+ x"):
        h += 1


def test_in_place_with_an_operand_that_requires_grad_joins_the_graph():
    x = leaf([1.0, 2.0])
    acc = Tensor(np.zeros(2))
    acc += x * x
    assert acc.requires_grad and not acc.is_leaf
    (acc * 3).sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), 6 * x.numpy())  # d/dx 3x^2
    with pytest.raises(RuntimeError, match="part of the autograd graph"):
        acc *= x  # now it is inside the graph


def test_in_place_dtype_and_shape_errors_name_both():
    i = Tensor(np.array([1, 2], np.int64))
    with pytest.raises(TypeError, match="float.*int64"):
        i += 0.5
    f = Tensor(np.zeros(3))
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(3,\)"):
        f += Tensor(np.ones((2, 3)))
    f32 = Tensor(np.zeros(2, np.float32))
    f32 += Tensor(np.ones(2))            # float64 into float32: cast, as torch does
    assert f32.dtype == np.float32


# -- gradient dtype --------------------------------------------------------------------------------

def test_gradient_keeps_the_dtype_of_the_leaf():
    w = Tensor(np.array([1.0, 2.0], np.float32), requires_grad=True)
    x = Tensor(np.array([3.0, 4.0], np.float64))
    y = (w * x).sum()          # NumPy promotion: the product is float64
    assert y.dtype == np.float64
    y.backward()
    assert w.grad.dtype == np.float32
    np.testing.assert_array_equal(w.grad.numpy(), [3.0, 4.0])


def test_gradient_dtype_matches_torch():
    torch = _torch()
    wt = torch.tensor([1.0, 2.0], dtype=torch.float32, requires_grad=True)
    (wt * torch.tensor([3.0, 4.0], dtype=torch.float64)).sum().backward()
    assert wt.grad.dtype == torch.float32


# -- construction ----------------------------------------------------------------------------------

@pytest.mark.parametrize("data, what", [
    ("abc", "str"), (b"ab", "bytes"), (["a", "b"], "strings"), ([1.0, None], "objects"),
    ([[1.0, 2.0], [3.0]], "ragged"), (np.array(["x"]), "strings"),
    (np.array([{}, 1], dtype=object), "objects"), ({"a": 1}, "objects")])
def test_construction_rejects_objects_strings_and_ragged_lists(data, what):
    with pytest.raises(TypeError, match=what):
        Tensor(data)


# -- axes ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, call", [
    ("sum", lambda t: t.sum(axis=5)), ("mean", lambda t: t.mean(axis=-3)),
    ("max", lambda t: t.max(axis=2)), ("min", lambda t: t.min(axis=5)),
    ("var", lambda t: t.var(axis=5)), ("argmax", lambda t: t.argmax(axis=5)),
    ("squeeze", lambda t: t.squeeze(5)), ("unsqueeze", lambda t: t.unsqueeze(4)),
    ("transpose", lambda t: t.transpose(0, 5)), ("flatten", lambda t: t.flatten(5)),
    ("concatenate", lambda t: ops.concatenate([t, t], axis=5)),
    ("stack", lambda t: ops.stack([t, t], axis=4)),
    ("softmax", lambda t: minidl.functional.softmax(t, dim=5)),
    ("log_softmax", lambda t: minidl.functional.log_softmax(t, dim=-3))])
def test_axis_out_of_range_raises_index_error(name, call):
    t = Tensor(np.ones((2, 3)))
    with pytest.raises(IndexError, match=rf"{name}: dim -?\d is out of range.*\(2, 3\)"):
        call(t)


def test_axis_in_range_still_works_and_non_integer_axis_is_a_type_error():
    t = Tensor(np.arange(6.0).reshape(2, 3))
    np.testing.assert_array_equal(t.sum(axis=-1).numpy(), [3.0, 12.0])
    assert t.unsqueeze(2).shape == (2, 3, 1) and t.unsqueeze(-3).shape == (1, 2, 3)
    assert ops.stack([t, t], axis=2).shape == (2, 3, 2)
    with pytest.raises(TypeError, match="integer"):
        t.sum(axis=1.5)


def test_axis_error_matches_torch():
    torch = _torch()
    with pytest.raises(IndexError):
        torch.ones(2, 3).sum(5)
    with pytest.raises(IndexError):
        torch.ones(2, 3).unsqueeze(4)


# -- tensor hooks ----------------------------------------------------------------------------------

def test_register_hook_sees_and_replaces_gradients_like_torch():
    seen = []
    x = leaf([1.0, 2.0])
    h = x * 3
    handle = h.register_hook(lambda g: (seen.append(g.numpy()), g * 10)[1])
    x.register_hook(lambda g: seen.append(g.numpy()))
    (h * h).sum().backward()
    np.testing.assert_array_equal(seen[0], [6.0, 12.0])          # dL/dh = 2h
    np.testing.assert_array_equal(seen[1], [180.0, 360.0])       # replaced grad * 3
    np.testing.assert_array_equal(x.grad.numpy(), [180.0, 360.0])
    handle.remove()
    x.grad = None
    h = x * 3
    (h * h).sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [18.0, 36.0])

    torch = _torch()
    xt = torch.tensor([1.0, 2.0], dtype=torch.float64, requires_grad=True)
    ht = xt * 3
    ht.register_hook(lambda g: g * 10)
    (ht * ht).sum().backward()
    np.testing.assert_array_equal(xt.grad.numpy(), x.grad.numpy() * 10)


def test_leaf_hook_replaces_what_is_accumulated_and_needs_requires_grad():
    x = leaf([1.0, 2.0])
    x.register_hook(lambda g: g * 0 + 7)
    (x * 5).sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [7.0, 7.0])
    with pytest.raises(RuntimeError, match="does not require grad"):
        Tensor([1.0]).register_hook(lambda g: None)
    with pytest.raises(RuntimeError, match="shape"):
        y = leaf([1.0, 2.0])
        y.register_hook(lambda g: Tensor(np.ones(3)))
        (y * 2).sum().backward()


def test_post_accumulate_grad_hook_runs_after_grad_is_accumulated():
    w = leaf([1.0, 2.0])
    calls = []
    handle = w.register_post_accumulate_grad_hook(lambda t: calls.append(t.grad.numpy().copy()))
    (w * 2).sum().backward()
    (w * 3).sum().backward()
    np.testing.assert_array_equal(calls[0], [2.0, 2.0])
    np.testing.assert_array_equal(calls[1], [5.0, 5.0])  # sees the accumulated .grad
    handle.remove()
    (w * 3).sum().backward()
    assert len(calls) == 2
    with pytest.raises(RuntimeError, match="non-leaf"):
        (w * 2).register_post_accumulate_grad_hook(lambda t: None)

    torch = _torch()
    wt = torch.tensor([1.0, 2.0], requires_grad=True)
    tcalls = []
    wt.register_post_accumulate_grad_hook(lambda t: tcalls.append(t.grad.numpy().copy()))
    (wt * 2).sum().backward()
    (wt * 3).sum().backward()
    np.testing.assert_array_equal(tcalls[1], calls[1])


def test_post_accumulate_hook_can_update_the_parameter_in_the_backward_pass():
    # the "optimizer in backward" pattern of PyTorch's tutorial
    w = leaf([1.0, 2.0])

    def sgd(t):
        with minidl.no_grad():
            t -= 0.5 * t.grad
        t.grad = None
    w.register_post_accumulate_grad_hook(sgd)
    (w * w).sum().backward()
    np.testing.assert_array_equal(w.numpy(), [0.0, 0.0])
    assert w.grad is None


# -- module backward hooks -------------------------------------------------------------------------

class _TwoIn(nn.Module):
    def forward(self, a, scale, b):
        return a * b * scale


def test_full_backward_hook_grad_input_and_output_match_torch():
    torch = _torch()
    rng = np.random.default_rng(0)
    wv, bv, xv = rng.normal(size=(2, 3)), rng.normal(size=2), rng.normal(size=(4, 3))

    lin = nn.Linear(3, 2).double()
    lin.weight.data = wv.copy()
    lin.bias.data = bv.copy()
    got = []
    lin.register_full_backward_hook(lambda m, gi, go: got.append((m, gi, go)))
    x = Tensor(xv, requires_grad=True)
    (lin(x) ** 2).sum().backward()

    tl = torch.nn.Linear(3, 2).double()
    with torch.no_grad():
        tl.weight.copy_(torch.tensor(wv))
        tl.bias.copy_(torch.tensor(bv))
    ref = []
    tl.register_full_backward_hook(lambda m, gi, go: ref.append((gi, go)))
    xt = torch.tensor(xv, requires_grad=True)
    (tl(xt) ** 2).sum().backward()

    assert len(got) == 1 and got[0][0] is lin
    (gi,), (go,) = got[0][1], got[0][2]
    np.testing.assert_allclose(go.numpy(), ref[0][1][0].numpy(), rtol=1e-12)
    np.testing.assert_allclose(gi.numpy(), ref[0][0][0].numpy(), rtol=1e-12)
    np.testing.assert_allclose(x.grad.numpy(), xt.grad.numpy(), rtol=1e-12)
    np.testing.assert_allclose(lin.weight.grad.numpy(), tl.weight.grad.numpy(), rtol=1e-12)


def test_full_backward_hook_several_inputs_and_replacement():
    m = _TwoIn()
    calls = []

    def hook(mod, gi, go):
        calls.append((gi, go))
        return (gi[0] * 2, None, gi[2])
    handle = m.register_full_backward_hook(hook)
    a, b = leaf([1.0, 2.0]), leaf([3.0, 4.0])
    m(a, 10.0, b).sum().backward()
    gi, go = calls[0]
    assert len(gi) == 3 and gi[1] is None
    np.testing.assert_array_equal(go[0].numpy(), [1.0, 1.0])
    np.testing.assert_array_equal(gi[0].numpy(), [30.0, 40.0])   # b * scale
    np.testing.assert_array_equal(gi[2].numpy(), [10.0, 20.0])   # a * scale
    np.testing.assert_array_equal(a.grad.numpy(), [60.0, 80.0])  # replaced: doubled
    np.testing.assert_array_equal(b.grad.numpy(), [10.0, 20.0])
    handle.remove()
    a.grad = None
    m(a, 10.0, b).sum().backward()
    np.testing.assert_array_equal(a.grad.numpy(), [30.0, 40.0])
    assert len(calls) == 1


def test_full_backward_hook_without_input_grad_and_not_under_no_grad():
    lin = nn.Linear(2, 1)
    calls = []
    lin.register_full_backward_hook(lambda m, gi, go: calls.append((gi, go)))
    x = Tensor(np.ones((3, 2), np.float32))          # data: no grad
    lin(x).sum().backward()
    assert len(calls) == 1 and calls[0][0] == (None,)
    np.testing.assert_array_equal(calls[0][1][0].numpy(), np.ones((3, 1)))
    with minidl.no_grad():
        y = lin(x)
    assert not y.requires_grad and len(calls) == 1


def test_grad_fn_names():
    x = leaf([1.0])
    assert repr((x * 2).grad_fn) .startswith("<minidl.ops.Mul")
    assert "grad_fn=<MulBackward>" in repr(x * 2)
    assert (x * 2).grad_fn.name() == "MulBackward"

    class Conv2dFunction(minidl.tensor.Function):
        def forward(self, a):
            return a

        def backward(self, g):
            return g
    assert "grad_fn=<Conv2dBackward>" in repr(Conv2dFunction.apply(x))


def test_backward_hooked_module_still_gradchecks_and_a_replacing_hook_changes_the_gradient():
    lin = nn.Linear(3, 2).double()
    x = Tensor(np.random.default_rng(1).normal(size=(4, 3)), requires_grad=True)
    handle = lin.register_full_backward_hook(lambda m, gi, go: None)
    assert minidl.gradcheck(lambda x, w: minidl.functional.linear(x, w) + lin(x), [x, lin.weight])
    handle.remove()
    lin.register_full_backward_hook(lambda m, gi, go: (gi[0] * 1.1,))
    # the hook scales dL/dx by 1.1: finite differences no longer agree (the hook is applied)
    assert not minidl.gradcheck(lambda x: lin(x), [x], raise_exception=False)


def test_clone_gradcheck():
    x = leaf(np.random.default_rng(2).normal(size=(2, 3)))
    assert minidl.gradcheck(lambda x: x.clone() * x, [x])


def test_setitem_writes_in_place_and_follows_the_in_place_rules():
    x = Tensor(np.zeros((2, 3)))
    x[0, 1] = 5.0
    x[:, 2] = Tensor(np.array([1.0, 2.0]))
    x[x == 0] = -1.0
    np.testing.assert_array_equal(x.numpy(), [[-1, 5, 1], [-1, -1, 2]])
    assert x._version == 3
    w = leaf([1.0, 2.0])
    y = (w * x[0, :2]).sum()   # Mul saves w's array
    with pytest.raises(RuntimeError, match="leaf tensor that requires grad"):
        w[0] = 3.0
    with minidl.no_grad():
        w[0] = 3.0
    np.testing.assert_array_equal(w.numpy(), [3.0, 2.0])
    with pytest.raises(RuntimeError, match="version 1; expected version 0"):
        y.backward()   # Mul saved w's array, changed by the assignment
    with pytest.raises(RuntimeError, match="value requires grad"):
        x[0] = leaf([1.0, 2.0, 3.0])


def test_in_place_versions_and_hooks_on_device(device):
    w = Tensor(np.array([1.0, 2.0, 3.0]), requires_grad=True, device=device)
    seen = []
    w.register_hook(lambda g: seen.append(g.device))
    y = (w * w).sum()
    with minidl.no_grad():
        w.sub_(Tensor(np.ones(3), device=device)).mul_(2).clamp_(0.0, 3.0)
        w[0] = 0.5
        w.fill_(1.5)
        w.copy_(np.array([1.0, 2.0, 3.0]))
        w -= 1
    assert w.device == device and w._version == 7
    np.testing.assert_array_equal(w.numpy(), [0.0, 1.0, 2.0])
    with pytest.raises(RuntimeError, match="version 7; expected version 0"):
        y.backward()
    (w * w).sum().backward()
    assert seen == [device] and w.grad.device == device
    np.testing.assert_array_equal(w.grad.numpy(), [0.0, 2.0, 4.0])
