"""The autograd engine: :class:`Tensor` and :class:`Function`.

A Tensor wraps an array (``numpy.ndarray`` on "cpu", ``cupy.ndarray`` on "cuda") in ``.data``.
Every differentiable operation is a :class:`Function` subclass with a ``forward`` and a
``backward`` on *raw arrays*, written side by side (see :mod:`minidl.ops`). Calling
``SomeFunction.apply(*tensors, **params)`` runs ``forward`` and, when gradients are being
recorded, keeps the Function instance as the output's ``_ctx``: it remembers its parent Tensors
and whatever its ``forward`` saved for ``backward`` (and nothing else).

``loss.backward()`` then walks the graph once in reverse topological order — iteratively, so a
1202-layer ResNet or a chain of 5000 ops needs no recursion — calling each Function's
``backward`` with the gradient of its output and handing the results to its parents. Gradients
of leaf tensors that require grad accumulate into ``.grad`` (in the leaf's dtype); the graph
(and the arrays it saved) is freed afterwards unless ``retain_graph=True``, and a later backward
that reaches a freed node raises instead of silently stopping there.

Wrong gradients are refused rather than computed: every Tensor has a ``_version`` counter that
in-place writers bump (the in-place methods, assignments to ``.data``, optimizer steps), the
engine records it for the Tensors whose arrays a Function saved, and backward raises when one
changed in between. In-place methods refuse leaves that require grad unless run under
``no_grad()``. Hooks (``Tensor.register_hook``, ``register_post_accumulate_grad_hook``) cost
nothing when none is registered.

The engine knows no particular op; broadcasting is undone in exactly one place,
:func:`unbroadcast`.
"""
import contextlib
import functools
import operator
import threading

import numpy as np

from minidl import backend

# ----------------------------------------------------------------------------------------------
# grad mode


class _GradMode(threading.local):
    enabled = True


_grad_mode = _GradMode()


def is_grad_enabled():
    """True when operations record the graph for backward."""
    return _grad_mode.enabled


class no_grad(contextlib.ContextDecorator):
    """Context manager / decorator: operations inside record no graph (evaluation, updates).

    >>> with minidl.no_grad():
    ...     y = model(x)          # y.requires_grad is False
    """

    def __enter__(self):
        self._prev = _grad_mode.enabled
        _grad_mode.enabled = False
        return self

    def __exit__(self, *exc):
        _grad_mode.enabled = self._prev
        return False


class enable_grad(contextlib.ContextDecorator):
    """Re-enables graph recording inside a ``no_grad`` block."""

    def __enter__(self):
        self._prev = _grad_mode.enabled
        _grad_mode.enabled = True
        return self

    def __exit__(self, *exc):
        _grad_mode.enabled = self._prev
        return False


# ----------------------------------------------------------------------------------------------
# helpers


def _is_array(x):
    cp = backend.cupy_module()
    return isinstance(x, np.ndarray) or (cp is not None and isinstance(x, cp.ndarray))


def _as_array(data, dtype=None):
    """Apply docs/design.md's dtype rule and return an array (NumPy unless it already is CuPy).

    Arrays keep their dtype (float64 stays float64, int64 stays int64); Python floats and lists
    of them become float32, Python ints int64, bools bool.
    """
    if isinstance(data, Tensor):
        data = data._data
    if _is_array(data):
        arr = data
    elif isinstance(data, np.generic):
        arr = np.asarray(data)
    else:
        if isinstance(data, (str, bytes)):
            raise TypeError(f"cannot make a Tensor from a {type(data).__name__} ({data!r:.40}); "
                            "expected an array, a number or a nested list of numbers")
        try:
            arr = np.asarray(data)
        except ValueError as e:  # ragged nested lists (NumPy >= 1.24)
            raise TypeError(f"cannot make a Tensor from a ragged nested {type(data).__name__} "
                            f"(its rows have different lengths): {e}") from None
        if arr.dtype == np.float64:
            arr = arr.astype(np.float32)
        elif arr.dtype.kind in "iu" and arr.dtype != np.int64:
            arr = arr.astype(np.int64)
    if arr.dtype.kind not in "biufc":
        what = {"O": "objects", "U": "strings", "S": "bytes", "V": "records",
                "M": "datetimes", "m": "timedeltas"}.get(arr.dtype.kind, str(arr.dtype))
        raise TypeError(f"cannot make a Tensor from {type(data).__name__} holding {what} "
                        f"(dtype {arr.dtype}); expected an array, a number or a nested list of "
                        "numbers of one shape")
    if dtype is not None:
        dtype = np.dtype(dtype)
        if arr.dtype != dtype:
            arr = arr.astype(dtype)
    return arr


def unbroadcast(grad, shape):
    """Sum ``grad`` down to ``shape``: the adjoint of NumPy broadcasting (the ONE place it is done).

    Leading axes added by broadcasting are summed away; axes that were 1 in ``shape`` are summed
    with keepdims.
    """
    shape = tuple(shape)
    if grad.shape == shape:
        return grad
    nlead = grad.ndim - len(shape)
    if nlead < 0:
        raise ValueError(f"cannot unbroadcast gradient of shape {grad.shape} to {shape}")
    if nlead:
        grad = grad.sum(axis=tuple(range(nlead)))
    axes = tuple(i for i, n in enumerate(shape) if n == 1 and grad.shape[i] != 1)
    if axes:
        grad = grad.sum(axis=axes, keepdims=True)
    if grad.shape != shape:  # e.g. a 0-d target
        grad = grad.reshape(shape)
    return grad


# ----------------------------------------------------------------------------------------------
# Function


