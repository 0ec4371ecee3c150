"""Softmax, log-softmax and the losses of ``torch.nn.functional``, with its names, arguments
and formulas: ``cross_entropy`` (``weight``, ``ignore_index``, ``label_smoothing``),
``nll_loss``, ``mse_loss``, ``l1_loss``, ``smooth_l1_loss``, ``binary_cross_entropy`` and
``binary_cross_entropy_with_logits``; ``reduction`` is "mean" (default), "sum" or "none".

Numerically stable for any logits (even ~1e4) by subtracting the maximum first:

    log_softmax(x)_i = x_i - m - log(sum_j exp(x_j - m)),   m = max_j x_j
    softmax(x)_i     = exp(log_softmax(x)_i)

Backward, with y = softmax(x) and g the incoming gradient:

    softmax:      dx = y * (g - sum_j g_j y_j)
    log_softmax:  dx = g - y * sum_j g_j

``cross_entropy(logits, target) = nll_loss(log_softmax(logits, 1), target)``:
``loss_n = -w[t_n] * log_softmax(x_n)[t_n]``, averaged over the non-ignored targets (weighted
mean when ``weight`` is given), as PyTorch. Logits (N, C) or (N, C, d1, ...), targets int class
indices of shape (N,) or (N, d1, ...). With ``label_smoothing = e`` (torch's definition) the
target distribution is ``(1 - e) * onehot + e / C``:
``loss_n = (1 - e) * nll_n + (e / C) * sum_c -w[c] * log_softmax(x_n)[c]``, both parts divided
by the same denominator for "mean".

The pointwise losses take ``input`` and ``target`` of the same shape (a shape mismatch is an
error here, where torch broadcasts with a warning) and are differentiable in both; with
d = input - target:

==========================  ====================================  ============================
loss                        elementwise value                     d/d input
==========================  ====================================  ============================
``mse_loss``                d^2                                   2 d
``l1_loss``                 |d|                                   sign(d)
``smooth_l1_loss`` (beta)   0.5 d^2 / beta if |d| < beta,         d / beta, or sign(d)
                            else |d| - 0.5 beta
``binary_cross_entropy``    -w (y log x + (1-y) log(1-x)),        w (x - y) / max(x (1-x), 1e-12)
                            each log clamped at -100 (torch)
``..._with_logits``         w ((1-y) x + l softplus(-x)),         w ((1-y) - l sigmoid(-x))
                            l = 1 + (pos_weight - 1) y
==========================  ====================================  ============================
"""
import numbers

import numpy as np

from minidl import ops
from minidl.backend import get_array_module
from minidl.functional._checks import check_floating
from minidl.tensor import Function, Tensor

REDUCTIONS = ("mean", "sum", "none")


class LogSoftmaxFunction(Function):
    def forward(self, x, dim):
        xp = get_array_module(x)
        self.dim = dim
        z = x - x.max(axis=dim, keepdims=True)
        y = z - xp.log(xp.exp(z).sum(axis=dim, keepdims=True))
        self.save_for_backward(y)
        return y

    def backward(self, gy):
        xp = get_array_module(gy)
        y, = self.saved_arrays
        return gy - xp.exp(y) * gy.sum(axis=self.dim, keepdims=True)


class SoftmaxFunction(Function):
    def forward(self, x, dim):
        xp = get_array_module(x)
        self.dim = dim
        e = xp.exp(x - x.max(axis=dim, keepdims=True))
        y = e / e.sum(axis=dim, keepdims=True)
        self.save_for_backward(y)
        return y

    def backward(self, gy):
        y, = self.saved_arrays
        return y * (gy - (gy * y).sum(axis=self.dim, keepdims=True))


def _dim(x, dim, name):
    from minidl.ops import check_dim
    return check_dim(dim, x.ndim, name, x.shape)


def softmax(x, dim=1):
    """``exp(x_i - max) / sum_j exp(x_j - max)`` along ``dim`` (stable for huge logits)."""
    check_floating("softmax", x)
    return SoftmaxFunction.apply(x, dim=_dim(x, dim, "softmax"))


def log_softmax(x, dim=1):
    """``x_i - max - log sum_j exp(x_j - max)`` along ``dim`` (stable for huge logits)."""
    check_floating("log_softmax", x)
    return LogSoftmaxFunction.apply(x, dim=_dim(x, dim, "log_softmax"))


