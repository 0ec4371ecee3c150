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
of leaf tensors that require grad accumulate into ``.grad``; the graph (and the arrays it saved)
is freed afterwards unless ``retain_graph=True``.

The engine knows no particular op; broadcasting is undone in exactly one place,
:func:`unbroadcast`.
"""
import contextlib
import functools
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
    """Apply DESIGN.md's dtype rule and return an array (NumPy unless it already is CuPy).

    Arrays keep their dtype (float64 stays float64, int64 stays int64); Python floats and lists
    of them become float32, Python ints int64, bools bool.
    """
    if isinstance(data, Tensor):
        data = data.data
    if _is_array(data):
        arr = data
    elif isinstance(data, np.generic):
        arr = np.asarray(data)
    else:
        arr = np.asarray(data)
        if arr.dtype == np.float64:
            arr = arr.astype(np.float32)
        elif arr.dtype.kind in "iu" and arr.dtype != np.int64:
            arr = arr.astype(np.int64)
        elif arr.dtype == object:
            raise TypeError(f"cannot make a Tensor from {type(data).__name__} "
                            "(expected an array, a number or a nested list of numbers)")
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
    """

    forward_cuda = None
    backward_cuda = None

    def save_for_backward(self, *arrays):
        """Keep ``arrays`` for backward (read back as ``self.saved_arrays``)."""
        self.saved_arrays = arrays

    def forward(self, *arrays, **params):  # pragma: no cover - abstract
        raise NotImplementedError(f"{type(self).__name__}.forward")

    def backward(self, grad_output):  # pragma: no cover - abstract
        raise NotImplementedError(f"{type(self).__name__} has no backward")

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
        out = fn._forward(device, [None if t is None else t.data for t in inputs], params)
        requires_grad = _grad_mode.enabled and any(t.requires_grad for t in tensors)
        result = Tensor._make(out, requires_grad)
        if requires_grad:
            fn.parents = inputs
            fn.needs_input_grad = tuple(t is not None and t.requires_grad for t in inputs)
            result._ctx = fn
        return result


# ----------------------------------------------------------------------------------------------
# Tensor