class Function:
    """One differentiable operation: ``forward`` and ``backward`` on raw arrays.

    Subclasses implement

    * ``forward(self, *arrays, **params) -> array``: the input Tensors' ``.data`` come in
      positionally (``None`` stays ``None``, e.g. a missing bias); keyword arguments are
      non-differentiable parameters (stride, axis, ...). Arrays that backward needs are saved
      with ``self.save_for_backward(*arrays)`` and read back as ``self.saved_arrays``;
      non-array parameters (shapes, strides) are kept as plain attributes.
    * ``backward(self, grad_output) -> grad or tuple of grads``: one gradient (an array, or None)
      per positional input, each with that input's shape. ``self.needs_input_grad[i]`` says
      which are wanted, so unneeded work can be skipped.
    * optionally ``forward_cuda`` / ``backward_cuda`` with the same signatures: the GPU path
      (usually a handwritten kernel from :mod:`minidl.cuda.kernels`). The engine calls them
      instead of ``forward`` / ``backward`` when the inputs are CuPy arrays, so an op reads as
      its formula with its GPU path beside it (Chainer's ``forward_cpu``/``forward_gpu``).
      Without them, ``forward``/``backward`` serve both devices through ``xp``.

    ``Function.apply(*inputs, **params)`` runs it and links the graph.

    Saved arrays are checked: when an array given to ``save_for_backward`` is an input's
    ``.data`` (or a NumPy/CuPy view of the same memory) or the output itself, the engine records
    that Tensor's ``_version``; ``backward()`` raises if it changed in between (an in-place op,
    an optimizer step, an assignment to ``.data``). Arrays an op computes and saves itself
    (copies) need no check. After a backward without ``retain_graph=True`` the Function drops
    everything it held; reaching it again raises an error naming ``retain_graph=True``.

    Mixed dtypes: the generic ops of :mod:`minidl.ops` follow NumPy's promotion (a float32 and a
    float64 operand give float64; a Python number takes the tensor's dtype), and every gradient
    is cast to the dtype of the Tensor it flows into, so a leaf's ``.grad`` always has the
    leaf's dtype. The layer functions of :mod:`minidl.functional` (linear, conv, pooling,
    normalization, ...) do not promote: their floating inputs must share one dtype, and a
    mismatch raises a TypeError naming both dtypes and the argument (cast with
    ``.to(dtype=...)``), as ``conv2d`` does.
    """

    forward_cuda = None
    backward_cuda = None
    saved_arrays = ()
    _saved_versions = None   # ((Tensor, version), ...) for saved arrays that belong to inputs
    _saves_output = False    # a saved array is the output (checked against its node's _version)
    _freed = False           # set by backward() without retain_graph

    def save_for_backward(self, *arrays):
        """Keep ``arrays`` for backward (read back as ``self.saved_arrays``)."""
        self.saved_arrays = arrays

    def forward(self, *arrays, **params):  # pragma: no cover - abstract
        raise NotImplementedError(f"{type(self).__name__}.forward")

    def backward(self, grad_output):  # pragma: no cover - abstract
        raise NotImplementedError(f"{type(self).__name__} has no backward")

    def name(self):
        """The node's name as ``grad_fn`` prints it: ``Conv2dFunction`` -> ``Conv2dBackward``."""
        return _node_name(type(self))

    def _forward(self, device, arrays, params):
        """Run the device's forward (``forward_cuda`` for CuPy inputs when the op has one)."""
        self.device = device
        if device == "cuda" and self.forward_cuda is not None:
            return self.forward_cuda(*arrays, **params)
        return self.forward(*arrays, **params)

    def _backward(self, grad_output):
        """Run the device's backward (``backward_cuda`` for CuPy inputs when the op has one)."""
        if self.device == "cuda" and self.backward_cuda is not None:
            return self.backward_cuda(grad_output)
        return self.backward(grad_output)

    def _record_versions(self, inputs, out):
        """Remember the versions of the Tensors whose memory the saved arrays are."""
        recs = []
        for a in self.saved_arrays:
            if a is out:
                self._saves_output = True
                continue
            for t in inputs:  # the usual case: an input's own array, matched by identity
                if t is not None and t._data is a:
                    recs.append((t, t._version))
                    break
            else:
                if a is not None and hasattr(a, "shape"):  # a view of an input or the output?
                    r = _root(a)
                    if r is _root(out):
                        self._saves_output = True
                        continue
                    for t in inputs:
                        if t is not None and r is _root(t._data):
                            recs.append((t, t._version))
                            break
        if recs:
            self._saved_versions = tuple(recs)

    def _check_versions(self, node):
        """Raise (PyTorch's message shape) when a saved Tensor was changed in place."""
        bad = None
        if self._saves_output and node._version != 0:
            bad = (node, node._version, 0, "its output")
        elif self._saved_versions:
            for t, v in self._saved_versions:
                if t._version != v:
                    bad = (t, t._version, v, "an input")
                    break
        if bad is not None:
            t, now, then, what = bad
            raise RuntimeError(
                f"one of the variables needed for gradient computation has been modified by an "
                f"in-place operation: [{t.dtype} tensor of shape {list(t.shape)}], {what} of "
                f"{self.name()}, is at version {now}; expected version {then} instead. It was "
                "changed between the forward pass and backward() (an in-place op such as add_ "
                "or -=, an optimizer step, or an assignment to .data); run the forward again "
                "after the change, or change a .clone() of the tensor instead")

    @classmethod
    def apply(cls, *inputs, **params):
        fn = cls()
        tensors = [t for t in inputs if t is not None]
        for t in tensors:
            if not isinstance(t, Tensor):
                raise TypeError(f"{cls.__name__}: positional inputs must be Tensors or None, "
                                f"got {type(t).__name__}")
        device = tensors[0].device if tensors else "cpu"
        for t in tensors[1:]:
            if t.device != device:
                raise backend.DeviceError(
                    f"{cls.__name__}: inputs are on different devices "
                    f"({', '.join(f'{x.device} {x.shape}' for x in tensors)}); "
                    "move them with .to(device) first")
        out = fn._forward(device, [None if t is None else t._data for t in inputs], params)
        requires_grad = _grad_mode.enabled and any(t.requires_grad for t in tensors)
        result = Tensor._make(out, requires_grad)
        if requires_grad:
            fn.parents = inputs
            fn.needs_input_grad = tuple(t is not None and t.requires_grad for t in inputs)
            result._ctx = fn
            if fn.saved_arrays:
                fn._record_versions(inputs, out)
        return result


