"""nn.Module bookkeeping, state_dict round trips, hooks, and the public gradcheck itself."""
import numpy as np
import pytest

import minidl
from minidl import Tensor, gradcheck
from minidl.nn import Module, ModuleList, Parameter, Sequential


class Affine(Module):
    def __init__(self, n_in, n_out):
        super().__init__()
        rng = np.random.default_rng(n_in * 10 + n_out)
        self.weight = Parameter(rng.standard_normal((n_out, n_in)).astype(np.float32))
        self.bias = Parameter(np.zeros(n_out, np.float32))
        self.register_buffer("calls", Tensor(np.zeros(1, np.float32)))

    def forward(self, x):
        return x @ self.weight.transpose() + self.bias


class Net(Module):
    def __init__(self):
        super().__init__()
        self.first = Affine(3, 4)
        self.blocks = ModuleList([Affine(4, 4), Affine(4, 4)])
        self.head = Sequential(Affine(4, 2))
        self.scale = Parameter(np.ones(1, np.float32))

    def forward(self, x):
        x = self.first(x).relu()
        for b in self.blocks:
            x = b(x).relu()
        return self.head(x) * self.scale


def test_named_parameters_in_registration_order_with_dotted_keys():
    net = Net()
    names = [n for n, _ in net.named_parameters()]
    # own parameters first, then each submodule's, depth first (PyTorch's order)
    assert names == ["scale", "first.weight", "first.bias", "blocks.0.weight", "blocks.0.bias",
                     "blocks.1.weight", "blocks.1.bias", "head.0.weight", "head.0.bias"]
    assert [n for n, _ in net.named_buffers()] == ["first.calls", "blocks.0.calls",
                                                   "blocks.1.calls", "head.0.calls"]
    assert len(list(net.children())) == 3
    assert len(list(net.modules())) == 1 + 1 + 1 + 2 + 1 + 1
    assert net.num_parameters() == 1 + (12 + 4) + 2 * (16 + 4) + (8 + 2)


def test_shared_parameter_counted_once():
    a = Affine(2, 2)
    seq = Sequential(a, a)
    assert len(list(seq.parameters())) == 2


def test_train_eval_recursive_and_return_self():
    net = Net()
    assert net.eval() is net
    assert all(not m.training for m in net.modules())
    assert net.train() is net
    assert all(m.training for m in net.modules())


def test_unknown_attribute_raises_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = Net().nope


def test_assign_non_parameter_to_parameter_slot_is_an_error():
    a = Affine(2, 2)
    with pytest.raises(TypeError, match="weight"):
        a.weight = Tensor(np.ones((2, 2)))


def test_state_dict_round_trip_and_errors():
    src, dst = Net(), Net()
    for p in dst.parameters():
        p.data = p.data + 1
    sd = src.state_dict()
    assert list(sd)[:2] == ["scale", "first.weight"]
    assert "first.calls" in sd
    missing, unexpected = dst.load_state_dict(sd)
    assert missing == [] and unexpected == []
    for (n1, p1), (n2, p2) in zip(src.named_parameters(), dst.named_parameters()):
        assert n1 == n2
        np.testing.assert_array_equal(p1.numpy(), p2.numpy())
    # loading copies: changing the source later does not change the destination
    src.scale.data[...] = 5
    assert dst.scale.numpy()[0] == 1

    bad = dict(sd)
    bad.pop("first.bias")
    bad["extra"] = np.zeros(1)
    with pytest.raises(KeyError, match="first.bias.*extra"):
        dst.load_state_dict(bad)
    missing, unexpected = dst.load_state_dict(bad, strict=False)
    assert missing == ["first.bias"] and unexpected == ["extra"]
    wrong = dict(sd)
    wrong["first.weight"] = np.zeros((5, 5))
    with pytest.raises(ValueError, match=r"first.weight.*\(5, 5\).*\(4, 3\)"):
        dst.load_state_dict(wrong)


def test_to_dtype_keeps_parameter_identity():
    net = Net()
    params = list(net.parameters())
    net.double()
    assert all(p.dtype == np.float64 for p in net.parameters())
    assert [id(p) for p in net.parameters()] == [id(p) for p in params]
    assert net.first.calls.dtype == np.float64


def test_zero_grad_and_backward_through_module():
    net = Net()
    x = Tensor(np.random.default_rng(0).standard_normal((5, 3)).astype(np.float32))
    net(x).sum().backward()
    assert all(p.grad is not None for p in net.parameters())
    net.zero_grad()
    assert all(p.grad is None for p in net.parameters())


def test_forward_hook_sees_outputs_and_can_be_removed():
    net = Net()
    seen = []
    h = net.first.register_forward_hook(lambda m, inp, out: seen.append(out.shape))
    x = Tensor(np.ones((2, 3), np.float32))
    net(x)
    assert seen == [(2, 4)]
    h.remove()
    net(x)
    assert seen == [(2, 4)]


def test_sequential_indexing_and_repr():
    seq = Sequential(Affine(2, 3), Affine(3, 1))
    assert isinstance(seq[0], Affine) and len(seq) == 2
    assert isinstance(seq[1:], Sequential) and len(seq[1:]) == 1
    assert [type(m).__name__ for m in seq] == ["Affine", "Affine"]
    r = repr(Net())
    assert "(blocks): ModuleList" in r and "(0): Affine" in r


