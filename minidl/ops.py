"""Generic differentiable operations, each a :class:`~minidl.tensor.Function`.

Every op keeps its ``backward`` right under its ``forward``; both work on raw arrays with
``xp = get_array_module(...)`` so one body serves NumPy and CuPy. Tensor's operators and
methods are one-line delegations to the lowercase wrappers at the bottom of each section.

Conventions for writers of Functions (here and in :mod:`minidl.functional`):

* never modify ``grad_output`` in place: the engine may hand the same array to several inputs;
* return one gradient per positional input, of that input's shape (``None`` when not needed,
  see ``self.needs_input_grad``);
* broadcasting is undone by :func:`minidl.tensor.unbroadcast`, nowhere else.
"""
import builtins
import operator
from collections import namedtuple

import numpy as np

from minidl import backend
from minidl.tensor import Function, Tensor, unbroadcast

# ----------------------------------------------------------------------------------------------
# argument helpers


def _to_tensor_like(value, like):
    """Wrap a Python number / array as a Tensor compatible with ``like`` (the dtype rule of
    docs/design.md: a Python scalar takes the tensor's floating dtype, so float32 stays
    float32)."""
    if isinstance(value, Tensor):
        return value
    if isinstance(value, (bool, int, float, np.number)) and not isinstance(value, np.ndarray):
        if like.dtype.kind == "f" or isinstance(value, (int, np.integer, bool)):
            dtype = like.dtype
        else:
            dtype = np.float32
        xp = backend.get_array_module(like.data)
        return Tensor._make(xp.asarray(value, dtype=dtype))
    return Tensor(value)


def _binary(a, b):
    if not isinstance(a, Tensor):
        a = _to_tensor_like(a, b)
    if not isinstance(b, Tensor):
        b = _to_tensor_like(b, a)
    return a, b


def _check_broadcast(name, a, b):
    try:
        np.broadcast_shapes(a.shape, b.shape)
    except ValueError:
        raise ValueError(f"{name}: shapes {a.shape} and {b.shape} cannot be broadcast together "
                         "(trailing dimensions must be equal or 1)") from None


def check_dim(dim, ndim, op="", shape=None):
    """``dim`` as a non-negative int, range-checked as PyTorch does.

    ``dim`` must be an integer (``operator.index``: 1.5 is a TypeError) in ``[-ndim, ndim)``;
    otherwise IndexError names the op, the dim and the shape. A 0-d tensor accepts -1 and 0
    (PyTorch's rule). Ops that add a dimension (``unsqueeze``, ``stack``) pass ``ndim + 1``.
    """
    try:
        d = operator.index(dim)
    except TypeError:
        raise TypeError(f"{op}: dim must be an integer, got {dim!r} "
                        f"({type(dim).__name__})") from None
    n = builtins.max(ndim, 1)
    if not -n <= d < n:
        where = f"a tensor of shape {tuple(shape)}" if shape is not None else f"{ndim} dimensions"
        raise IndexError(f"{op}: dim {d} is out of range for {where} (expected a dim in "
                         f"[{-n}, {n - 1}])")
    return d % n


def _norm_axis(axis, ndim, op="", shape=None):
    """A sorted tuple of non-negative axes (all axes for None), each range-checked."""
    if axis is None:
        return tuple(range(ndim))
    if not isinstance(axis, (tuple, list)):
        axis = (axis,)
    out = tuple(sorted(check_dim(a, ndim, op, shape) for a in axis))
    if len(set(out)) != len(out):
        raise ValueError(f"{op}: dim {tuple(axis)} repeats a dimension (shape {shape})")
    return out


def dim_args(op, dim=None, axis=None, keepdim=None, keepdims=None):
    """Merge PyTorch's ``dim``/``keepdim`` with NumPy's ``axis``/``keepdims`` (either spelling;
    ``dim`` and ``axis`` not both): returns ``(dim, keepdim)``, keeping dims if either asks."""
    if dim is not None and axis is not None:
        raise TypeError(f"{op}: got both dim={dim!r} and axis={axis!r}; they are the same "
                        "argument, pass one")
    return (dim if dim is not None else axis), bool(keepdim or keepdims)