def _root(a):
    """The array that owns ``a``'s memory (NumPy and CuPy collapse chains of views)."""
    b = getattr(a, "base", None)
    return a if b is None else b


def _node_name(cls):
    name = cls.__name__
    if name.endswith("Function") and len(name) > len("Function"):
        name = name[:-len("Function")]
    return name + "Backward"


class RemovableHandle:
    """Returned by the ``register_*hook`` methods: ``handle.remove()`` unregisters the hook
    (also usable as a context manager, as PyTorch's ``RemovableHandle``)."""

    _next_id = 0

    def __init__(self, hooks_dict, hook):
        self._hooks = hooks_dict
        self.id = RemovableHandle._next_id
        RemovableHandle._next_id += 1
        hooks_dict[self.id] = hook

    def remove(self):
        self._hooks.pop(self.id, None)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.remove()
        return False


# ----------------------------------------------------------------------------------------------
# Tensor


class Tensor:
    """An n-dimensional array with automatic differentiation.

    ``Tensor(data, requires_grad=False, device=None, dtype=None)``

    * ``data``: an array (NumPy or CuPy; keeps its dtype), a number or a nested list (floats
      become float32, ints int64), or another Tensor (its data is shared).
    * ``requires_grad``: record operations on it so ``backward`` fills ``.grad``. Only floating
      tensors can require grad.
    * ``device``: None (the default) keeps the data where it is -- a NumPy array, number or list
      on "cpu", a CuPy array on "cuda"; "cpu" or "cuda" moves (copies) it there.

    Attributes: ``.data`` (the array), ``.grad`` (a Tensor or None), ``.shape``, ``.dtype``,
    ``.device``, ``.ndim``, ``.requires_grad``, ``.is_leaf``, ``.grad_fn``,
    ``._version`` (the in-place change counter, see :attr:`data`).

    In-place methods (``add_``, ``sub_``, ``mul_``, ``div_``, ``clamp_``, ``copy_``, ``fill_``,
    ``zero_`` and ``+=``, ``-=``, ``*=``, ``/=``) write into this Tensor's array, keep the object
    (a Parameter stays the same Parameter) and bump ``_version``. As in PyTorch they raise on a
    leaf that requires grad unless run under ``no_grad()``; minidl also refuses them on tensors
    inside a recorded graph (PyTorch rewrites the graph there): write ``y = y + x`` instead.
    """

    __array_priority__ = 1000  # so ndarray + Tensor defers to Tensor.__radd__
    # Bumped by every in-place change of the data (in-place ops, optimizer steps, assignments
    # to .data); backward compares it with the value recorded when an op saved the array.
    _version = 0
    _hooks = None            # {id: fn(grad) -> grad | None}, see register_hook
    _post_acc_hooks = None   # {id: fn(tensor)}, see register_post_accumulate_grad_hook

    def __init__(self, data, requires_grad=False, device=None, dtype=None):
        arr = _as_array(data, dtype)
        if device is not None:
            arr = backend.to_device(arr, device)
        self._data = arr
        self.grad = None
        self._ctx = None
        self._retain_grad = False
        self.requires_grad = False
        if requires_grad:
            self.requires_grad_(True)

    @classmethod
    def _make(cls, array, requires_grad=False):
        t = cls.__new__(cls)
        t._data = array
        t.grad = None
        t._ctx = None
        t._retain_grad = False
        t.requires_grad = requires_grad
        return t

    # -- properties ------------------------------------------------------------------------
    @property
    def data(self):
        """The array (``numpy.ndarray`` or ``cupy.ndarray``).

        Assigning to it (``x.data = arr``, and ``x.data -= 1``, which Python runs as an
        assignment) bumps ``x._version``, so a backward that needs the old values raises. Writes
        *into* the array (``x.data[...] = 0``, ``np.add(x.data, 1, out=x.data)``) go past the
        Tensor and are invisible to the version counter, as with PyTorch's ``.data``: use the
        in-place methods (``x.copy_``, ``x.fill_``, ``x.add_``, ...) under ``no_grad()`` instead.
        The counter belongs to this Tensor: views and ``.detach()`` share the memory but not
        the counter.
        """
        return self._data

    @data.setter
    def data(self, value):
        if isinstance(value, Tensor):
            value = value._data
        elif not _is_array(value):
            value = _as_array(value)
        self._data = value
        self._version += 1

    @property
    def shape(self):
        return tuple(self._data.shape)

    @property
    def dtype(self):
        return self._data.dtype

    @property
    def ndim(self):
        return self._data.ndim

    @property
    def device(self):
        return backend.device_of(self._data)

    @property
    def is_leaf(self):
        return self._ctx is None

    @property
    def grad_fn(self):
        """The Function that made this tensor (None for leaves); prints as ``<MulBackward>``."""
        return self._ctx

    @property
    def T(self):
        return self.transpose()

    def __len__(self):
        if self.ndim == 0:
            raise TypeError("len() of a 0-d tensor")
        return self.shape[0]

    def requires_grad_(self, flag=True):
        """Set ``requires_grad`` in place (only on leaves; only floating dtypes)."""
        if flag and self.dtype.kind not in "fc":
            raise TypeError(f"only floating-point tensors can require grad; this one is "
                            f"{self.dtype} with shape {self.shape}")
        if not flag and not self.is_leaf:
            raise RuntimeError("requires_grad can only be cleared on leaf tensors; use .detach()")
        self.requires_grad = bool(flag)
        return self

    def retain_grad(self):
        """Keep ``.grad`` of this non-leaf tensor after backward (leaves always keep it)."""
        self._retain_grad = True
        return self

    # -- hooks -----------------------------------------------------------------------------
    def register_hook(self, hook):
        """Call ``hook(grad)`` each time the gradient with respect to this tensor is computed.

        PyTorch's semantics: ``grad`` is a Tensor holding this backward pass's total gradient
        for this tensor; the hook may return a Tensor (or array) of the same shape that replaces
        it for the rest of the pass (what a leaf accumulates into ``.grad``, what a non-leaf
        passes on), or None to keep it. Hooks run in registration order, before accumulation.
        Returns a handle whose ``.remove()`` unregisters the hook.
        """
        if not self.requires_grad:
            raise RuntimeError(f"cannot register a hook on a tensor that does not require grad "
                               f"(shape {self.shape}, dtype {self.dtype})")
        if self._hooks is None:
            self._hooks = {}
        return RemovableHandle(self._hooks, hook)

    def register_post_accumulate_grad_hook(self, hook):
        """Call ``hook(tensor)`` after a backward pass accumulated into this leaf's ``.grad``.

        PyTorch 2.1's semantics: only on leaves that require grad; the hook reads (or changes)
        ``tensor.grad``; its return value is ignored. Returns a handle with ``.remove()``.
        """
        if not self.requires_grad:
            raise RuntimeError(f"cannot register a hook on a tensor that does not require grad "
                               f"(shape {self.shape}, dtype {self.dtype})")
        if self._ctx is not None:
            raise RuntimeError("post accumulate grad hooks cannot be registered on non-leaf "
                               f"tensors (this one comes from {self._ctx.name()})")
        if self._post_acc_hooks is None:
            self._post_acc_hooks = {}
        return RemovableHandle(self._post_acc_hooks, hook)

    # -- in-place operations ---------------------------------------------------------------
    def _check_inplace(self, name, others=()):
        """Refuse in-place changes that would give a wrong graph; True when ``self`` must
        instead join the graph of another operand (it does not require grad, one of ``others``
        does, and grad mode is on)."""
        if not _grad_mode.enabled:
            return False
        if self.requires_grad:
            if self._ctx is None:
                raise RuntimeError(
                    f"a leaf tensor that requires grad (shape {self.shape}) is being used in an "
                    f"in-place operation ({name}); update it under `with minidl.no_grad():` (as "
                    "an optimizer does), or use the out-of-place form")
            raise RuntimeError(
                f"{name}: in-place operations on a tensor that is part of the autograd graph "
                f"(shape {self.shape}, made by {self._ctx.name()}) are not supported; use the "
                "out-of-place form (y = y + x instead of y += x)")
        return any(isinstance(o, Tensor) and o.requires_grad for o in others)

    def _write(self, value, name):
        """Store ``value`` into this tensor's array in place (cast to its dtype, broadcast to
        its shape) and bump ``_version``."""
        d = self._data
        vshape = tuple(getattr(value, "shape", ()))
        if vshape != d.shape:
            try:
                ok = np.broadcast_shapes(vshape, d.shape) == d.shape
            except ValueError:
                ok = False
            if not ok:
                raise ValueError(f"{name}: the result has shape {vshape}, which cannot be "
                                 f"written into this tensor of shape {tuple(d.shape)}")
        vdtype = getattr(value, "dtype", None)
        if vdtype is not None and vdtype != d.dtype and not np.can_cast(vdtype, d.dtype,
                                                                          "same_kind"):
            raise TypeError(f"{name}: the result has dtype {vdtype}, which cannot be cast to "
                            f"this tensor's dtype {d.dtype} in place")
        if not getattr(getattr(d, "flags", None), "writeable", True):  # (CuPy has no flag)
            xp = backend.get_array_module(d)
            self._data = xp.broadcast_to(xp.asarray(value, dtype=d.dtype), d.shape).copy()
        else:
            d[...] = value
        self._version += 1
        return self

    def _inplace(self, name, compute, *others):
        """``self = compute(self, *others)`` in place: ``compute`` works on Tensors (minidl.ops)."""
        if self._check_inplace(name, others):
            # self needs no grad but an operand does: self joins that operand's graph.
            r = compute(Tensor._make(self._data), *others)
            if r.shape != self.shape:
                raise ValueError(f"{name}: the result has shape {r.shape}, which cannot be "
                                 f"written into this tensor of shape {self.shape}")
            if r.dtype != self.dtype:
                if not np.can_cast(r.dtype, self.dtype, "same_kind"):
                    raise TypeError(f"{name}: the result has dtype {r.dtype}, which cannot be "
                                    f"cast to this tensor's dtype {self.dtype} in place")
                r = r.to(dtype=self.dtype)
            self._data, self._ctx, self.requires_grad = r._data, r._ctx, True
            self._version += 1
            return self
        with no_grad():
            r = compute(self, *others)
        return self._write(r._data, name)

    def add_(self, other, alpha=1):
        """In place ``self += alpha * other``; returns self."""
        if alpha != 1:
            return self._inplace("add_", lambda a, b: ops.add(a, ops.mul(b, alpha)), other)
        return self._inplace("add_", ops.add, other)

    def sub_(self, other, alpha=1):
        """In place ``self -= alpha * other``; returns self."""
        if alpha != 1:
            return self._inplace("sub_", lambda a, b: ops.sub(a, ops.mul(b, alpha)), other)
        return self._inplace("sub_", ops.sub, other)

    def mul_(self, other):
        """In place ``self *= other``; returns self."""
        return self._inplace("mul_", ops.mul, other)

    def div_(self, other):
        """In place ``self /= other``; returns self."""
        return self._inplace("div_", ops.div, other)

    def clamp_(self, min=None, max=None):
        """In place ``clamp``; returns self."""
        return self._inplace("clamp_", lambda a: ops.clip(a, min, max))

    def copy_(self, src):
        """Copy ``src`` (a Tensor, array or number, broadcast to this shape and cast to this
        dtype) into this tensor; returns self. Differentiable with respect to ``src``."""
        if not isinstance(src, Tensor):
            src = Tensor(src, device=self.device)
        if src.device != self.device:
            src = src.to(self.device)
        def compute(a, b):
            if not _grad_mode.enabled:
                return b  # _write broadcasts and casts
            xp = backend.get_array_module(a._data)
            return ops.add(Tensor._make(xp.zeros_like(a._data)), b)  # broadcast, keep grad
        return self._inplace("copy_", compute, src)

    def fill_(self, value):
        """Set every element to ``value``; returns self."""
        self._check_inplace("fill_")
        if isinstance(value, Tensor):
            value = value.item()
        return self._write(self.dtype.type(value), "fill_")

    def zero_(self):
        """Set every element to 0; returns self."""
        return self.fill_(0)

    def __setitem__(self, index, value):
        """``x[index] = value`` in place (bumps ``_version``), under the rules of the other
        in-place methods; a ``value`` that requires grad is refused (build the result with
        ``minidl.where`` or ``concatenate`` instead)."""
        if self._check_inplace("x[index] = value", (value,)):
            raise RuntimeError(
                f"x[index] = value: the value requires grad, and minidl does not record an "
                f"indexed assignment into a tensor of shape {self.shape}; build the result "
                "out of place (minidl.where, concatenate) instead")
        v = value._data if isinstance(value, Tensor) else value
        d = self._data
        idx = ops._clean_index(index)
        if not getattr(getattr(d, "flags", None), "writeable", True):
            d = self._data = d.copy()
        d[idx] = v
        self._version += 1

    def __iadd__(self, other): return self.add_(other)
    def __isub__(self, other): return self.sub_(other)
    def __imul__(self, other): return self.mul_(other)
    def __itruediv__(self, other): return self.div_(other)

    # -- conversion ------------------------------------------------------------------------
    def numpy(self):
        """A NumPy copy of the data (from any device)."""
        return np.array(backend.to_numpy(self._data), copy=True)

    def item(self):
        """The value of a one-element tensor as a Python number."""
        if self._data.size != 1:
            raise ValueError(f"item() needs a tensor with one element, this one has shape "
                             f"{self.shape}")
        return self._data.reshape(()).item()

    def tolist(self):
        return backend.to_numpy(self._data).tolist()

    def to(self, device=None, dtype=None):
        """A tensor on ``device`` and/or of ``dtype`` (self when nothing changes).

        As in PyTorch, ``x.to(np.float64)`` (a dtype as the first argument) and ``x.to(other)``
        (another Tensor's device and dtype) work too. Differentiable: gradients flow back to
        the original device and dtype.
        """
        if isinstance(device, Tensor):
            device, dtype = device.device, device.dtype if dtype is None else dtype
        elif device is not None and not (isinstance(device, str) and
                                         device.split(":")[0] in ("cpu", "cuda")):
            try:
                as_dtype = np.dtype(device)
            except TypeError:
                as_dtype = None
            if as_dtype is not None and dtype is None:
                device, dtype = None, as_dtype
        out = self
        if device is not None and backend.normalize_device(device) != self.device:
            out = ops.to_device(out, device=backend.normalize_device(device))
        if dtype is not None and np.dtype(dtype) != out.dtype:
            out = ops.astype(out, dtype=np.dtype(dtype))
        return out

    def cpu(self):
        return self.to("cpu")

    def cuda(self):
        return self.to("cuda")

    def float(self):
        return self.to(dtype=np.float32)

    def double(self):
        return self.to(dtype=np.float64)

    def astype(self, dtype):
        return self.to(dtype=dtype)

    def detach(self):
        """A tensor sharing this data, cut from the graph (requires_grad False)."""
        return Tensor._make(self._data, False)

    def zero_grad(self):
        """Forget the accumulated gradient (``.grad = None``)."""
        self.grad = None

    # -- backward --------------------------------------------------------------------------
    def backward(self, grad=None, retain_graph=False):
        """Backpropagate from this tensor, accumulating into ``.grad`` of the leaves.

        ``grad`` is dL/d(self); it may be omitted only for a one-element tensor (it is 1 then).
        The graph is freed afterwards unless ``retain_graph=True``: its Functions drop what they
        saved, and a later backward that reaches one of them raises an error naming
        ``retain_graph=True`` (PyTorch raises only at nodes that saved tensors; minidl at any
        freed node). Tensor hooks (:meth:`register_hook`) run on each gradient before it is
        used; a leaf's ``.grad`` is accumulated in the leaf's own dtype, then its
        :meth:`register_post_accumulate_grad_hook` hooks run.
        """
        if not self.requires_grad:
            raise RuntimeError(f"backward() on a tensor that does not require grad (shape "
                               f"{self.shape}): no input of the computation requires grad, or it "
                               "ran under no_grad()")
        xp = backend.get_array_module(self._data)
        if grad is None:
            if self._data.size != 1:
                raise RuntimeError(f"backward() without a grad argument needs a one-element "
                                   f"output, got shape {self.shape}; pass grad= with that shape")
            g = xp.ones(self.shape, dtype=self.dtype)
        else:
            g = grad._data if isinstance(grad, Tensor) else _as_array(grad, self.dtype)
            if tuple(g.shape) != self.shape:
                raise ValueError(f"backward(): grad has shape {tuple(g.shape)} but the tensor has "
                                 f"shape {self.shape}")
            if backend.device_of(g) != self.device:
                raise backend.DeviceError(f"backward(): grad is on {backend.device_of(g)}, the "
                                          f"tensor on {self.device}")
            if g.dtype != self.dtype:
                g = g.astype(self.dtype)

        order = _topological_order(self)
        grads = {id(self): g}
        for node in reversed(order):
            gy = grads.pop(id(node), None)
            if gy is None:
                continue
            if node._hooks:
                gy = _run_hooks(node, gy)
            fn = node._ctx
            if fn is None or node._retain_grad:
                # A leaf (or a retained non-leaf): accumulate into .grad, in its dtype.
                if gy.dtype != node._data.dtype:
                    gy = gy.astype(node._data.dtype)
                if node.grad is None:
                    # a copy: backward functions may hand the same array to several inputs
                    node.grad = Tensor._make(gy.copy())
                else:
                    node.grad = Tensor._make(node.grad._data + gy)
                if fn is None:
                    if node._post_acc_hooks:
                        for hook in list(node._post_acc_hooks.values()):
                            hook(node)
                    continue
            if fn._saved_versions or fn._saves_output:
                fn._check_versions(node)
            gxs = fn._backward(gy)
            if not isinstance(gxs, tuple):
                gxs = (gxs,)
            parents = fn.parents
            if len(gxs) != len(parents):
                raise RuntimeError(f"{type(fn).__name__}.backward returned {len(gxs)} gradients "
                                   f"for {len(parents)} inputs")
            for p, need, gx in zip(parents, fn.needs_input_grad, gxs):
                if not need or gx is None:
                    continue
                pd = p._data
                if gx.shape != pd.shape:
                    raise RuntimeError(f"{type(fn).__name__}.backward returned a gradient of "
                                       f"shape {tuple(gx.shape)} for an input of shape {p.shape}")
                if gx.dtype is not pd.dtype and gx.dtype != pd.dtype:
                    gx = gx.astype(pd.dtype)
                prev = grads.get(id(p))
                grads[id(p)] = gx if prev is None else prev + gx
            if not retain_graph:
                # drop the parents and what it saved; the node stays, marked freed
                fn.__dict__.clear()
                fn._freed = True

    # -- representation --------------------------------------------------------------------
    def __repr__(self):
        body = np.array2string(backend.to_numpy(self._data), separator=", ", precision=4,
                               threshold=50, edgeitems=3, prefix="tensor(")
        extra = []
        if self.dtype != np.float32:
            extra.append(f"dtype={self.dtype}")
        if self.device != "cpu":
            extra.append(f"device='{self.device}'")
        if self._ctx is not None:
            extra.append(f"grad_fn=<{self._ctx.name()}>")
        elif self.requires_grad:
            extra.append("requires_grad=True")
        return "tensor(" + body + "".join(", " + e for e in extra) + ")"

    def __bool__(self):
        if self._data.size != 1:
            raise ValueError(f"the truth value of a tensor with shape {self.shape} is ambiguous")
        return bool(self.item())

    def __float__(self):
        return float(self.item())

    def __int__(self):
        return int(self.item())

    def __array__(self, dtype=None, copy=None):
        a = backend.to_numpy(self._data)
        return a if dtype is None else a.astype(dtype)

    # Tensors hash by identity (they are graph nodes); == is elementwise, as in NumPy/torch.
    __hash__ = object.__hash__

    # -- operators: explicit one-line delegations to minidl.ops ---------------------------------
    def __add__(self, other): return ops.add(self, other)
    def __radd__(self, other): return ops.add(other, self)
    def __sub__(self, other): return ops.sub(self, other)
    def __rsub__(self, other): return ops.sub(other, self)
    def __mul__(self, other): return ops.mul(self, other)
    def __rmul__(self, other): return ops.mul(other, self)
    def __truediv__(self, other): return ops.div(self, other)
    def __rtruediv__(self, other): return ops.div(other, self)
    def __pow__(self, other): return ops.pow(self, other)
    def __rpow__(self, other): return ops.pow(other, self)
    def __matmul__(self, other): return ops.matmul(self, other)
    def __rmatmul__(self, other): return ops.matmul(other, self)
    def __neg__(self): return ops.neg(self)
    def __pos__(self): return self
    def __abs__(self): return ops.abs(self)
    def __getitem__(self, index): return ops.getitem(self, index)

    # comparisons: no gradient, boolean tensors
    def __eq__(self, other): return ops.compare(self, other, "eq")
    def __ne__(self, other): return ops.compare(self, other, "ne")
    def __lt__(self, other): return ops.compare(self, other, "lt")
    def __le__(self, other): return ops.compare(self, other, "le")
    def __gt__(self, other): return ops.compare(self, other, "gt")
    def __ge__(self, other): return ops.compare(self, other, "ge")

    # -- methods: PyTorch's names and arguments (NumPy's axis=/keepdims= also accepted) -------
    def size(self, dim=None):
        """The shape as a tuple (``size()``), or the length of one dimension (``size(d)``)."""
        if dim is None:
            return tuple(self._data.shape)
        return self._data.shape[ops.check_dim(dim, self.ndim, "size", self.shape)]

    def numel(self):
        """The number of elements."""
        return int(self._data.size)

    def dim(self):
        """The number of dimensions (``ndim``)."""
        return self._data.ndim

    def sum(self, dim=None, keepdim=False, *, axis=None, keepdims=None):
        """Sum over ``dim`` (an int or a tuple; all dimensions by default)."""
        return ops.sum(self, *ops.dim_args("sum", dim, axis, keepdim, keepdims))

    def mean(self, dim=None, keepdim=False, *, axis=None, keepdims=None):
        """Mean over ``dim`` (an int or a tuple; all dimensions by default)."""
        return ops.mean(self, *ops.dim_args("mean", dim, axis, keepdim, keepdims))

    def max(self, dim=None, keepdim=False, *, axis=None, keepdims=None):
        """PyTorch's ``max``: ``x.max()`` is the largest value (ties share the gradient);
        ``x.max(dim)`` returns ``(values, indices)`` (a namedtuple; the gradient goes to the
        indexed elements); ``x.max(other)`` with a Tensor is the elementwise maximum.
        NumPy's spelling ``x.max(axis=1)`` keeps NumPy's meaning: the values only."""
        return self._extreme("max", dim, keepdim, axis, keepdims)

    def min(self, dim=None, keepdim=False, *, axis=None, keepdims=None):
        """PyTorch's ``min``: see :meth:`max`."""
        return self._extreme("min", dim, keepdim, axis, keepdims)

    def _extreme(self, mode, dim, keepdim, axis, keepdims):
        if isinstance(dim, Tensor):
            return ops.maximum(self, dim) if mode == "max" else ops.minimum(self, dim)
        if axis is not None or dim is None:
            axis, keep = ops.dim_args(mode, dim, axis, keepdim if dim is not None else None,
                                      keepdims)
            return ops.Max.apply(self, axis=axis, keepdims=keep or bool(keepdim), mode=mode)
        if isinstance(dim, (tuple, list)):
            raise TypeError(f"{mode}(dim): dim must be one int for (values, indices), got {dim}; "
                            f"use amax/amin or {mode}(axis=...) for several dimensions")
        return ops.max_dim(self, dim, bool(keepdim or keepdims), mode)

    def amax(self, dim=None, keepdim=False):
        """Largest values over ``dim`` (an int or tuple); tied maxima share the gradient."""
        return ops.max(self, dim, keepdim)

    def amin(self, dim=None, keepdim=False):
        """Smallest values over ``dim`` (an int or tuple); tied minima share the gradient."""
        return ops.min(self, dim, keepdim)

    def var(self, dim=None, keepdim=False, *, unbiased=None, correction=None, axis=None,
            keepdims=None, ddof=None):
        """Variance over ``dim``. PyTorch's default is the unbiased estimate (``correction=1``);
        NumPy's spelling (``axis=``, or ``ddof=``) keeps NumPy's default ``ddof=0``."""
        d, keep = ops.dim_args("var", dim, axis, keepdim, keepdims)
        given = [v for v in (ddof, correction) if v is not None]
        if unbiased is not None:
            given.append(1 if unbiased else 0)
        if len(given) > 1:
            raise TypeError("var: pass one of ddof=, correction=, unbiased=")
        c = given[0] if given else (0 if axis is not None else 1)
        return ops.var(self, d, keep, c)

    def std(self, dim=None, keepdim=False, *, unbiased=None, correction=None, axis=None,
            keepdims=None, ddof=None):
        """Standard deviation: the square root of :meth:`var` (same arguments and defaults)."""
        return self.var(dim, keepdim, unbiased=unbiased, correction=correction, axis=axis,
                        keepdims=keepdims, ddof=ddof).sqrt()

    def argmax(self, dim=None, keepdim=False, *, axis=None, keepdims=None):
        """Index of the largest value (over the flattened tensor by default)."""
        return ops.argmax(self, *ops.dim_args("argmax", dim, axis, keepdim, keepdims))

    def argmin(self, dim=None, keepdim=False, *, axis=None, keepdims=None):
        """Index of the smallest value (over the flattened tensor by default)."""
        return ops.argmin(self, *ops.dim_args("argmin", dim, axis, keepdim, keepdims))

    def reshape(self, *shape):
        return ops.reshape(self, *shape)

    def view(self, *shape):
        """As :meth:`reshape` (minidl tensors have no strides to share; the result may be a
        NumPy view or a copy, and its version counter is its own)."""
        return ops.reshape(self, *shape)

    def view_as(self, other):
        return ops.reshape(self, other.shape)

    def reshape_as(self, other):
        return ops.reshape(self, other.shape)

    def transpose(self, *dims):
        """PyTorch's ``transpose(dim0, dim1)`` swaps two dimensions. With no arguments it
        reverses them, and with a full permutation (three or more dims) it permutes, as NumPy."""
        if len(dims) == 2 and all(not isinstance(d, (tuple, list)) for d in dims):
            d0 = ops.check_dim(dims[0], self.ndim, "transpose", self.shape)
            d1 = ops.check_dim(dims[1], self.ndim, "transpose", self.shape)
            perm = list(range(self.ndim))
            perm[d0], perm[d1] = perm[d1], perm[d0]
            return ops.transpose(self, *perm)
        return ops.transpose(self, *dims)

    def t(self):
        """Transpose of a tensor with at most 2 dimensions."""
        if self.ndim > 2:
            raise ValueError(f"t() expects a tensor with <= 2 dimensions, got shape {self.shape}")
        return ops.transpose(self) if self.ndim == 2 else self

    def permute(self, *dims):
        """Reorder the dimensions: ``x.permute(0, 2, 1)``."""
        return ops.transpose(self, *dims)

    def flatten(self, start_dim=0, end_dim=-1):
        return ops.flatten(self, start_dim, end_dim)

    def squeeze(self, dim=None, *, axis=None):
        return ops.squeeze(self, ops.dim_args("squeeze", dim, axis)[0])

    def unsqueeze(self, dim=None, *, axis=None):
        d = ops.dim_args("unsqueeze", dim, axis)[0]
        if d is None:
            raise TypeError("unsqueeze() missing the dim argument")
        return ops.unsqueeze(self, d)

    def expand(self, *sizes):
        """Broadcast to ``sizes`` (-1 keeps a dimension), as PyTorch's ``expand``; the result
        is a copy in minidl (gradients are summed back)."""
        if len(sizes) == 1 and isinstance(sizes[0], (tuple, list)):
            sizes = tuple(sizes[0])
        lead = len(sizes) - self.ndim
        if lead < 0:
            raise ValueError(f"expand: {len(sizes)} sizes for a tensor of shape {self.shape}")
        shape = tuple(self.shape[i - lead] if n == -1 and i >= lead else int(n)
                      for i, n in enumerate(sizes))
        xp = backend.get_array_module(self._data)
        return self + Tensor._make(xp.zeros(shape, dtype=self.dtype))

    def clone(self):
        """A copy of the data that stays in the graph (gradients flow back to this tensor)."""
        return ops.clone(self)

    def contiguous(self):
        return self

    def clamp(self, min=None, max=None):
        """Limit the values to [min, max] (either may be None)."""
        return ops.clip(self, min, max)

    def clip(self, min=None, max=None):
        return ops.clip(self, min, max)

    def exp(self): return ops.exp(self)
    def log(self): return ops.log(self)
    def sqrt(self): return ops.sqrt(self)
    def tanh(self): return ops.tanh(self)
    def sigmoid(self): return ops.sigmoid(self)
    def relu(self): return ops.relu(self)
    def abs(self): return ops.abs(self)
    def neg(self): return ops.neg(self)
    def add(self, other, alpha=1): return ops.add(self, other if alpha == 1 else other * alpha)
    def sub(self, other, alpha=1): return ops.sub(self, other if alpha == 1 else other * alpha)
    def mul(self, other): return ops.mul(self, other)
    def div(self, other): return ops.div(self, other)
    def pow(self, exponent): return ops.pow(self, exponent)
    def pad(self, pad_width, value=0.0): return ops.pad(self, pad_width, value)
    def matmul(self, other): return ops.matmul(self, other)
    def mm(self, other): return ops.matmul(self, other)

    def softmax(self, dim):
        from minidl.functional import softmax
        return softmax(self, dim)

    def log_softmax(self, dim):
        from minidl.functional import log_softmax
        return log_softmax(self, dim)

    # comparisons by name (no gradient; boolean tensors)
    def eq(self, other): return ops.compare(self, other, "eq")
    def ne(self, other): return ops.compare(self, other, "ne")
    def lt(self, other): return ops.compare(self, other, "lt")
    def le(self, other): return ops.compare(self, other, "le")
    def gt(self, other): return ops.compare(self, other, "gt")
    def ge(self, other): return ops.compare(self, other, "ge")

    def equal(self, other):
        """True when ``other`` has this shape and the same values (PyTorch's ``equal``)."""
        return isinstance(other, Tensor) and self.shape == other.shape and \
            bool((self._data == other._data).all())

    # dtype conversions (differentiable for floating targets, as ``to(dtype=...)``)
    def long(self): return self.to(dtype=np.int64)
    def int(self): return self.to(dtype=np.int32)
    def bool(self): return self.to(dtype=np.bool_)
    def half(self): return self.to(dtype=np.float16)

    def type_as(self, other):
        """This tensor in ``other``'s dtype."""
        return self.to(dtype=other.dtype)


