"""Adam and AdamW, exactly as ``torch.optim.Adam`` / ``torch.optim.AdamW`` compute them.

With g the gradient, w the weight, t the step count (1, 2, ...), one ``step()`` does, per
parameter::

    g = -g                                   if maximize
    w = w * (1 - lr * wd)                    AdamW (decoupled weight decay), or
    g = g + wd * w                           Adam (L2 penalty in the gradient)
    m = m + (1 - beta1) * (g - m)            (first moment, torch's lerp)
    v = beta2 * v + (1 - beta2) * g * g      (second moment)
    v_max = max(v_max, v)                    if amsgrad (and v_max is used below instead of v)
    w = w - lr / (1 - beta1**t) * m / (sqrt(v) / sqrt(1 - beta2**t) + eps)

The per-parameter state is torch's: ``step`` (a 0-d float32 array on the CPU), ``exp_avg``,
``exp_avg_sq`` and, with amsgrad, ``max_exp_avg_sq`` (arrays on the parameter's device).
"""

from minidl import backend
from minidl.optim.optimizer import Optimizer, apply_update, check_number


def check_betas(owner, betas):
    """``betas`` must be a pair of numbers in [0, 1); returns it as a tuple."""
    if isinstance(betas, (str, bytes)) or not hasattr(betas, "__len__") or len(betas) != 2:
        raise TypeError(f"{owner}: betas must be a pair (beta1, beta2), got {betas!r}")
    for i, b in enumerate(betas):
        check_number(owner, f"betas[{i}]", b, 0.0, 1.0, high_open=True)
    return tuple(betas)


class Adam(Optimizer):
    """``Adam(params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, amsgrad=False, *,
    maximize=False, decoupled_weight_decay=False)`` — torch's arguments and defaults.

    ``decoupled_weight_decay=True`` is AdamW. ``params`` as for :class:`~minidl.optim.SGD`
    (Parameters or param-group dicts). The update is in the module docstring; every updated
    parameter's ``_version`` is bumped.
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0,
                 amsgrad=False, *, maximize=False, decoupled_weight_decay=False):
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                        maximize=maximize, decoupled_weight_decay=decoupled_weight_decay)
        super().__init__(params, defaults)

    def _check_group(self, g):
        name = type(self).__name__
        check_number(name, "learning rate (lr)", g["lr"])
        g["betas"] = check_betas(name, g["betas"])
        check_number(name, "eps", g["eps"])
        check_number(name, "weight_decay", g["weight_decay"])

    def step(self, closure=None):
        """One update of every parameter that has a gradient; ``closure`` (called with grad
        enabled first, its value returned) as in PyTorch."""
        loss = self._call_closure(closure)
        for g in self.param_groups:
            lr, (beta1, beta2), eps, wd = g["lr"], g["betas"], g["eps"], g["weight_decay"]
            for p, grad in self._gradients(g):
                st = self.state.setdefault(p, {})
                w = p.data
                xp = backend.get_array_module(w)
                if "exp_avg" not in st:
                    self._init_state(st, w, "exp_avg", "exp_avg_sq")
                if g["amsgrad"] and "max_exp_avg_sq" not in st:
                    st["max_exp_avg_sq"] = xp.zeros_like(w)
                t = self._count_step(st)
                if wd != 0:
                    if g["decoupled_weight_decay"]:
                        w *= 1 - lr * wd
                    else:
                        grad = grad + wd * w
                m = self._buffer(p, "exp_avg")
                v = self._buffer(p, "exp_avg_sq")
                m += (1 - beta1) * (grad - m)
                v *= beta2
                v += (1 - beta2) * grad * grad
                if g["amsgrad"]:
                    vmax = self._buffer(p, "max_exp_avg_sq")
                    xp.maximum(vmax, v, out=vmax)
                    v = vmax
                step_size = lr / (1 - beta1 ** t)
                denom = xp.sqrt(v) / (1 - beta2 ** t) ** 0.5 + eps
                apply_update(p, -step_size * (m / denom))
        return loss


class AdamW(Adam):
    """``AdamW(params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2,
    amsgrad=False, *, maximize=False)``: Adam with decoupled weight decay
    (``w *= 1 - lr * weight_decay`` before the Adam step), torch's defaults."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2,
                 amsgrad=False, *, maximize=False):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                         amsgrad=amsgrad, maximize=maximize, decoupled_weight_decay=True)