def _expand_reduced(g, shape, axes, keepdims):
    """Broadcast a reduction's gradient back to the input ``shape``."""
    xp = backend.get_array_module(g)
    if not keepdims:
        for a in axes:
            g = xp.expand_dims(g, a)
    return xp.broadcast_to(g, shape)


# ----------------------------------------------------------------------------------------------
# device and dtype moves


class ToDevice(Function):
    def forward(self, x, device):
        self.src = backend.device_of(x)
        return backend.to_device(x, device)

    def backward(self, gy):
        return backend.to_device(gy, self.src)


class AsType(Function):
    def forward(self, x, dtype):
        self.src = x.dtype
        return x.astype(dtype)

    def backward(self, gy):
        return gy.astype(self.src)


class Clone(Function):
    def forward(self, x):
        return x.copy()

    def backward(self, gy):
        return gy


def clone(x):
    """A copy of ``x``'s data that stays in the graph."""
    return Clone.apply(x)


def to_device(x, device):
    return ToDevice.apply(x, device=device)


def astype(x, dtype):
    return AsType.apply(x, dtype=dtype)


# ----------------------------------------------------------------------------------------------
# arithmetic (broadcasting; gradients unbroadcast to each input's shape)


class Add(Function):
    def forward(self, a, b):
        self.shapes = a.shape, b.shape
        return a + b

    def backward(self, gy):
        return unbroadcast(gy, self.shapes[0]), unbroadcast(gy, self.shapes[1])


class Sub(Function):
    def forward(self, a, b):
        self.shapes = a.shape, b.shape
        return a - b

    def backward(self, gy):
        return unbroadcast(gy, self.shapes[0]), unbroadcast(-gy, self.shapes[1])


class Mul(Function):
    def forward(self, a, b):
        self.save_for_backward(a, b)
        return a * b

    def backward(self, gy):
        a, b = self.saved_arrays
        ga = unbroadcast(gy * b, a.shape) if self.needs_input_grad[0] else None
        gb = unbroadcast(gy * a, b.shape) if self.needs_input_grad[1] else None
        return ga, gb


class Div(Function):
    def forward(self, a, b):
        self.save_for_backward(a, b)
        return a / b

    def backward(self, gy):
        a, b = self.saved_arrays
        ga = unbroadcast(gy / b, a.shape) if self.needs_input_grad[0] else None
        gb = unbroadcast(-gy * a / (b * b), b.shape) if self.needs_input_grad[1] else None
        return ga, gb


class Neg(Function):
    def forward(self, x):
        return -x

    def backward(self, gy):
        return -gy


class Pow(Function):
    """a ** b: d/da = b a^(b-1); d/db = a^b log a (only where a > 0 matters)."""

    def forward(self, a, b):
        y = a ** b
        self.save_for_backward(a, b, y)
        return y

    def backward(self, gy):
        a, b, y = self.saved_arrays
        xp = backend.get_array_module(gy)
        ga = gb = None
        if self.needs_input_grad[0]:
            ga = unbroadcast(gy * b * a ** (b - 1), a.shape)
        if self.needs_input_grad[1]:
            with np.errstate(divide="ignore", invalid="ignore"):
                loga = xp.where(a > 0, xp.log(xp.where(a > 0, a, 1)), 0)
            gb = unbroadcast(gy * y * loga, b.shape)
        return ga, gb


class MatMul(Function):
    """a @ b with NumPy's rules (1-D operands, batched broadcasting)."""

    def forward(self, a, b):
        if a.ndim == 0 or b.ndim == 0:
            raise ValueError(f"matmul: 0-d operand (shapes {a.shape} and {b.shape}); use *")
        ka = a.shape[-1]
        kb = b.shape[-2] if b.ndim > 1 else b.shape[0]
        if ka != kb:
            raise ValueError(f"matmul: shapes {a.shape} and {b.shape} do not align "
                             f"({ka} != {kb} in the contracted dimension)")
        self.save_for_backward(a, b)
        return a @ b

    def backward(self, gy):
        a, b = self.saved_arrays
        xp = backend.get_array_module(gy)
        a2 = a[None, :] if a.ndim == 1 else a
        b2 = b[:, None] if b.ndim == 1 else b
        g2 = gy
        if a.ndim == 1:
            g2 = xp.expand_dims(g2, -2)
        if b.ndim == 1:
            g2 = xp.expand_dims(g2, -1)
        ga = gb = None
        if self.needs_input_grad[0]:
            ga = g2 @ xp.swapaxes(b2, -1, -2)
            ga = unbroadcast(ga, a2.shape).reshape(a.shape)
        if self.needs_input_grad[1]:
            gb = xp.swapaxes(a2, -1, -2) @ g2
            gb = unbroadcast(gb, b2.shape).reshape(b.shape)
        return ga, gb