class Tensor:
    """An n-dimensional array with automatic differentiation.

    ``Tensor(data, requires_grad=False, device="cpu", dtype=None)``

    * ``data``: an array (NumPy or CuPy; keeps its dtype), a number or a nested list (floats
      become float32, ints int64), or another Tensor (its data is shared).
    * ``requires_grad``: record operations on it so ``backward`` fills ``.grad``. Only floating
      tensors can require grad.
    * ``device``: "cpu" or "cuda" (CuPy). A CuPy array's device is "cuda" whatever is passed
      as default; pass ``device`` explicitly to move.

    Attributes: ``.data`` (the array), ``.grad`` (a Tensor or None), ``.shape``, ``.dtype``,
    ``.device``, ``.ndim``, ``.size``, ``.requires_grad``, ``.is_leaf``.
    """

    __array_priority__ = 1000  # so ndarray + Tensor defers to Tensor.__radd__
    # Bumped by every in-place change of the data (in-place ops, optimizer steps, assignments
    # to .data); backward compares it with the value recorded when an op saved the array.
    _version = 0

    def __init__(self, data, requires_grad=False, device=None, dtype=None):
        arr = _as_array(data, dtype)
        if device is not None:
            arr = backend.to_device(arr, device)
        self.data = arr
        self.grad = None
        self._ctx = None
        self._retain_grad = False
        self.requires_grad = False
        if requires_grad:
            self.requires_grad_(True)

    @classmethod
    def _make(cls, array, requires_grad=False):
        t = cls.__new__(cls)
        t.data = array
        t.grad = None
        t._ctx = None
        t._retain_grad = False
        t.requires_grad = requires_grad
        return t

    # -- properties ------------------------------------------------------------------------
    @property
    def shape(self):
        return tuple(self.data.shape)

    @property
    def dtype(self):
        return self.data.dtype

    @property
    def ndim(self):
        return self.data.ndim

    @property
    def size(self):
        return int(self.data.size)

    @property
    def device(self):
        return backend.device_of(self.data)

    @property
    def is_leaf(self):
        return self._ctx is None

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

    # -- conversion ------------------------------------------------------------------------
    def numpy(self):
        """A NumPy copy of the data (from any device)."""
        return np.array(backend.to_numpy(self.data), copy=True)

    def item(self):
        """The value of a one-element tensor as a Python number."""
        if self.size != 1:
            raise ValueError(f"item() needs a tensor with one element, this one has shape "
                             f"{self.shape}")
        return self.data.reshape(()).item()

    def tolist(self):
        return backend.to_numpy(self.data).tolist()

    def to(self, device=None, dtype=None):
        """A tensor on ``device`` and/or of ``dtype`` (self when nothing changes).

        Differentiable: gradients flow back to the original device and dtype.
        """
        from minidl import ops
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
        return Tensor._make(self.data, False)

    def zero_grad(self):
        """Forget the accumulated gradient (``.grad = None``)."""
        self.grad = None

    # -- backward --------------------------------------------------------------------------
    def backward(self, grad=None, retain_graph=False):
        """Backpropagate from this tensor, accumulating into ``.grad`` of the leaves.

        ``grad`` is dL/d(self); it may be omitted only for a one-element tensor (it is 1 then).
        The graph is freed afterwards unless ``retain_graph=True``.
        """
        if not self.requires_grad:
            raise RuntimeError(f"backward() on a tensor that does not require grad (shape "
                               f"{self.shape}): no input of the computation requires grad, or it "
                               "ran under no_grad()")
        xp = backend.get_array_module(self.data)
        if grad is None:
            if self.size != 1:
                raise RuntimeError(f"backward() without a grad argument needs a one-element "
                                   f"output, got shape {self.shape}; pass grad= with that shape")
            g = xp.ones(self.shape, dtype=self.dtype)
        else:
            g = grad.data if isinstance(grad, Tensor) else _as_array(grad, self.dtype)
            if tuple(g.shape) != self.shape:
                raise ValueError(f"backward(): grad has shape {tuple(g.shape)} but the tensor has "
                                 f"shape {self.shape}")
            if backend.device_of(g) != self.device:
                raise backend.DeviceError(f"backward(): grad is on {backend.device_of(g)}, the "
                                          f"tensor on {self.device}")
            if g.dtype != self.dtype:
                g = g.astype(self.dtype)

        # Topological order by an explicit-stack DFS (no recursion: 5000-op chains are fine).
        order, visited = [], set()
        stack = [(self, False)]
        while stack:
            node, processed = stack.pop()
            if processed:
                order.append(node)
                continue
            if id(node) in visited:
                continue
            visited.add(id(node))
            stack.append((node, True))
            if node._ctx is not None:
                for p in node._ctx.parents:
                    if p is not None and p.requires_grad and id(p) not in visited:
                        stack.append((p, False))

        grads = {id(self): g}
        for node in reversed(order):
            gy = grads.pop(id(node), None)
            if gy is None:
                continue
            fn = node._ctx
            if fn is None or node._retain_grad:
                # A leaf (or a retained non-leaf): accumulate into .grad.
                if node.grad is None:
                    # a copy: backward functions may hand the same array to several inputs
                    node.grad = Tensor._make(gy.copy())
                else:
                    node.grad = Tensor._make(node.grad.data + gy)
                if fn is None:
                    continue
            gxs = fn._backward(gy)
            if not isinstance(gxs, tuple):
                gxs = (gxs,)
            if len(gxs) != len(fn.parents):
                raise RuntimeError(f"{type(fn).__name__}.backward returned {len(gxs)} gradients "
                                   f"for {len(fn.parents)} inputs")
            for p, gx in zip(fn.parents, gxs):
                if p is None or not p.requires_grad or gx is None:
                    continue
                if tuple(gx.shape) != p.shape:
                    raise RuntimeError(f"{type(fn).__name__}.backward returned a gradient of "
                                       f"shape {tuple(gx.shape)} for an input of shape {p.shape}")
                prev = grads.get(id(p))
                grads[id(p)] = gx if prev is None else prev + gx
            if not retain_graph:
                node._ctx = None  # frees the Function and what it saved

    # -- representation --------------------------------------------------------------------
    def __repr__(self):
        body = np.array2string(backend.to_numpy(self.data), separator=", ", precision=4,
                               threshold=50, edgeitems=3, prefix="tensor(")
        extra = []
        if self.dtype != np.float32:
            extra.append(f"dtype={self.dtype}")
        if self.device != "cpu":
            extra.append(f"device='{self.device}'")
        if self._ctx is not None:
            extra.append(f"grad_fn=<{type(self._ctx).__name__}>")
        elif self.requires_grad:
            extra.append("requires_grad=True")
        return "tensor(" + body + "".join(", " + e for e in extra) + ")"

    def __bool__(self):
        if self.size != 1:
            raise ValueError(f"the truth value of a tensor with shape {self.shape} is ambiguous")
        return bool(self.item())

    def __float__(self):
        return float(self.item())

    def __int__(self):
        return int(self.item())

    def __array__(self, dtype=None, copy=None):
        a = backend.to_numpy(self.data)
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

    # -- methods: NumPy names and arguments ---------------------------------------------------
    def sum(self, axis=None, keepdims=False): return ops.sum(self, axis=axis, keepdims=keepdims)
    def mean(self, axis=None, keepdims=False): return ops.mean(self, axis=axis, keepdims=keepdims)
    def max(self, axis=None, keepdims=False): return ops.max(self, axis=axis, keepdims=keepdims)
    def min(self, axis=None, keepdims=False): return ops.min(self, axis=axis, keepdims=keepdims)
    def var(self, axis=None, keepdims=False, ddof=0): return ops.var(self, axis, keepdims, ddof)
    def argmax(self, axis=None): return ops.argmax(self, axis=axis)
    def argmin(self, axis=None): return ops.argmin(self, axis=axis)
    def reshape(self, *shape): return ops.reshape(self, *shape)
    def view(self, *shape): return ops.reshape(self, *shape)
    def transpose(self, *axes): return ops.transpose(self, *axes)
    def permute(self, *axes): return ops.transpose(self, *axes)
    def flatten(self, start_dim=0, end_dim=-1): return ops.flatten(self, start_dim, end_dim)
    def squeeze(self, axis=None): return ops.squeeze(self, axis)
    def unsqueeze(self, axis): return ops.unsqueeze(self, axis)
    def exp(self): return ops.exp(self)
    def log(self): return ops.log(self)
    def sqrt(self): return ops.sqrt(self)
    def tanh(self): return ops.tanh(self)
    def sigmoid(self): return ops.sigmoid(self)
    def relu(self): return ops.relu(self)
    def abs(self): return ops.abs(self)
    def clip(self, min=None, max=None): return ops.clip(self, min, max)
    def pad(self, pad_width, value=0.0): return ops.pad(self, pad_width, value)
    def matmul(self, other): return ops.matmul(self, other)


def _check_shape_args(shape):
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        shape = tuple(shape[0])
    return tuple(int(s) for s in shape)


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