class NLLLossFunction(Function):
    """Picks -w[t] * logp[t] per sample; the backward scatters -w[t]/denominator back."""

    def forward(self, logp, target, weight, ignore_index, reduction):
        xp = get_array_module(logp)
        c = logp.shape[1]
        # class axis last, samples flattened: (M, C)
        lp = xp.moveaxis(logp, 1, -1).reshape(-1, c)
        t = target.reshape(-1)
        valid = t != ignore_index
        tc = xp.where(valid, t, 0)
        w = xp.ones(c, dtype=logp.dtype) if weight is None else weight.astype(logp.dtype)
        wt = w[tc] * valid
        picked = lp[xp.arange(lp.shape[0]), tc]
        losses = -wt * picked
        self.shape, self.reduction = logp.shape, reduction
        self.save_for_backward(tc, wt)
        if reduction == "none":
            return losses.reshape(target.shape)
        if reduction == "sum":
            return losses.sum()
        return losses.sum() / wt.sum()  # NaN when every target is ignored, as PyTorch

    def backward(self, gy):
        xp = get_array_module(gy)
        tc, wt = self.saved_arrays
        n, c = self.shape[0], self.shape[1]
        rest = self.shape[2:]
        m = tc.shape[0]
        if self.reduction == "none":
            coef = -wt * gy.reshape(-1)
        elif self.reduction == "sum":
            coef = -wt * gy
        else:
            coef = -wt * (gy / wt.sum())
        g = xp.zeros((m, c), dtype=gy.dtype)
        g[xp.arange(m), tc] = coef
        g = g.reshape((n,) + rest + (c,))
        return xp.ascontiguousarray(xp.moveaxis(g, -1, 1))


def _check_target(name, logits, target):
    check_floating(name, logits)
    if logits.ndim < 2:
        raise ValueError(f"{name}: expected input (N, C) or (N, C, d1, ...), got shape "
                         f"{logits.shape}")
    expect = (logits.shape[0],) + tuple(logits.shape[2:])
    t = target.data if isinstance(target, Tensor) else target
    if not hasattr(t, "shape") or not hasattr(t, "dtype"):
        raise TypeError(f"{name}: target must be a Tensor (or array) of integer class indices, "
                        f"got {type(target).__name__}; wrap it: minidl.Tensor(target)")
    if tuple(t.shape) != expect:
        raise ValueError(f"{name}: target has shape {tuple(t.shape)}, expected {expect} for "
                         f"input of shape {logits.shape} (class indices, the class axis removed)")
    if t.dtype.kind not in "iu":
        raise TypeError(f"{name}: target must hold integer class indices, got dtype {t.dtype} "
                        f"(shape {tuple(t.shape)})")
    return t


def _check_classes(name, t, c, ignore_index, input_shape):
    bad = (t != ignore_index) & ((t < 0) | (t >= c))
    if bool(bad.any()):
        raise IndexError(f"{name}: target values must be in [0, {c}) (or ignore_index "
                         f"{ignore_index}); got {int(t[bad].reshape(-1)[0])} (target shape "
                         f"{tuple(t.shape)}, input shape {input_shape})")
    return t


def nll_loss(input, target, weight=None, ignore_index=-100, reduction="mean"):
    """Negative log-likelihood of log-probabilities ``input`` (N, C, ...) at the integer
    ``target`` classes (N, ...): ``-weight[t] * input[n, t]``, reduced by "mean" (weighted mean
    over non-ignored targets), "sum" or "none"."""
    _check_reduction("nll_loss", reduction)
    t = _check_target("nll_loss", input, target)
    xp = get_array_module(input.data)
    c = input.shape[1]
    t = _check_classes("nll_loss", xp.asarray(t), c, ignore_index, input.shape)
    w = None
    if weight is not None:
        if isinstance(weight, Tensor):
            check_floating("nll_loss", input, weight=weight)
        w = weight.data if isinstance(weight, Tensor) else xp.asarray(weight)
        if tuple(w.shape) != (c,):
            raise ValueError(f"nll_loss: weight has shape {tuple(w.shape)}, expected ({c},)")
    return NLLLossFunction.apply(input, target=t.astype(np.int64, copy=False), weight=w,
                         ignore_index=int(ignore_index), reduction=reduction)