class Abs(Function):
    def forward(self, x):
        self.save_for_backward(x)
        return backend.get_array_module(x).abs(x)

    def backward(self, gy):
        (x,) = self.saved_arrays
        xp = backend.get_array_module(x)
        return gy * xp.sign(x)


def add(a, b):
    a, b = _binary(a, b)
    _check_broadcast("add", a, b)
    return Add.apply(a, b)


def sub(a, b):
    a, b = _binary(a, b)
    _check_broadcast("sub", a, b)
    return Sub.apply(a, b)


def mul(a, b):
    a, b = _binary(a, b)
    _check_broadcast("mul", a, b)
    return Mul.apply(a, b)


def div(a, b):
    a, b = _binary(a, b)
    _check_broadcast("div", a, b)
    return Div.apply(a, b)


def neg(x):
    return Neg.apply(x)


def pow(a, b):
    a, b = _binary(a, b)
    _check_broadcast("pow", a, b)
    return Pow.apply(a, b)


def matmul(a, b):
    a, b = _binary(a, b)
    return MatMul.apply(a, b)


def abs(x):
    return Abs.apply(x)


# ----------------------------------------------------------------------------------------------
# elementwise functions


class Exp(Function):
    def forward(self, x):
        xp = backend.get_array_module(x)
        y = xp.exp(x)
        self.save_for_backward(y)
        return y

    def backward(self, gy):
        (y,) = self.saved_arrays
        return gy * y


class Log(Function):
    def forward(self, x):
        xp = backend.get_array_module(x)
        self.save_for_backward(x)
        return xp.log(x)

    def backward(self, gy):
        (x,) = self.saved_arrays
        return gy / x


class Sqrt(Function):
    def forward(self, x):
        xp = backend.get_array_module(x)
        y = xp.sqrt(x)
        self.save_for_backward(y)
        return y

    def backward(self, gy):
        (y,) = self.saved_arrays
        return gy / (2 * y)


class TanhFunction(Function):
    def forward(self, x):
        xp = backend.get_array_module(x)
        y = xp.tanh(x)
        self.save_for_backward(y)
        return y

    def backward(self, gy):
        (y,) = self.saved_arrays
        return gy * (1 - y * y)


class SigmoidFunction(Function):
    def forward(self, x):
        xp = backend.get_array_module(x)
        # numerically stable for large |x|: 0.5 * (1 + tanh(x/2))
        y = 0.5 * (1 + xp.tanh(0.5 * x))
        y = y.astype(x.dtype, copy=False)
        self.save_for_backward(y)
        return y

    def backward(self, gy):
        (y,) = self.saved_arrays
        return gy * y * (1 - y)


class ReLUFunction(Function):
    """max(0, x); the gradient at x = 0 is 0 (x <= 0 is the inactive side)."""

    def forward(self, x):
        xp = backend.get_array_module(x)
        y = xp.maximum(x, 0)
        self.save_for_backward(y)
        return y

    def backward(self, gy):
        (y,) = self.saved_arrays
        return gy * (y > 0)


class Clip(Function):
    def forward(self, x, lo, hi):
        xp = backend.get_array_module(x)
        self.save_for_backward(x)
        self.lo, self.hi = lo, hi
        return xp.clip(x, lo, hi)

    def backward(self, gy):
        (x,) = self.saved_arrays
        mask = True
        if self.lo is not None:
            mask = mask & (x >= self.lo)
        if self.hi is not None:
            mask = mask & (x <= self.hi)
        return gy * mask


