"""RMSprop, exactly as ``torch.optim.RMSprop`` computes it.

With g the gradient and w the weight, one ``step()`` does, per parameter::

    g = -g                                   if maximize
    g = g + wd * w                           (weight decay as an L2 term)
    s = alpha * s + (1 - alpha) * g * g      (square_avg)
    a = a + (1 - alpha) * (g - a)            if centered (grad_avg), then s_hat = s - a * a
    d = sqrt(s_hat or s) + eps
    b = momentum * b + g / d;  w = w - lr * b     if momentum > 0 (momentum_buffer)
    w = w - lr * g / d                            otherwise

State per parameter: ``step`` (0-d float32), ``square_avg``, ``momentum_buffer`` (momentum > 0),
``grad_avg`` (centered), as torch keeps them.
"""

from minidl import backend
from minidl.optim.optimizer import Optimizer, apply_update, check_number


class RMSprop(Optimizer):
    """``RMSprop(params, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0, momentum=0,
    centered=False, maximize=False)`` — torch's arguments and defaults (formulas in the module
    docstring)."""

    def __init__(self, params, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0, momentum=0,
                 centered=False, maximize=False):
        defaults = dict(lr=lr, momentum=momentum, alpha=alpha, eps=eps, centered=centered,
                        weight_decay=weight_decay, maximize=maximize)
        super().__init__(params, defaults)

    def _check_group(self, g):
        check_number("RMSprop", "learning rate (lr)", g["lr"])
        check_number("RMSprop", "alpha", g["alpha"], 0.0, 1.0)
        check_number("RMSprop", "eps", g["eps"])
        check_number("RMSprop", "momentum", g["momentum"])
        check_number("RMSprop", "weight_decay", g["weight_decay"])

    def step(self, closure=None):
        """One update of every parameter that has a gradient (``closure`` as in PyTorch)."""
        loss = self._call_closure(closure)
        for g in self.param_groups:
            lr, alpha, eps = g["lr"], g["alpha"], g["eps"]
            wd, mom = g["weight_decay"], g["momentum"]
            for p, grad in self._gradients(g):
                st = self.state.setdefault(p, {})
                w = p.data
                xp = backend.get_array_module(w)
                if "square_avg" not in st:
                    self._init_state(st, w, "square_avg")
                if mom > 0 and "momentum_buffer" not in st:
                    st["momentum_buffer"] = xp.zeros_like(w)
                if g["centered"] and "grad_avg" not in st:
                    st["grad_avg"] = xp.zeros_like(w)
                self._count_step(st)
                if wd != 0:
                    grad = grad + wd * w
                s = self._buffer(p, "square_avg")
                s *= alpha
                s += (1 - alpha) * grad * grad
                if g["centered"]:
                    a = self._buffer(p, "grad_avg")
                    a += (1 - alpha) * (grad - a)
                    avg = xp.sqrt(s - a * a)
                else:
                    avg = xp.sqrt(s)
                avg += eps
                if mom > 0:
                    b = self._buffer(p, "momentum_buffer")
                    b *= mom
                    b += grad / avg
                    apply_update(p, -lr * b)
                else:
                    apply_update(p, -lr * (grad / avg))
        return loss