def _topological_order(root):
    """Nodes reachable from ``root`` through edges that need grad, parents before children.

    An explicit-stack DFS (no recursion: 5000-op chains are fine). Raises, before any gradient
    is computed, when it reaches a node an earlier backward freed.
    """
    order, visited = [], set()
    stack = [(root, False)]
    while stack:
        node, processed = stack.pop()
        if processed:
            order.append(node)
            continue
        if id(node) in visited:
            continue
        visited.add(id(node))
        stack.append((node, True))
        fn = node._ctx
        if fn is not None:
            if fn._freed:
                raise RuntimeError(
                    f"Trying to backward through the graph a second time: {fn.name()} (output "
                    f"of shape {node.shape}) was freed by an earlier backward(). Specify "
                    "retain_graph=True in the first backward() if you need to backward through "
                    "this graph again (or compute the forward again)")
            for p, need in zip(fn.parents, fn.needs_input_grad):
                if need and id(p) not in visited:
                    stack.append((p, False))
    return order


def _run_hooks(node, gy):
    """Apply ``node``'s tensor hooks to its gradient ``gy`` (an array)."""
    for hook in list(node._hooks.values()):
        r = hook(Tensor._make(gy))
        if r is None:
            continue
        r = r._data if isinstance(r, Tensor) else r
        if tuple(getattr(r, "shape", ())) != tuple(gy.shape):
            raise RuntimeError(f"a hook returned a gradient of shape "
                               f"{tuple(getattr(r, 'shape', ()))} for a tensor of shape "
                               f"{tuple(gy.shape)}")
        gy = r
    return gy