def cross_entropy(input, target, weight=None, ignore_index=-100, reduction="mean",
                  label_smoothing=0.0):
    """Softmax cross-entropy of ``input`` logits (N, C) or (N, C, d1, ...) against integer
    class indices ``target`` (N,) or (N, d1, ...): ``nll_loss(log_softmax(input, 1), target)``,
    with torch's ``weight`` (per class), ``ignore_index``, ``reduction`` and
    ``label_smoothing`` in [0, 1] (formula in the module docstring). Stable for logits of any
    magnitude.

    ``target`` may also hold class *probabilities*: a floating Tensor/array of the input's shape
    (torch's second form). Then ``loss_n = -sum_c w[c] * q_nc * log_softmax(x_n)[c]`` with
    ``q = (1 - label_smoothing) * target + label_smoothing / C``; "mean" divides by the number
    of samples (N times the spatial size; the weights are not in the denominator, as torch);
    ``ignore_index`` does not apply; the loss is differentiable in the target too."""
    e = _check_smoothing(label_smoothing)
    t = target.data if isinstance(target, Tensor) else target
    if getattr(t, "dtype", None) is not None and np.dtype(t.dtype).kind == "f" \
            and isinstance(input, Tensor) and tuple(t.shape) == input.shape:
        return _cross_entropy_probs(input, target, weight, reduction, e)
    t = _check_target("cross_entropy", input, target)
    _check_classes("cross_entropy", get_array_module(input.data).asarray(t), input.shape[1],
                   ignore_index, input.shape)
    logp = log_softmax(input, 1)
    nll = nll_loss(logp, target, weight=weight, ignore_index=ignore_index, reduction=reduction)
    if e == 0.0:
        return nll
    xp = get_array_module(logp.data)
    c = input.shape[1]
    t = xp.asarray(target.data if isinstance(target, Tensor) else target)
    keep = (t != ignore_index).astype(logp.dtype)
    if weight is not None:
        w = xp.asarray(weight.data if isinstance(weight, Tensor) else weight).astype(logp.dtype)
        wshape = (1, c) + (1,) * (input.ndim - 2)
        smooth = -ops.sum(logp * Tensor(w.reshape(wshape)), 1)
        denom = (w[xp.where(t != ignore_index, t, 0)] * keep).sum()
    else:
        smooth = -ops.sum(logp, 1)
        denom = keep.sum()
    smooth = smooth * Tensor(keep)
    if reduction == "mean":
        smooth = ops.sum(smooth) / Tensor(xp.asarray(denom, dtype=logp.dtype))
    elif reduction == "sum":
        smooth = ops.sum(smooth)
    return nll * (1.0 - e) + smooth * (e / c)


def _cross_entropy_probs(input, target, weight, reduction, e):
    _check_reduction("cross_entropy", reduction)
    if input.ndim < 2:
        raise ValueError(f"cross_entropy: expected input (N, C) or (N, C, d1, ...), got shape "
                         f"{input.shape}")
    c = input.shape[1]
    q = target if isinstance(target, Tensor) else Tensor(target, device=input.device)
    if q.dtype != input.dtype:
        q = q.to(dtype=input.dtype)
    if e != 0.0:
        q = q * (1.0 - e) + e / c
    prod = log_softmax(input, 1) * q
    if weight is not None:
        xp = get_array_module(input.data)
        w = xp.asarray(weight.data if isinstance(weight, Tensor) else weight)
        if tuple(w.shape) != (c,):
            raise ValueError(f"cross_entropy: weight has shape {tuple(w.shape)}, expected ({c},)")
        prod = prod * Tensor(w.astype(input.dtype).reshape((1, c) + (1,) * (input.ndim - 2)))
    losses = -ops.sum(prod, 1)
    if reduction == "mean":
        return ops.sum(losses) / float(max(losses.data.size, 1))
    return ops.sum(losses) if reduction == "sum" else losses


def _check_smoothing(e):
    if isinstance(e, bool) or not isinstance(e, numbers.Real) or not 0.0 <= float(e) <= 1.0:
        raise ValueError(f"cross_entropy: label_smoothing must be a number in [0, 1], got {e!r}")
    return float(e)


def _check_reduction(name, reduction):
    if reduction not in REDUCTIONS:
        raise ValueError(f"{name}: {reduction!r} is not a valid reduction: 'mean', 'sum' or "
                         "'none'")


def _reduce(loss, reduction):
    if reduction == "mean":
        return ops.mean(loss)
    if reduction == "sum":
        return ops.sum(loss)
    return loss


