"""Softmax, log-softmax and the classification losses (AlexNet's 1000-way softmax).

Numerically stable for any logits (even ~1e4) by subtracting the maximum first:

    log_softmax(x)_i = x_i - m - log(sum_j exp(x_j - m)),   m = max_j x_j
    softmax(x)_i     = exp(log_softmax(x)_i)

Backward, with y = softmax(x) and g the incoming gradient:

    softmax:      dx = y * (g - sum_j g_j y_j)
    log_softmax:  dx = g - y * sum_j g_j

``cross_entropy(logits, target) = nll_loss(log_softmax(logits, 1), target)``:
``loss_n = -w[t_n] * log_softmax(x_n)[t_n]``, averaged over the non-ignored targets (weighted
mean when ``weight`` is given), as PyTorch. Logits (N, C) or (N, C, d1, ...), targets int class
indices of shape (N,) or (N, d1, ...).
"""
import numpy as np

from minidl.functional._utils import xp_of
from minidl.tensor import Function, Tensor


class LogSoftmax(Function):
    def forward(self, x, dim):
        xp = xp_of(x)
        self.dim = dim
        z = x - x.max(axis=dim, keepdims=True)
        y = z - xp.log(xp.exp(z).sum(axis=dim, keepdims=True))
        self.y = y
        return y

    def backward(self, gy):
        xp = xp_of(gy)
        return gy - xp.exp(self.y) * gy.sum(axis=self.dim, keepdims=True)


class Softmax(Function):
    def forward(self, x, dim):
        xp = xp_of(x)
        self.dim = dim
        e = xp.exp(x - x.max(axis=dim, keepdims=True))
        y = e / e.sum(axis=dim, keepdims=True)
        self.y = y
        return y

    def backward(self, gy):
        y = self.y
        return y * (gy - (gy * y).sum(axis=self.dim, keepdims=True))


def _dim(x, dim, name):
    from minidl.ops import check_dim
    return check_dim(dim, x.ndim, name, x.shape)


def softmax(x, dim=1):
    """``exp(x_i - max) / sum_j exp(x_j - max)`` along ``dim`` (stable for huge logits)."""
    return Softmax.apply(x, dim=_dim(x, dim, "softmax"))


def log_softmax(x, dim=1):
    """``x_i - max - log sum_j exp(x_j - max)`` along ``dim`` (stable for huge logits)."""
    return LogSoftmax.apply(x, dim=_dim(x, dim, "log_softmax"))


class NLLLoss(Function):
    """Picks -w[t] * logp[t] per sample; the backward scatters -w[t]/denominator back."""

    def forward(self, logp, target, weight, ignore_index, reduction):
        xp = xp_of(logp)
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
        self.shape, self.tc, self.wt, self.reduction = logp.shape, tc, wt, reduction
        if reduction == "none":
            return losses.reshape(target.shape)
        if reduction == "sum":
            return losses.sum()
        self.denom = wt.sum()
        return losses.sum() / self.denom  # NaN when every target is ignored, as PyTorch

    def backward(self, gy):
        xp = xp_of(gy)
        n, c = self.shape[0], self.shape[1]
        rest = self.shape[2:]
        m = self.tc.shape[0]
        if self.reduction == "none":
            coef = -self.wt * gy.reshape(-1)
        elif self.reduction == "sum":
            coef = -self.wt * gy
        else:
            coef = -self.wt * (gy / self.denom)
        g = xp.zeros((m, c), dtype=gy.dtype)
        g[xp.arange(m), self.tc] = coef
        g = g.reshape((n,) + rest + (c,))
        return xp.ascontiguousarray(xp.moveaxis(g, -1, 1))


def _check_target(name, logits, target):
    if logits.ndim < 2:
        raise ValueError(f"{name}: expected input (N, C) or (N, C, d1, ...), got shape "
                         f"{logits.shape}")
    expect = (logits.shape[0],) + tuple(logits.shape[2:])
    t = target.data if isinstance(target, Tensor) else target
    if tuple(t.shape) != expect:
        raise ValueError(f"{name}: target has shape {tuple(t.shape)}, expected {expect} for "
                         f"input of shape {logits.shape} (class indices, the class axis removed)")
    if t.dtype.kind not in "iu":
        raise TypeError(f"{name}: target must hold integer class indices, got dtype {t.dtype} "
                        f"(shape {tuple(t.shape)})")
    return t


def nll_loss(input, target, weight=None, ignore_index=-100, reduction="mean"):
    """Negative log-likelihood of log-probabilities ``input`` (N, C, ...) at the integer
    ``target`` classes (N, ...): ``-weight[t] * input[n, t]``, reduced by "mean" (weighted mean
    over non-ignored targets), "sum" or "none"."""
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"{reduction!r} is not a valid reduction: 'mean', 'sum' or 'none'")
    t = _check_target("nll_loss", input, target)
    xp = xp_of(input.data)
    c = input.shape[1]
    t = xp.asarray(t)
    bad = (t != ignore_index) & ((t < 0) | (t >= c))
    if bool(bad.any()):
        raise IndexError(f"nll_loss: target values must be in [0, {c}) (or ignore_index "
                         f"{ignore_index}); got {int(t[bad].reshape(-1)[0])} (target shape "
                         f"{tuple(t.shape)}, input shape {input.shape})")
    w = None
    if weight is not None:
        w = weight.data if isinstance(weight, Tensor) else xp.asarray(weight)
        if tuple(w.shape) != (c,):
            raise ValueError(f"nll_loss: weight has shape {tuple(w.shape)}, expected ({c},)")
    return NLLLoss.apply(input, target=t.astype(np.int64, copy=False), weight=w,
                         ignore_index=int(ignore_index), reduction=reduction)


def cross_entropy(input, target, weight=None, ignore_index=-100, reduction="mean"):
    """Softmax cross-entropy of ``input`` logits (N, C) or (N, C, d1, ...) against integer
    class indices ``target`` (N,) or (N, d1, ...): ``nll_loss(log_softmax(input, 1), target)``.
    Stable for logits of any magnitude."""
    _check_target("cross_entropy", input, target)
    return nll_loss(log_softmax(input, 1), target, weight=weight, ignore_index=ignore_index,
                    reduction=reduction)