class Where(Function):
    def forward(self, a, b, cond):
        xp = backend.get_array_module(a)
        self.cond = cond
        self.shapes = a.shape, b.shape
        return xp.where(cond, a, b)

    def backward(self, gy):
        xp = backend.get_array_module(gy)
        zero = xp.zeros((), dtype=gy.dtype)
        ga = unbroadcast(xp.where(self.cond, gy, zero), self.shapes[0]) \
            if self.needs_input_grad[0] else None
        gb = unbroadcast(xp.where(self.cond, zero, gy), self.shapes[1]) \
            if self.needs_input_grad[1] else None
        return ga, gb


def exp(x):
    return Exp.apply(x)


def log(x):
    return Log.apply(x)


def sqrt(x):
    return Sqrt.apply(x)


def tanh(x):
    return TanhFunction.apply(x)


def sigmoid(x):
    return SigmoidFunction.apply(x)


def relu(x):
    if x.dtype == np.bool_ or x.dtype.kind == "c":
        raise TypeError(f"relu: not defined for {x.dtype} tensors (shape {x.shape}); convert "
                        f"with .float() first")
    return ReLUFunction.apply(x)


def clip(x, min=None, max=None):
    return Clip.apply(x, lo=min, hi=max)


def where(cond, a, b):
    """``cond ? a : b`` elementwise; gradients flow to a and b (not to the condition)."""
    if isinstance(a, Tensor) or not isinstance(b, Tensor):
        a, b = _binary(a, b)
    else:
        b, a = _binary(b, a)
    c = cond.data if isinstance(cond, Tensor) else cond
    return Where.apply(a, b, cond=c)


def maximum(a, b):
    """Elementwise max; ties send the gradient to ``a``."""
    a, b = _binary(a, b)
    return where(a.data >= b.data, a, b)


def minimum(a, b):
    a, b = _binary(a, b)
    return where(a.data <= b.data, a, b)


# ----------------------------------------------------------------------------------------------
# reductions


class Sum(Function):
    def forward(self, x, axis, keepdims):
        self.shape, self.axes, self.keepdims = x.shape, _norm_axis(axis, x.ndim, "sum",
                                                                   x.shape), keepdims
        return x.sum(axis=self.axes, keepdims=keepdims)

    def backward(self, gy):
        return _expand_reduced(gy, self.shape, self.axes, self.keepdims)


class Mean(Function):
    def forward(self, x, axis, keepdims):
        self.shape, self.axes, self.keepdims = x.shape, _norm_axis(axis, x.ndim, "mean",
                                                                   x.shape), keepdims
        self.n = int(np.prod([x.shape[a] for a in self.axes])) if self.axes else 1
        return x.mean(axis=self.axes, keepdims=keepdims)

    def backward(self, gy):
        return _expand_reduced(gy / self.n, self.shape, self.axes, self.keepdims)


class Max(Function):
    """max over axes; the gradient is shared equally among tied maxima (NaN propagates)."""

    def forward(self, x, axis, keepdims, mode):
        self.axes, self.keepdims = _norm_axis(axis, x.ndim, mode, x.shape), keepdims
        if x.size == 0:
            raise ValueError(f"{mode}() of an empty tensor of shape {x.shape}")
        y = x.max(axis=self.axes, keepdims=True) if mode == "max" \
            else x.min(axis=self.axes, keepdims=True)
        self.save_for_backward(x, y)
        return y if keepdims else y.squeeze(axis=self.axes)

    def backward(self, gy):
        x, y = self.saved_arrays
        xp = backend.get_array_module(x)
        mask = (x == y) | (xp.isnan(x) & xp.isnan(y))
        count = mask.sum(axis=self.axes, keepdims=True)
        g = gy if self.keepdims else xp.expand_dims(gy, self.axes)
        return mask * (g / count)