def _pair_args(name, input, target):
    """Check ``input``/``target`` of a pointwise loss: Tensors (an array target is wrapped),
    same shape, same device, floating input."""
    if not isinstance(input, Tensor):
        raise TypeError(f"{name}: input must be a minidl Tensor, got {type(input).__name__}")
    if not isinstance(target, Tensor):
        if not hasattr(target, "shape"):
            raise TypeError(f"{name}: target must be a Tensor (or array) of the input's shape "
                            f"{input.shape}, got {type(target).__name__}")
        target = Tensor(target, device=input.device)
    if input.shape != target.shape:
        raise ValueError(f"{name}: target has shape {target.shape}, input {input.shape}; they "
                         "must be equal (torch would broadcast them with a warning)")
    if input.dtype.kind != "f":
        raise TypeError(f"{name}: input must be floating point, got {input.dtype} (shape "
                        f"{input.shape})")
    if target.dtype != input.dtype:
        target = target.to(dtype=input.dtype)
    return input, target


def _weight_array(name, w, input, argname="weight"):
    """``w`` (Tensor, array or None) as an array of the input's dtype that broadcasts to it."""
    if w is None:
        return None
    xp = get_array_module(input.data)
    arr = w.data if isinstance(w, Tensor) else xp.asarray(w)
    try:
        np.broadcast_shapes(tuple(arr.shape), input.shape)
    except ValueError:
        raise ValueError(f"{name}: {argname} of shape {tuple(arr.shape)} does not broadcast to "
                         f"the input's shape {input.shape}") from None
    return xp.asarray(arr).astype(input.dtype)


class MSELossFunction(Function):
    """(x - y)^2, elementwise."""

    def forward(self, x, y):
        d = x - y
        self.save_for_backward(d)
        return d * d

    def backward(self, g):
        (d,) = self.saved_arrays
        gx = 2 * d * g
        return gx, -gx


class L1LossFunction(Function):
    """|x - y|, elementwise (the gradient at 0 is 0, as torch's sign)."""

    def forward(self, x, y):
        d = x - y
        self.save_for_backward(d)
        return get_array_module(d).abs(d)

    def backward(self, g):
        (d,) = self.saved_arrays
        gx = get_array_module(d).sign(d) * g
        return gx, -gx


class SmoothL1LossFunction(Function):
    """0.5 d^2 / beta where |d| < beta, |d| - 0.5 beta elsewhere (beta = 0: |d|)."""

    def forward(self, x, y, beta):
        xp = get_array_module(x)
        d = x - y
        self.beta = beta
        self.save_for_backward(d)
        ad = xp.abs(d)
        if beta == 0:
            return ad
        return xp.where(ad < beta, 0.5 * d * d / beta, ad - 0.5 * beta)

    def backward(self, g):
        (d,) = self.saved_arrays
        xp = get_array_module(d)
        if self.beta == 0:
            gx = xp.sign(d) * g
        else:
            gx = xp.where(xp.abs(d) < self.beta, d / self.beta, xp.sign(d)) * g
        return gx, -gx


class BCELossFunction(Function):
    """-w (y log x + (1 - y) log(1 - x)), each log clamped at -100 as torch does."""

    def forward(self, x, y, weight):
        xp = get_array_module(x)
        self.save_for_backward(x, y)
        self.weight = weight
        with np.errstate(divide="ignore"):
            lx = xp.maximum(xp.log(x), -100.0)
            l1x = xp.maximum(xp.log1p(-x), -100.0)
        loss = -(y * lx + (1 - y) * l1x)
        return loss if weight is None else loss * weight

    def backward(self, g):
        x, y = self.saved_arrays
        xp = get_array_module(x)
        w = g if self.weight is None else g * self.weight
        gx = w * (x - y) / xp.maximum((1 - x) * x, 1e-12)
        gy = None
        if self.needs_input_grad[1]:
            with np.errstate(divide="ignore"):
                gy = w * (xp.log1p(-x) - xp.log(x))  # -logit(x), as torch
        return gx, gy