def test_module_gradcheck_in_float64():
    net = Net().double()
    x = Tensor(np.random.default_rng(1).standard_normal((3, 3)), requires_grad=True)
    assert gradcheck(lambda x, *p: net(x), [x, *net.parameters()])


# -- gradcheck is a real check: it must catch a wrong backward --------------------------------

class WrongSquare(minidl.Function):
    def forward(self, x):
        self.save_for_backward(x)
        return x * x

    def backward(self, gy):
        (x,) = self.saved_arrays
        return gy * x  # missing the factor 2


def test_gradcheck_catches_a_wrong_backward_and_names_it():
    x = Tensor(np.linspace(0.5, 1.5, 6).reshape(2, 3), requires_grad=True)
    with pytest.raises(minidl.GradcheckError, match=r"input 0 \(shape \(2, 3\)\).*analytic"):
        gradcheck(lambda x: WrongSquare.apply(x), [x])
    assert gradcheck(lambda x: WrongSquare.apply(x), [x], raise_exception=False) is False


def test_gradcheck_catches_a_wrong_backward_on_large_inputs():
    x = Tensor(np.linspace(0.5, 1.5, 1000), requires_grad=True)
    with pytest.raises(minidl.GradcheckError, match="random direction"):
        gradcheck(lambda x: WrongSquare.apply(x), [x], max_elements=100)


def test_gradcheck_requires_float64():
    x = Tensor(np.ones(3, np.float32), requires_grad=True)
    with pytest.raises(TypeError, match="float64"):
        gradcheck(lambda x: x * 2, [x])


def test_gradcheck_on_non_contiguous_input():
    base = np.random.default_rng(2).standard_normal((4, 3))
    x = Tensor(base.T, requires_grad=True)  # a transposed view
    assert not x.data.flags["C_CONTIGUOUS"]
    assert gradcheck(lambda x: (x * x).sum(axis=0), [x])


@pytest.mark.parametrize("owner", ["module", "optimizer"])
def test_zero_grad_set_to_none_or_zero_in_place(owner):
    net = Net()
    out = net(Tensor(np.ones((2, 3), np.float32))).sum()
    out.backward()
    zero_grad = net.zero_grad if owner == "module" else minidl.optim.SGD(
        net.parameters(), lr=0.1).zero_grad
    grads = {n: p.grad for n, p in net.named_parameters()}
    assert all(g is not None for g in grads.values())
    assert any(np.any(g.numpy() != 0) for g in grads.values())
    zero_grad(set_to_none=False)
    for n, p in net.named_parameters():
        assert p.grad is grads[n]                      # the same tensors, zeroed in place
        assert not np.any(p.grad.numpy())
    zero_grad()                                        # set_to_none=True by default, as torch
    assert all(p.grad is None for p in net.parameters())


class ScaledSquare(minidl.Function):
    """x * x with a backward off by a relative ``rel`` (2x(1 + rel) instead of 2x)."""

    def forward(self, x, rel):
        self.save_for_backward(x)
        self.rel = rel
        return x * x

    def backward(self, gy):
        (x,) = self.saved_arrays
        return gy * (2 * x) * (1 + self.rel)


def test_gradcheck_default_tolerance_catches_a_backward_wrong_by_0_1_percent():
    rng = np.random.default_rng(5)
    small = Tensor(rng.uniform(0.5, 1.5, (3, 4)), requires_grad=True)      # every coordinate
    large = Tensor(rng.uniform(0.5, 1.5, (30, 40)), requires_grad=True)    # random directions
    for x, kw in ((small, {}), (large, dict(max_elements=100))):
        assert gradcheck(lambda x: ScaledSquare.apply(x, rel=0.0), [x], **kw)
        for rel in (1e-3, -1e-3):
            with pytest.raises(minidl.GradcheckError):
                gradcheck(lambda x, rel=rel: ScaledSquare.apply(x, rel=rel), [x], **kw)
    # the former default (atol 1e-5, rtol 1e-3) let exactly this error pass
    assert gradcheck(lambda x: ScaledSquare.apply(x, rel=1e-3), [small], atol=1e-5, rtol=1e-3)


def test_gradcheck_catches_0_1_percent_in_a_real_op():
    """A conv whose weight gradient is scaled by 1.001 (a hook on the weight's grad path)."""
    import minidl.functional as F
    rng = np.random.default_rng(6)
    x = Tensor(rng.standard_normal((2, 3, 5, 5)), requires_grad=True)
    w = Tensor(rng.standard_normal((4, 3, 3, 3)), requires_grad=True)
    assert gradcheck(lambda x, w: F.conv2d(x, w, padding=1), [x, w])

    def off(x, w):  # w' = w in the forward, d/dw scaled by 1.001 in the backward
        return F.conv2d(x, ScaledIdentity.apply(w, rel=1e-3), padding=1)
    with pytest.raises(minidl.GradcheckError, match="input 1"):
        gradcheck(off, [x, w])


class ScaledIdentity(minidl.Function):
    def forward(self, x, rel):
        self.rel = rel
        return x.copy()

    def backward(self, gy):
        return gy * (1 + self.rel)


def test_gradcheck_rejects_bad_tolerances():
    x = Tensor(np.ones(3), requires_grad=True)
    for kw in (dict(eps=0.0), dict(atol=-1.0), dict(rtol=float("nan"))):
        with pytest.raises(ValueError, match="eps > 0"):
            gradcheck(lambda x: x * 2, [x], **kw)
