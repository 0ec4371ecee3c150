"""The :class:`Optimizer` base class: parameter groups, ``zero_grad``, state save/restore.

An optimizer holds ``param_groups``, a list of dicts, each with a ``"params"`` list of
Parameters and that group's hyperparameters (``lr``, ``momentum``, ...; the defaults fill in
what a group does not set), and ``state``, a dict keyed by Parameter (Tensors hash by identity)
holding per-parameter arrays such as the momentum buffer.

``state_dict()`` follows PyTorch's layout: parameters are named by their index in the order of
the groups (0, 1, 2, ... across all groups), so a state dict can be loaded into a fresh
optimizer built over a fresh model with the same architecture::

    {"state": {0: {"momentum_buffer": ndarray}, ...},
     "param_groups": [{"lr": 0.1, ..., "params": [0, 1, 2]}, ...]}

Everything in it is a Python number, string, bool, None, list/dict of those, or an array, so
:func:`minidl.train.checkpoint.save_checkpoint` can store it as JSON plus ``.npy`` entries.
"""
import copy
import math
import numbers
import operator

import numpy as np

from minidl import backend
from minidl.tensor import Tensor, enable_grad


class _Required:
    def __repr__(self):
        return "<required>"


required = _Required()


def check_number(owner, name, value, low=0.0, high=None, low_open=False, high_open=False):
    """Check a hyperparameter: a real number (not a bool, not a string), not NaN, finite, in
    ``[low, high]`` (ends excluded with ``low_open`` / ``high_open``; ``None`` = unbounded).

    Raises TypeError or ValueError naming ``owner`` (e.g. "Adam") and the argument ``name``;
    returns ``value`` unchanged."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{owner}: {name} must be a real number, got {value!r} "
                        f"({type(value).__name__})")
    v = float(value)
    ok = math.isfinite(v)
    if ok and low is not None:
        ok = v > low if low_open else v >= low
    if ok and high is not None:
        ok = v < high if high_open else v <= high
    if not ok:
        lo = "unbounded" if low is None else f"{'(' if low_open else '['}{low:g}"
        hi = "unbounded" if high is None else f"{high:g}{')' if high_open else ']'}"
        if high is None:
            want = f"a finite number {'>' if low_open else '>='} {low:g}"
        elif low is None:
            want = f"a finite number {'<' if high_open else '<='} {high:g}"
        else:
            want = f"a number in {lo}, {hi}"
        raise ValueError(f"{owner}: invalid {name} {value!r} (expected {want})")
    return value


def check_index(owner, name, value, low=0):
    """An integer (``operator.index``: 3 and numpy ints, not 2.5, not "3", not True) >= ``low``;
    raises TypeError/ValueError naming ``owner`` and ``name``. Returns the int."""
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{owner}: {name} must be an integer, got {value!r}")
    try:
        v = operator.index(value)
    except TypeError:
        raise TypeError(f"{owner}: {name} must be an integer, got {value!r} "
                        f"({type(value).__name__})") from None
    if v < low:
        raise ValueError(f"{owner}: invalid {name} {value!r} (expected an integer >= {low})")
    return v


class Optimizer:
    """Base class. Subclasses implement :meth:`step` and call ``super().__init__(params,
    defaults)`` with a dict of their default hyperparameters."""

    def __init__(self, params, defaults):
        self.defaults = dict(defaults)
        self.param_groups = []
        self.state = {}
        if isinstance(params, Tensor):
            raise TypeError("params must be an iterable of Parameters or of dicts (param groups), "
                            "not a single Tensor; wrap it in a list")
        params = list(params)
        if not params:
            raise ValueError(f"{type(self).__name__} got an empty parameter list")
        groups = params if isinstance(params[0], dict) else [{"params": params}]
        for g in groups:
            self.add_param_group(g)

    # -- groups ------------------------------------------------------------------------------
    def add_param_group(self, param_group):
        """Add a dict with ``"params"`` (and optional hyperparameters) as a new group.

        Missing hyperparameters take the optimizer's defaults; a parameter may be in one group
        only (the order of parameters is kept: it names them in ``state_dict``)."""
        if not isinstance(param_group, dict):
            raise TypeError(f"a param group must be a dict, got {type(param_group).__name__}")
        group = dict(param_group)
        params = group.get("params")
        if params is None:
            raise ValueError("a param group needs a 'params' entry")
        if isinstance(params, Tensor):
            params = [params]
        elif isinstance(params, (set, frozenset)):
            raise TypeError("a param group's params must be an ordered sequence, not a set "
                            "(the order names the parameters in state_dict)")
        params = list(params)
        for i, p in enumerate(params):
            if not isinstance(p, Tensor):
                raise TypeError(f"param group entry {i} is a {type(p).__name__}, expected a "
                                "Parameter (Tensor)")
        group["params"] = params
        for name, default in self.defaults.items():
            if default is required and name not in group:
                raise ValueError(f"param group does not set the required hyperparameter {name!r}")
            group.setdefault(name, default)
        seen = {id(p) for g in self.param_groups for p in g["params"]}
        if len({id(p) for p in params}) != len(params) or any(id(p) in seen for p in params):
            raise ValueError("some parameters appear in more than one param group (or twice in "
                             "one); each parameter must be in exactly one group")
        self._check_group(group)
        self.param_groups.append(group)

    def _check_group(self, group):
        """Subclasses validate a group's hyperparameters here."""

    def _params(self):
        for g in self.param_groups:
            yield from g["params"]

    # -- gradients ---------------------------------------------------------------------------
    def zero_grad(self, set_to_none=True):
        """Reset every parameter's gradient (gradients accumulate): ``.grad = None``
        (``set_to_none=True``, the default, as torch), or zero the existing ``.grad`` arrays in
        place."""
        for p in self._params():
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad.data[...] = 0
                p.grad._version += 1

    def step(self, closure=None):  # pragma: no cover - abstract
        raise NotImplementedError(f"{type(self).__name__} does not implement step()")

    # -- state -------------------------------------------------------------------------------
    def state_dict(self):
        """``{"state": {index: {name: array or number}}, "param_groups": [...]}`` (copies).

        Parameters are replaced by their index in group order, as in PyTorch."""
        index = {}
        groups = []
        for g in self.param_groups:
            packed = {k: copy.deepcopy(v) for k, v in g.items() if k != "params"}
            ids = []
            for p in g["params"]:
                index.setdefault(id(p), len(index))
                ids.append(index[id(p)])
            packed["params"] = ids
            groups.append(packed)
        state = {}
        for p in self._params():
            if p in self.state:
                state[index[id(p)]] = {k: (v.copy() if hasattr(v, "copy") else v)
                                       for k, v in self.state[p].items()}
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict):
        """Restore hyperparameters and per-parameter state saved by :meth:`state_dict`.

        The groups must have the same sizes as when saved. Arrays are copied onto each
        parameter's device and cast to its dtype. (Integer keys that went through JSON as
        strings are accepted.)"""
        saved_groups = state_dict["param_groups"]
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(f"loaded state dict has {len(saved_groups)} param groups, this "
                             f"optimizer has {len(self.param_groups)}")
        for i, (sg, g) in enumerate(zip(saved_groups, self.param_groups)):
            if len(sg["params"]) != len(g["params"]):
                raise ValueError(f"param group {i}: the loaded state dict has "
                                 f"{len(sg['params'])} parameters, this optimizer has "
                                 f"{len(g['params'])}")
        by_index = {}
        for sg, g in zip(saved_groups, self.param_groups):
            for idx, p in zip(sg["params"], g["params"]):
                by_index[int(idx)] = p
        new_state = {}
        for idx, st in state_dict["state"].items():
            p = by_index.get(int(idx))
            if p is None:
                raise ValueError(f"loaded optimizer state refers to parameter {idx}, which no "
                                 "param group has")
            entry = {}
            for k, v in st.items():
                if isinstance(v, Tensor):  # e.g. from minidl.load of a torch checkpoint
                    v = v.data
                if k == "step":  # a count, kept on the CPU as float32 (as torch keeps it)
                    v = np.array(float(backend.to_numpy(v) if hasattr(v, "shape") else v),
                                 dtype=np.float32)
                elif hasattr(v, "shape") and hasattr(v, "dtype") and getattr(v, "ndim", 0) > 0:
                    if tuple(v.shape) != p.shape:
                        raise ValueError(f"optimizer state {k!r} of parameter {idx} has shape "
                                         f"{tuple(v.shape)}, the parameter {p.shape}")
                    v = backend.to_device(v, p.device).astype(p.dtype, copy=True)
                entry[k] = v
            new_state[p] = entry
        new_groups = []
        for sg, g in zip(saved_groups, self.param_groups):
            ng = {k: (copy.deepcopy(v) if k != "params" else g["params"]) for k, v in sg.items()}
            for k, v in g.items():
                ng.setdefault(k, v)
            self._check_group(ng)  # all checks before anything changes
            new_groups.append(ng)
        self.state = new_state
        for ng, g in zip(new_groups, self.param_groups):
            g.clear()
            g.update(ng)

    # -- helpers for subclasses ----------------------------------------------------------------
    @staticmethod
    def _call_closure(closure):
        """``closure()`` with grad enabled, as PyTorch's ``step(closure)`` does; None without."""
        if closure is None:
            return None
        with enable_grad():
            return closure()

    def _gradients(self, group):
        """``(p, grad)`` for each parameter of ``group`` that has a gradient, the gradient's
        sign flipped under ``maximize``: the first lines of every update rule."""
        for p in group["params"]:
            grad = self._grad(p)
            if grad is None:
                continue
            if group.get("maximize", False):
                grad = -grad
            yield p, grad

    @staticmethod
    def _init_state(st, w, *buffers):
        """A parameter's first step: torch's 0-d float32 ``step`` and zero ``buffers`` like w."""
        xp = backend.get_array_module(w)
        st["step"] = np.array(0.0, dtype=np.float32)
        for name in buffers:
            st[name] = xp.zeros_like(w)

    def _grad(self, p):
        """``p.grad`` as an array (None when there is none), checked against ``p``."""
        if p.grad is None:
            return None
        grad = p.grad.data
        if backend.device_of(grad) != p.device:
            raise backend.DeviceError(f"{type(self).__name__}: a parameter of shape {p.shape} "
                                      f"is on {p.device} but its gradient on "
                                      f"{backend.device_of(grad)}")
        if tuple(grad.shape) != p.shape:
            raise ValueError(f"{type(self).__name__}: a parameter of shape {p.shape} has a "
                             f"gradient of shape {tuple(grad.shape)}")
        return grad

    def _buffer(self, p, name):
        """``self.state[p][name]`` on the parameter's device (moved there if the model moved
        after the optimizer was built), or None."""
        st = self.state.get(p)
        if st is None:
            return None
        buf = st.get(name)
        if buf is not None and getattr(buf, "ndim", 0) > 0 and backend.device_of(buf) != p.device:
            buf = backend.to_device(buf, p.device)
            st[name] = buf
        return buf

    @staticmethod
    def _count_step(st):
        """Add one to ``st["step"]`` (a 0-d float32 array, as torch stores it); return the new
        count as a Python float."""
        step = float(st.get("step", 0.0)) + 1.0
        st["step"] = np.array(step, dtype=np.float32)
        return step

    def __repr__(self):
        lines = [f"{type(self).__name__} ("]
        for i, g in enumerate(self.param_groups):
            lines.append(f"Parameter Group {i}")
            for k in sorted(g):
                if k != "params":
                    lines.append(f"    {k}: {g[k]}")
        lines.append(")")
        return "\n".join(lines)


def apply_update(p, delta=None):
    """``p.data += delta`` in place (a fresh array only if the data cannot be written), and
    ``p._version += 1`` (once per update) so that a backward through a graph that saved the old
    value raises. With ``delta=None`` only the version is bumped (the caller already wrote
    ``p.data``)."""
    if delta is not None:
        arr = p.data
        try:
            arr += delta  # on the array itself: not through the Tensor's .data setter
        except ValueError:  # a read-only NumPy array (e.g. a broadcast view): replace it
            before = p._version
            p.data = arr + delta
            if p._version != before:  # the .data setter counted this write already
                return
    p._version += 1