class IndexReduce(Function):
    """max/min along one dim at given indices (PyTorch's ``max(dim)``): the gradient goes to the
    selected element only (the first of tied maxima, as the indices say)."""

    def forward(self, x, axis, keepdims, idx):
        xp = backend.get_array_module(x)
        self.shape, self.axis, self.keepdims, self.idx = x.shape, axis, keepdims, idx
        y = xp.take_along_axis(x, idx, axis=axis)
        return y if keepdims else y.squeeze(axis)

    def backward(self, gy):
        xp = backend.get_array_module(gy)
        g = gy if self.keepdims else xp.expand_dims(gy, self.axis)
        pos = xp.arange(self.shape[self.axis]).reshape(
            [-1 if i == self.axis else 1 for i in range(len(self.shape))])
        return xp.where(pos == self.idx, g, xp.zeros((), dtype=gy.dtype))


ValuesIndices = namedtuple("ValuesIndices", ["values", "indices"])
ValuesIndices.__doc__ = "What ``Tensor.max(dim)`` / ``min(dim)`` return, as torch's return types."


def sum(x, axis=None, keepdims=False, *, dim=None, keepdim=None):
    """Sum over ``axis``/``dim`` (all by default)."""
    axis, keepdims = dim_args("sum", dim, axis, keepdim, keepdims)
    return Sum.apply(x, axis=axis, keepdims=keepdims)


def mean(x, axis=None, keepdims=False, *, dim=None, keepdim=None):
    """Mean over ``axis``/``dim`` (all by default)."""
    axis, keepdims = dim_args("mean", dim, axis, keepdim, keepdims)
    return Mean.apply(x, axis=axis, keepdims=keepdims)


def max(x, axis=None, keepdims=False):
    """Largest values over ``axis`` (NumPy's amax; ties share the gradient)."""
    return Max.apply(x, axis=axis, keepdims=keepdims, mode="max")


def min(x, axis=None, keepdims=False):
    """Smallest values over ``axis`` (NumPy's amin; ties share the gradient)."""
    return Max.apply(x, axis=axis, keepdims=keepdims, mode="min")


def max_dim(x, dim, keepdim=False, mode="max"):
    """PyTorch's ``max(x, dim)``: ``(values, indices)``; the gradient reaches the indexed
    elements only. ``mode="min"`` for ``min(x, dim)``."""
    d = check_dim(dim, x.ndim, mode, x.shape)
    if x.ndim == 0:
        x = reshape(x, 1)
    if x.shape[d] == 0:
        raise IndexError(f"{mode}(dim={dim}): the dimension is empty in shape {x.shape}")
    xa = x.data
    xp = backend.get_array_module(xa)
    idx = xp.expand_dims(xa.argmax(axis=d) if mode == "max" else xa.argmin(axis=d), d)
    idx = idx.astype(np.int64)
    values = IndexReduce.apply(x, axis=d, keepdims=keepdim, idx=idx)
    return ValuesIndices(values, Tensor._make(idx if keepdim else idx.squeeze(d)))


def var(x, axis=None, keepdims=False, ddof=0):
    """Variance (biased by default; ``ddof=1`` for the unbiased estimate)."""
    axes = _norm_axis(axis, x.ndim, "var", x.shape)
    n = int(np.prod([x.shape[a] for a in axes])) if axes else 1
    d = x - mean(x, axis=axes, keepdims=True)
    return sum(d * d, axis=axes, keepdims=keepdims) / builtins.max(n - ddof, 1)


def argmax(x, axis=None, keepdims=False, *, dim=None, keepdim=None):
    """Indices of the maxima (no gradient; int64); over the flattened tensor by default."""
    axis, keepdims = dim_args("argmax", dim, axis, keepdim, keepdims)
    if axis is not None:
        axis = check_dim(axis, x.ndim, "argmax", x.shape)
    return _arg_reduce(x.data.argmax(axis=axis), x.ndim, axis, keepdims)


def argmin(x, axis=None, keepdims=False, *, dim=None, keepdim=None):
    """Indices of the minima (no gradient; int64); over the flattened tensor by default."""
    axis, keepdims = dim_args("argmin", dim, axis, keepdim, keepdims)
    if axis is not None:
        axis = check_dim(axis, x.ndim, "argmin", x.shape)
    return _arg_reduce(x.data.argmin(axis=axis), x.ndim, axis, keepdims)


