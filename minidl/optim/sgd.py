"""Stochastic gradient descent with momentum, in PyTorch's form and in the AlexNet paper's form.

With g the gradient, w the weight, lr the learning rate, m the momentum, wd the weight decay and
d the dampening, one ``step()`` does, per parameter::

    style="torch" (PyTorch's exact SGD)          style="paper" (AlexNet, cuda-convnet)
    ---------------------------------------      ---------------------------------------
    g' = g + wd * w                              v = m * v - wd * lr * w - lr * g
    b  = g'                    (first step)      w = w + v
    b  = m * b + (1 - d) * g'  (later steps)     (v starts at 0)
    g' = g' + m * b   if nesterov else b
    w  = w - lr * g'

(with m = 0 the torch form is plain ``w -= lr * (g + wd * w)``, and no buffer is kept).

The two agree exactly in exact arithmetic while lr is constant and d = 0, nesterov off: the
paper's v is then ``-lr * b``. They differ after the learning rate changes: the torch buffer b
holds past *gradients* and is multiplied by the new rate, while the paper's v holds past
*updates* that already carry the old rate, so the old, larger steps fade out over ~1/(1-m)
iterations instead of shrinking at once. AlexNet was trained with the paper form
(lr 0.01, m 0.9, wd 0.0005); the ResNets with the torch/Caffe form. ``dampening`` and
``nesterov`` belong to the torch form only.

Updates are in place on each ``p.data`` array (NumPy or CuPy, through the array's own
operators), so Parameters keep their identity and their memory; momentum buffers live on the
parameter's device (moved there if the model was moved after the optimizer was built).
"""
from minidl import backend
from minidl.optim.optimizer import Optimizer, apply_update, check_number, required

STYLES = ("torch", "paper")


class SGD(Optimizer):
    """``SGD(params, lr, momentum=0, dampening=0, weight_decay=0, nesterov=False, style="torch",
    *, maximize=False)``

    ``maximize=True`` ascends (the gradient's sign flipped first), as torch's.

    ``params``: an iterable of Parameters, or of dicts (param groups) each with ``"params"`` and
    any of the hyperparameters above to override them for that group (e.g. the groups of
    :func:`minidl.optim.decay_groups`). The formulas are in the module docstring.
    """

    def __init__(self, params, lr=required, momentum=0, dampening=0, weight_decay=0,
                 nesterov=False, style="torch", *, maximize=False):
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening,
                        weight_decay=weight_decay, nesterov=nesterov, style=style,
                        maximize=maximize)
        super().__init__(params, defaults)

    def _check_group(self, g):
        check_number("SGD", "learning rate (lr)", g["lr"])
        check_number("SGD", "momentum", g["momentum"])
        check_number("SGD", "dampening", g["dampening"])
        check_number("SGD", "weight_decay", g["weight_decay"])
        m, d = g["momentum"], g["dampening"]
        if g["style"] not in STYLES:
            raise ValueError(f"SGD: style must be one of {STYLES}, got {g['style']!r}")
        if g["nesterov"] and (m <= 0 or d != 0):
            raise ValueError("SGD: nesterov momentum requires momentum > 0 and dampening = 0")
        if g["style"] == "paper" and (d != 0 or g["nesterov"]):
            raise ValueError("SGD: dampening and nesterov are options of style='torch'; the "
                             "paper form is v = m*v - wd*lr*w - lr*g, w += v")

    def step(self, closure=None):
        """One update of every parameter that has a gradient (parameters with ``.grad`` None
        are skipped). ``closure``, if given, is called (with grad enabled) first and its value
        returned, as in PyTorch."""
        loss = self._call_closure(closure)
        for g in self.param_groups:
            lr, m, d, wd = g["lr"], g["momentum"], g["dampening"], g["weight_decay"]
            for p, grad in self._gradients(g):
                if g["style"] == "paper":
                    self._paper_update(p, grad, lr, m, wd)
                else:
                    self._torch_update(p, grad, lr, m, d, wd, g["nesterov"])
        return loss

    def _torch_update(self, p, grad, lr, m, d, wd, nesterov):
        w = p.data
        if wd != 0:
            grad = grad + wd * w
        if m != 0:
            buf = self._buffer(p, "momentum_buffer")
            if buf is None:
                buf = grad.copy()
                self.state.setdefault(p, {})["momentum_buffer"] = buf
            else:
                buf *= m
                buf += (1 - d) * grad
            grad = grad + m * buf if nesterov else buf
        apply_update(p, -lr * grad)

    def _paper_update(self, p, grad, lr, m, wd):
        w = p.data
        v = self._buffer(p, "velocity")
        if v is None:
            xp = backend.get_array_module(w)
            v = xp.zeros_like(w)
            self.state.setdefault(p, {})["velocity"] = v
        v *= m
        if wd != 0:
            v -= (wd * lr) * w
        v -= lr * grad
        apply_update(p, v)