class BCEWithLogitsLossFunction(Function):
    """w ((1 - y) x + l * softplus(-x)), l = 1 + (pos_weight - 1) y; softplus(-x) computed as
    log1p(exp(-|x|)) + max(-x, 0), stable for any x."""

    def forward(self, x, y, weight, pos_weight):
        xp = get_array_module(x)
        self.save_for_backward(x, y)
        self.weight, self.pos_weight = weight, pos_weight
        sp = xp.log1p(xp.exp(-xp.abs(x))) + xp.maximum(-x, 0)
        lw = 1 if pos_weight is None else 1 + (pos_weight - 1) * y
        loss = (1 - y) * x + lw * sp
        return loss if weight is None else loss * weight

    def backward(self, g):
        x, y = self.saved_arrays
        xp = get_array_module(x)
        w = g if self.weight is None else g * self.weight
        sig_neg = 0.5 * (1 - xp.tanh(0.5 * x))  # sigmoid(-x), stable
        if self.pos_weight is None:
            gx = w * ((1 - y) - sig_neg)
        else:
            gx = w * ((1 - y) - (1 + (self.pos_weight - 1) * y) * sig_neg)
        gy = None
        if self.needs_input_grad[1]:
            sp = xp.log1p(xp.exp(-xp.abs(x))) + xp.maximum(-x, 0)
            gy = w * (-x if self.pos_weight is None else -x + (self.pos_weight - 1) * sp)
        return gx, gy


def mse_loss(input, target, reduction="mean"):
    """Mean squared error ``(input - target)^2``, reduced ("mean", "sum" or "none"); input and
    target of the same shape, both differentiable."""
    _check_reduction("mse_loss", reduction)
    x, y = _pair_args("mse_loss", input, target)
    return _reduce(MSELossFunction.apply(x, y), reduction)


def l1_loss(input, target, reduction="mean"):
    """Mean absolute error ``|input - target|``, reduced ("mean", "sum" or "none")."""
    _check_reduction("l1_loss", reduction)
    x, y = _pair_args("l1_loss", input, target)
    return _reduce(L1LossFunction.apply(x, y), reduction)


def smooth_l1_loss(input, target, reduction="mean", beta=1.0):
    """Huber-like loss of Fast R-CNN: quadratic ``0.5 d^2 / beta`` for ``|d| < beta``, linear
    ``|d| - 0.5 beta`` beyond (``beta = 0`` is the L1 loss); torch's arguments."""
    _check_reduction("smooth_l1_loss", reduction)
    if isinstance(beta, bool) or not isinstance(beta, numbers.Real) or not float(beta) >= 0:
        raise ValueError(f"smooth_l1_loss: beta must be a number >= 0, got {beta!r}")
    x, y = _pair_args("smooth_l1_loss", input, target)
    return _reduce(SmoothL1LossFunction.apply(x, y, beta=float(beta)), reduction)


def binary_cross_entropy(input, target, weight=None, reduction="mean"):
    """Binary cross-entropy of probabilities ``input`` in [0, 1] against ``target`` (same
    shape; 0/1 labels or probabilities): ``-w (y log x + (1-y) log(1-x))``, each log clamped at
    -100 as torch does; ``weight`` broadcasts to the input. Inputs outside [0, 1] raise."""
    _check_reduction("binary_cross_entropy", reduction)
    x, y = _pair_args("binary_cross_entropy", input, target)
    xp = get_array_module(x.data)
    if bool(((x.data < 0) | (x.data > 1) | xp.isnan(x.data)).any()):
        raise ValueError("binary_cross_entropy: all elements of input must be in [0, 1] "
                         "(probabilities; for logits use binary_cross_entropy_with_logits), "
                         f"input shape {x.shape}")
    w = _weight_array("binary_cross_entropy", weight, x)
    return _reduce(BCELossFunction.apply(x, y, weight=w), reduction)


def binary_cross_entropy_with_logits(input, target, weight=None, reduction="mean",
                                     pos_weight=None):
    """``binary_cross_entropy(sigmoid(input), target)`` computed stably from the logits
    (no clamping needed). ``weight`` broadcasts to the input; ``pos_weight`` multiplies the
    positive term (broadcast along the last axis, e.g. one value per class), as torch."""
    _check_reduction("binary_cross_entropy_with_logits", reduction)
    x, y = _pair_args("binary_cross_entropy_with_logits", input, target)
    w = _weight_array("binary_cross_entropy_with_logits", weight, x)
    pw = _weight_array("binary_cross_entropy_with_logits", pos_weight, x, "pos_weight")
    return _reduce(BCEWithLogitsLossFunction.apply(x, y, weight=w, pos_weight=pw), reduction)