def _arg_reduce(idx, ndim, axis, keepdims):
    if keepdims:  # (expand_dims: CuPy's argmax has no keepdims)
        xp = backend.get_array_module(idx)
        idx = xp.reshape(idx, (1,) * ndim) if axis is None else xp.expand_dims(idx, axis)
    return Tensor._make(idx.astype(np.int64))


def compare(a, b, op):
    """Elementwise comparison; a boolean tensor with no gradient."""
    a, b = _binary(a, b)
    x, y = a.data, b.data
    out = {"eq": lambda: x == y, "ne": lambda: x != y, "lt": lambda: x < y,
           "le": lambda: x <= y, "gt": lambda: x > y, "ge": lambda: x >= y}[op]()
    return Tensor._make(out)


# ----------------------------------------------------------------------------------------------
# shapes


class Reshape(Function):
    def forward(self, x, shape):
        self.shape = x.shape
        try:
            return x.reshape(shape)
        except ValueError:
            raise ValueError(f"reshape: cannot reshape a tensor of shape {x.shape} "
                             f"({x.size} elements) into {shape}") from None

    def backward(self, gy):
        return gy.reshape(self.shape)


class Transpose(Function):
    def forward(self, x, axes):
        self.axes = axes
        return x.transpose(axes)

    def backward(self, gy):
        return gy.transpose(np.argsort(self.axes))


class GetItem(Function):
    """x[index] for basic (slices, ints, None, Ellipsis) and integer/boolean-array indexing.

    Backward scatters with ``add.at`` when the index is advanced (repeated indices accumulate).
    """

    def forward(self, x, index):
        self.shape, self.index, self.dtype = x.shape, index, x.dtype
        self.advanced = _is_advanced(index)
        return x[index]

    def backward(self, gy):
        xp = backend.get_array_module(gy)
        gx = xp.zeros(self.shape, dtype=gy.dtype)
        if self.advanced:
            xp.add.at(gx, self.index, gy)
        else:
            gx[self.index] = gy
        return gx


class Pad(Function):
    """Constant padding with NumPy's ``pad_width`` ((before, after) per axis)."""

    def forward(self, x, pad_width, value):
        xp = backend.get_array_module(x)
        self.slices = tuple(slice(b, b + n) for (b, _), n in zip(pad_width, x.shape))
        return xp.pad(x, pad_width, mode="constant", constant_values=value)

    def backward(self, gy):
        return gy[self.slices]


class Concatenate(Function):
    def forward(self, *xs, axis):
        xp = backend.get_array_module(*xs)
        self.axis = axis
        self.bounds = np.cumsum([x.shape[axis] for x in xs])[:-1]
        return xp.concatenate(xs, axis=axis)

    def backward(self, gy):
        xp = backend.get_array_module(gy)
        return tuple(xp.split(gy, self.bounds, axis=self.axis))


class Stack(Function):
    def forward(self, *xs, axis):
        xp = backend.get_array_module(*xs)
        self.axis = axis
        return xp.stack(xs, axis=axis)

    def backward(self, gy):
        xp = backend.get_array_module(gy)
        n = gy.shape[self.axis]
        return tuple(xp.take(gy, i, axis=self.axis) for i in range(n))


def _is_advanced(index):
    items = index if isinstance(index, tuple) else (index,)
    cp = backend.cupy_module()
    for it in items:
        if isinstance(it, (list, np.ndarray)) or (cp is not None and isinstance(it, cp.ndarray)):
            return True
    return False


def _clean_index(index):
    """Tensors inside an index become their arrays."""
    if isinstance(index, Tensor):
        return index.data
    if isinstance(index, tuple):
        return tuple(i.data if isinstance(i, Tensor) else i for i in index)
    return index


def reshape(x, *shape):
    from minidl.tensor import _check_shape_args
    return Reshape.apply(x, shape=_check_shape_args(shape, "reshape"))


def transpose(x, *axes):
    """Permute axes (NumPy's transpose: no axes reverses them)."""
    if len(axes) == 1 and isinstance(axes[0], (tuple, list)):
        axes = tuple(axes[0])
    if not axes:
        axes = tuple(reversed(range(x.ndim)))
    axes = tuple(check_dim(a, x.ndim, "transpose", x.shape) for a in axes) if x.ndim else ()
    if sorted(axes) != list(range(x.ndim)):
        raise ValueError(f"transpose: axes {axes} are not a permutation of the {x.ndim} "
                         f"dimensions of a tensor of shape {x.shape}")
    return Transpose.apply(x, axes=axes)