def _check_shape_args(shape, name="shape"):
    """Sizes as ints: ``(2, 3)``, ``2, 3`` or ``[2, 3]``; a float (2.5, even 2.0) is a TypeError
    naming it, a negative size a ValueError (as PyTorch), never a silent truncation."""
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        shape = tuple(shape[0])
    out = []
    for s in shape:
        try:
            v = operator.index(s)
        except TypeError:
            raise TypeError(f"{name} must be integers, got {s!r} ({type(s).__name__}) in "
                            f"{tuple(shape)}") from None
        if v < -1 or (v == -1 and name != "reshape"):
            raise ValueError(f"{name}: sizes must be non-negative, got {tuple(shape)}")
        out.append(v)
    return tuple(out)


# ----------------------------------------------------------------------------------------------
# factories


def _factory(fill):
    @functools.wraps(fill)
    def make(*shape, dtype=np.float32, device="cpu", requires_grad=False):
        shape = _check_shape_args(shape)
        xp = backend.xp_for(device)
        return Tensor(fill(xp, shape, np.dtype(dtype)), requires_grad=requires_grad)
    return make


@_factory
def zeros(xp, shape, dtype):
    """``zeros(*shape, dtype=float32, device="cpu", requires_grad=False)``"""
    return xp.zeros(shape, dtype=dtype)


