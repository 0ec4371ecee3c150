"""Adadelta (Zeiler 2012), exactly as ``torch.optim.Adadelta`` computes it — the optimizer of
PyTorch's MNIST example.

With g the gradient and w the weight, one ``step()`` does, per parameter::

    g = -g                                        if maximize
    g = g + wd * w                                (weight decay as an L2 term)
    s = rho * s + (1 - rho) * g * g               (square_avg)
    d = sqrt(u + eps) / sqrt(s + eps) * g         (u: acc_delta, before this step)
    u = rho * u + (1 - rho) * d * d
    w = w - lr * d

State per parameter: ``step`` (0-d float32), ``square_avg``, ``acc_delta``, as torch keeps them.
"""

from minidl import backend
from minidl.optim.optimizer import Optimizer, apply_update, check_number


class Adadelta(Optimizer):
    """``Adadelta(params, lr=1.0, rho=0.9, eps=1e-6, weight_decay=0, *, maximize=False)`` —
    torch's arguments and defaults (formulas in the module docstring)."""

    def __init__(self, params, lr=1.0, rho=0.9, eps=1e-6, weight_decay=0, *, maximize=False):
        defaults = dict(lr=lr, rho=rho, eps=eps, weight_decay=weight_decay, maximize=maximize)
        super().__init__(params, defaults)

    def _check_group(self, g):
        check_number("Adadelta", "learning rate (lr)", g["lr"])
        check_number("Adadelta", "rho", g["rho"], 0.0, 1.0)
        check_number("Adadelta", "eps", g["eps"])
        check_number("Adadelta", "weight_decay", g["weight_decay"])

    def step(self, closure=None):
        """One update of every parameter that has a gradient (``closure`` as in PyTorch)."""
        loss = self._call_closure(closure)
        for g in self.param_groups:
            lr, rho, eps, wd = g["lr"], g["rho"], g["eps"], g["weight_decay"]
            for p, grad in self._gradients(g):
                st = self.state.setdefault(p, {})
                w = p.data
                xp = backend.get_array_module(w)
                if "square_avg" not in st:
                    self._init_state(st, w, "square_avg", "acc_delta")
                self._count_step(st)
                if wd != 0:
                    grad = grad + wd * w
                s = self._buffer(p, "square_avg")
                u = self._buffer(p, "acc_delta")
                s *= rho
                s += (1 - rho) * grad * grad
                delta = xp.sqrt(u + eps) / xp.sqrt(s + eps) * grad
                u *= rho
                u += (1 - rho) * delta * delta
                apply_update(p, -lr * delta)
        return loss