def permute(x, *axes):
    return transpose(x, *axes)


def flatten(x, start_dim=0, end_dim=-1):
    """Merge dimensions start_dim..end_dim (inclusive) into one, as torch.flatten."""
    s = check_dim(start_dim, x.ndim, "flatten", x.shape)
    e = check_dim(end_dim, x.ndim, "flatten", x.shape)
    if x.ndim == 0:
        return reshape(x, 1)
    if s > e:
        raise ValueError(f"flatten: start_dim {start_dim} comes after end_dim {end_dim} for "
                         f"shape {x.shape}")
    shape = x.shape[:s] + (int(np.prod(x.shape[s:e + 1])),) + x.shape[e + 1:]
    return reshape(x, shape)


def squeeze(x, axis=None):
    if axis is None:
        shape = tuple(n for n in x.shape if n != 1)
    else:
        axes = _norm_axis(axis, x.ndim, "squeeze", x.shape)
        for a in axes:
            if x.shape[a] != 1:
                raise ValueError(f"squeeze: axis {a} of shape {x.shape} is not 1")
        shape = tuple(n for i, n in enumerate(x.shape) if i not in axes)
    return reshape(x, shape)


def unsqueeze(x, axis):
    """Insert a dimension of size 1 at ``axis`` (in ``[-ndim-1, ndim]``)."""
    axis = check_dim(axis, x.ndim + 1, "unsqueeze", x.shape)
    return reshape(x, x.shape[:axis] + (1,) + x.shape[axis:])


def getitem(x, index):
    return GetItem.apply(x, index=_clean_index(index))


def pad(x, pad_width, value=0.0):
    """Constant-pad ``x``; ``pad_width`` as NumPy: an int, or (before, after) per axis."""
    if isinstance(pad_width, int):
        pad_width = ((pad_width, pad_width),) * x.ndim
    pad_width = tuple((int(b), int(a)) for b, a in pad_width)
    if len(pad_width) != x.ndim:
        raise ValueError(f"pad: pad_width has {len(pad_width)} entries for a tensor with "
                         f"{x.ndim} dimensions (shape {x.shape})")
    return Pad.apply(x, pad_width=pad_width, value=value)


def concatenate(tensors, axis=0, *, dim=None):
    """Join tensors along an existing axis (``dim=`` as torch.cat; differentiable)."""
    axis = dim_args("concatenate", dim, None if dim is not None else axis)[0]
    tensors = [t if isinstance(t, Tensor) else Tensor(t) for t in tensors]
    if not tensors:
        raise ValueError("concatenate: need at least one tensor")
    ref = tensors[0]
    if ref.ndim == 0:
        raise ValueError("concatenate: zero-dimensional tensors cannot be concatenated; use stack")
    ax = check_dim(axis, ref.ndim, "concatenate", ref.shape)
    for t in tensors:
        if t.ndim != ref.ndim or t.shape[:ax] + t.shape[ax + 1:] != ref.shape[:ax] + ref.shape[ax + 1:]:
            raise ValueError("concatenate: shapes " + ", ".join(str(u.shape) for u in tensors) +
                             f" differ outside axis {axis}")
    return Concatenate.apply(*tensors, axis=ax)


def stack(tensors, axis=0, *, dim=None):
    """Join tensors of one shape along a new axis (``dim=`` as torch.stack; differentiable)."""
    axis = dim_args("stack", dim, None if dim is not None else axis)[0]
    tensors = [t if isinstance(t, Tensor) else Tensor(t) for t in tensors]
    if not tensors:
        raise ValueError("stack: need at least one tensor")
    if len({t.shape for t in tensors}) != 1:
        raise ValueError("stack: all shapes must be equal, got " +
                         ", ".join(str(t.shape) for t in tensors))
    return Stack.apply(*tensors, axis=check_dim(axis, tensors[0].ndim + 1, "stack",
                                                tensors[0].shape))


cat = concatenate
