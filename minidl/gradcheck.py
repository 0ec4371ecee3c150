"""Finite-difference gradient checking, in float64, for users and tests.

    >>> x = minidl.Tensor(np.random.randn(2, 3, 5, 5), requires_grad=True)   # float64 array
    >>> w = minidl.Tensor(np.random.randn(4, 3, 3, 3), requires_grad=True)
    >>> minidl.gradcheck(lambda x, w: F.conv2d(x, w, padding=1), [x, w])
    True

How it works: the output y = fn(*inputs) is reduced to a scalar L = sum(v * y) with a fixed
random v (so every output element matters and no cancellation hides an error). The analytic
gradient dL/dx comes from one ``backward``. The numeric one uses central differences,
(L(x + eps e) - L(x - eps e)) / (2 eps):

* for small inputs (<= ``max_elements`` elements) along every coordinate e = e_i — the full
  Jacobian-vector comparison;
* for larger inputs along ``n_directions`` random unit directions d, comparing
  (L(x + eps d) - L(x - eps d)) / (2 eps) with <dL/dx, d>.

A mismatch |analytic - numeric| > atol + rtol * |numeric| + rounding raises
:class:`GradcheckError` naming the input, the worst element, and both values.

Tolerance. In float64 a central difference with eps = 1e-6 has a truncation error ~eps^2
times the third derivative, ~1e-12, and a rounding error ~u * sum|v * y| / eps (u = 2.2e-16, the
unit roundoff): about 1e-9 for the losses of the tests. The defaults ``atol=1e-7, rtol=1e-6``
sit well above that (every check of the test suite agrees to better than 3e-8) yet catch a
backward that is 0.1% wrong (the former rtol=1e-3 let it through); the ``rounding`` term,
``4 u sum|v * y| / eps``, keeps the bound honest for large outputs whose loss sums many terms.

Inputs must be float64 (call ``.double()``): in float32 the rounding error of a central
difference with eps = 1e-6 is ~1e-1 and the check means nothing. Modules are checked by passing
their parameters as inputs, e.g. ``gradcheck(lambda x, *p: m(x), [x, *m.double().parameters()])``
(``fn`` is called with all inputs; perturbations are made in place in ``.data``).
"""
import numpy as np

from minidl import backend
from minidl.tensor import Tensor, no_grad


class GradcheckError(AssertionError):
    """Analytic and numeric gradients disagree."""


def _loss(fn, inputs, v):
    with no_grad():
        y = fn(*inputs)
    y = y.data if isinstance(y, Tensor) else y
    xp = backend.get_array_module(y)
    return float(xp.sum(y * v))


def gradcheck(fn, inputs, eps=1e-6, atol=1e-7, rtol=1e-6, max_elements=400, n_directions=8,
              seed=0, raise_exception=True):
    """Compare ``fn``'s backward with central differences on every input that requires grad.

    An element fails when ``|analytic - numeric| > atol + rtol * |numeric| + rounding``, where
    ``rounding = 4 * 2.2e-16 * sum|v * y| / eps`` bounds the floating-point error of the
    difference quotient (see the module docstring). Returns True, or raises
    :class:`GradcheckError` (``raise_exception=False`` returns False).
    """
    eps, atol, rtol = float(eps), float(atol), float(rtol)
    if not (eps > 0 and atol >= 0 and rtol >= 0):  # also refuses NaN
        raise ValueError(f"gradcheck: need eps > 0, atol >= 0, rtol >= 0; got eps={eps}, "
                         f"atol={atol}, rtol={rtol}")
    inputs = list(inputs)
    checked = [i for i, t in enumerate(inputs) if isinstance(t, Tensor) and t.requires_grad]
    if not checked:
        raise ValueError("gradcheck: no input requires grad")
    for i in checked:
        if inputs[i].dtype != np.float64:
            raise TypeError(f"gradcheck: input {i} (shape {inputs[i].shape}) is "
                            f"{inputs[i].dtype}; finite differences need float64 — pass "
                            "t.double() (and model.double() for modules)")
    rng = np.random.default_rng(seed)

    # analytic
    for i in checked:
        inputs[i].grad = None
    y = fn(*inputs)
    if not isinstance(y, Tensor):
        raise TypeError(f"gradcheck: fn must return a Tensor, got {type(y).__name__}")
    xp = backend.get_array_module(y.data)
    v = xp.asarray(rng.standard_normal(y.shape))
    if not y.requires_grad:
        raise GradcheckError("gradcheck: the output does not depend on any input that requires "
                             "grad")
    rounding = 4 * np.finfo(np.float64).eps * float(xp.sum(xp.abs(y.data * v))) / eps
    atol = atol + rounding
    y.backward(v)
    analytic = {}
    for i in checked:
        g = inputs[i].grad
        analytic[i] = (np.zeros(inputs[i].shape) if g is None
                       else backend.to_numpy(g.data).astype(np.float64))

    for i in checked:
        t = inputs[i]
        n = t.numel()
        a = analytic[i]
        if n <= max_elements:
            numeric = np.zeros(t.shape)
            for j in range(n):
                idx = np.unravel_index(j, t.shape)  # works for non-contiguous data as well
                old = float(t.data[idx])
                t.data[idx] = old + eps
                lp = _loss(fn, inputs, v)
                t.data[idx] = old - eps
                lm = _loss(fn, inputs, v)
                t.data[idx] = old
                numeric[idx] = (lp - lm) / (2 * eps)
            err = np.abs(a - numeric)
            bound = atol + rtol * np.abs(numeric)
            if np.any(err > bound) or not np.all(np.isfinite(a)):
                k = int(np.argmax(err - bound)) if np.all(np.isfinite(a)) \
                    else int(np.argmax(~np.isfinite(a)))
                idx = np.unravel_index(k, t.shape)
                msg = (f"gradcheck failed for input {i} (shape {t.shape}): worst element {idx}: "
                       f"analytic {a[idx]:.8g}, numeric {numeric[idx]:.8g} "
                       f"(|diff| {err[idx]:.3g} > atol {atol:.3g} (with rounding) + rtol {rtol} * "
                       f"|numeric|); "
                       f"{int(np.sum(err > bound))} of {n} elements disagree")
                if raise_exception:
                    raise GradcheckError(msg)
                return False
        else:
            orig = t.data.copy()
            for k in range(n_directions):
                d = rng.standard_normal(t.shape)
                d /= np.linalg.norm(d)
                dd = xp.asarray(d) if backend.device_of(t.data) == "cuda" else d
                t.data[...] = orig + eps * dd
                lp = _loss(fn, inputs, v)
                t.data[...] = orig - eps * dd
                lm = _loss(fn, inputs, v)
                t.data[...] = orig
                numeric = (lp - lm) / (2 * eps)
                analytic_dd = float(np.sum(a * d))
                if abs(analytic_dd - numeric) > atol + rtol * abs(numeric):
                    msg = (f"gradcheck failed for input {i} (shape {t.shape}) along random "
                           f"direction {k}: analytic {analytic_dd:.8g}, numeric {numeric:.8g}")
                    if raise_exception:
                        raise GradcheckError(msg)
                    return False
    return True