@_factory
def ones(xp, shape, dtype):
    """``ones(*shape, dtype=float32, device="cpu", requires_grad=False)``"""
    return xp.ones(shape, dtype=dtype)


def full(shape, fill_value, dtype=np.float32, device="cpu", requires_grad=False):
    """A tensor of ``shape`` filled with ``fill_value``."""
    shape = _check_shape_args((shape,))
    xp = backend.xp_for(device)
    return Tensor(xp.full(shape, fill_value, dtype=np.dtype(dtype)), requires_grad=requires_grad)


def randn(*shape, dtype=np.float32, device="cpu", requires_grad=False):
    """Standard-normal samples drawn from :mod:`minidl.random` (the one seeded state)."""
    from minidl import random as _random
    shape = _check_shape_args(shape)
    arr = _random.normal(0.0, 1.0, shape).astype(dtype)
    return Tensor(arr, requires_grad=requires_grad, device=device)


def arange(start, stop=None, step=1, dtype=None, device="cpu"):
    """NumPy's arange; ints give int64, floats float32 unless ``dtype`` is given."""
    if stop is None:
        start, stop = 0, start
    if dtype is None:
        dtype = np.int64 if all(isinstance(v, (int, np.integer)) for v in (start, stop, step)) \
            else np.float32
    xp = backend.xp_for(device)
    return Tensor(xp.arange(start, stop, step, dtype=np.dtype(dtype)))


def zeros_like(t, dtype=None):
    xp = backend.get_array_module(t.data)
    return Tensor(xp.zeros(t.shape, dtype=dtype or t.dtype))


def ones_like(t, dtype=None):
    xp = backend.get_array_module(t.data)
    return Tensor(xp.ones(t.shape, dtype=dtype or t.dtype))


from minidl import ops  # noqa: E402  (ops imports Tensor/Function from this module)
