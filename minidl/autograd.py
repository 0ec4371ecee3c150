"""Custom differentiable operations the way PyTorch writes them: ``minidl.autograd.Function``.

A port of a ``torch.autograd.Function`` changes only its imports::

    from minidl.autograd import Function

    class Exp(Function):
        @staticmethod
        def forward(ctx, x):
            y = x.exp()                      # or np.exp(x): NumPy arithmetic on Tensors works
            ctx.save_for_backward(y)
            return y

        @staticmethod
        def backward(ctx, grad_output):
            (y,) = ctx.saved_tensors
            return grad_output * y           # a Tensor or an array

    y = Exp.apply(x)

It is an adapter over the engine's own :class:`minidl.tensor.Function` (one graph node per
call), not a second engine:

* ``forward(ctx, *args, **kwargs)`` gets the arguments as passed (Tensors stay Tensors) and runs
  under ``no_grad()``; it returns a Tensor, an array, or a tuple of them. Tensors mix with NumPy
  arrays in arithmetic, and NumPy functions accept them (``np.exp(x)`` gives an array).
* ``backward(ctx, *grad_outputs)`` gets one Tensor per output (zeros for outputs that received
  no gradient, unless ``ctx.set_materialize_grads(False)``; then None) and returns one gradient
  per argument of ``forward`` (None for non-Tensors and for inputs that need none), as Tensors,
  arrays or numbers; it runs under ``no_grad()`` (no double backward).
* ``ctx.save_for_backward(*tensors)`` / ``ctx.saved_tensors``: the Tensors' versions are
  recorded, and backward raises if one was changed in place in between (as PyTorch).
  ``ctx.needs_input_grad``: one bool per forward argument. ``ctx.mark_non_differentiable(*outs)``:
  those outputs do not require grad. Other attributes set on ``ctx`` are kept for backward.

Differences from PyTorch: no double backward (``create_graph``), no ``ctx.mark_dirty`` (an
in-place forward is not supported: return a new Tensor), no ``setup_context``/``vmap``; the
in-place check of a saved *output* covers single-output Functions.
"""
import numpy as np

from minidl import backend
from minidl.tensor import Function as _EngineFunction
from minidl.tensor import RemovableHandle, Tensor, _is_array, is_grad_enabled, no_grad

__all__ = ["Function", "FunctionCtx", "once_differentiable", "RemovableHandle"]


class FunctionCtx:
    """The ``ctx`` handed to a custom Function's ``forward`` and ``backward``."""

    def __init__(self, needs_input_grad):
        self.needs_input_grad = needs_input_grad
        self._saved = ()
        self._saved_versions = ()
        self._non_differentiable = set()
        self.materialize_grads = True

    def save_for_backward(self, *tensors):
        """Keep Tensors (or None) for backward; read them back as ``ctx.saved_tensors``."""
        for i, t in enumerate(tensors):
            if t is not None and not isinstance(t, Tensor):
                raise TypeError(f"save_for_backward: argument {i} is a {type(t).__name__}; only "
                                "Tensors (or None) can be saved; keep other values as ctx "
                                "attributes")
        self._saved = tensors
        self._saved_versions = tuple(None if t is None else t._version for t in tensors)

    @property
    def saved_tensors(self):
        """The Tensors given to :meth:`save_for_backward` (checked for in-place changes)."""
        for t, v in zip(self._saved, self._saved_versions):
            if t is not None and t._version != v:
                raise RuntimeError(
                    "one of the variables needed for gradient computation has been modified by "
                    f"an in-place operation: [{t.dtype} tensor of shape {list(t.shape)}], saved "
                    f"by ctx.save_for_backward, is at version {t._version}; expected version {v} "
                    "instead")
        return self._saved

    def mark_non_differentiable(self, *outputs):
        """Declare outputs (e.g. indices) that do not require grad."""
        self._non_differentiable.update(id(o) for o in outputs)

    def set_materialize_grads(self, value):
        """False: backward gets None (not zeros) for outputs that received no gradient."""
        self.materialize_grads = bool(value)


def once_differentiable(fn):
    """PyTorch's decorator for backward methods; minidl never builds a graph in backward, so
    it returns ``fn`` unchanged."""
    return fn


class _Node(_EngineFunction):
    """The engine node of one custom-Function call (one subclass per user class, named after
    it so ``grad_fn`` prints ``<MyFuncBackward>``)."""

    def forward(self, *arrays, out, call):
        self.call = call
        return out

    def backward(self, gy):
        call = self.call
        if call.n_outputs == 1:
            grads = [gy]
        else:
            grads = [call.output_grads.get(k) for k in range(call.n_outputs)]
        return call.run_backward(grads)


class _Select(_EngineFunction):
    """Output k of a multi-output custom Function: hands its gradient to the shared node."""

    def forward(self, token, x, index, call):
        self.index, self.call, self.token_dtype = index, call, token.dtype
        return x

    def backward(self, gy):
        self.call.output_grads[self.index] = gy
        return backend.get_array_module(gy).zeros((0,), dtype=self.token_dtype), None


class _Call:
    """What one call shares between its node(s) and the user's backward."""

    def __init__(self, cls, ctx, args, tensor_pos, outputs):
        self.cls, self.ctx, self.n_args = cls, ctx, len(args)
        self.tensor_pos = tensor_pos                     # arg positions of the node's parents
        self.input_meta = [(args[i].shape, args[i].dtype,
                            backend.get_array_module(args[i].data)) for i in tensor_pos]
        self.outputs = outputs                           # (shape, dtype, xp) per output
        self.n_outputs = len(outputs)
        self.output_grads = {}

    def run_backward(self, grads):
        ctx = self.ctx
        gs = []
        for g, (shape, dtype, xp) in zip(grads, self.outputs):
            if g is None and ctx.materialize_grads:
                g = xp.zeros(shape, dtype=dtype)
            gs.append(None if g is None else Tensor._make(g))
        with no_grad():
            result = self.cls.backward(ctx, *gs)
        if not isinstance(result, tuple):
            result = (result,)
        name = self.cls.__name__
        if len(result) != self.n_args:
            raise RuntimeError(f"{name}.backward returned {len(result)} gradients; expected "
                               f"{self.n_args} (one per argument of forward, None for those "
                               "that need none)")
        out = []
        for slot, pos in enumerate(self.tensor_pos):
            g = result[pos]
            shape, dtype, xp = self.input_meta[slot]
            if g is None or not ctx.needs_input_grad[pos]:
                out.append(None)
                continue
            g = g._data if isinstance(g, Tensor) else g
            if not hasattr(g, "shape") or backend.get_array_module(g) is not xp:
                g = xp.asarray(g, dtype=dtype)  # a number, or a NumPy array for a GPU input
            if tuple(g.shape) != tuple(shape):
                if g.ndim == 0:
                    g = xp.broadcast_to(g, shape)
                else:
                    raise RuntimeError(f"{name}.backward returned a gradient of shape "
                                       f"{tuple(g.shape)} for argument {pos} of shape "
                                       f"{tuple(shape)}")
            out.append(g)
        return tuple(out)


def _as_output(value, cls, k):
    if isinstance(value, Tensor):
        return value
    if _is_array(value):
        return Tensor._make(value)
    if isinstance(value, (np.generic, int, float)) and not isinstance(value, bool):
        return Tensor._make(np.asarray(value))
    raise TypeError(f"{cls.__name__}.forward returned a {type(value).__name__} as output {k}; "
                    "return Tensors or arrays")


class Function:
    """Base class of custom differentiable operations with PyTorch's API (see the module
    docstring): subclasses define static ``forward(ctx, ...)`` and ``backward(ctx, ...)`` and
    are called through ``MyFunction.apply(...)``."""

    @staticmethod
    def forward(ctx, *args, **kwargs):  # pragma: no cover - abstract
        raise NotImplementedError("a custom Function must define forward(ctx, ...)")

    @staticmethod
    def backward(ctx, *grad_outputs):  # pragma: no cover - abstract
        raise NotImplementedError("a custom Function must define backward(ctx, ...)")

    @classmethod
    def _node_classes(cls):
        nodes = cls.__dict__.get("_minidl_nodes")
        if nodes is None:
            nodes = (type(cls.__name__, (_Node,), {"__module__": cls.__module__}),
                     type(cls.__name__, (_Select,), {"__module__": cls.__module__}))
            cls._minidl_nodes = nodes
        return nodes

    @classmethod
    def apply(cls, *args, **kwargs):
        """Run ``forward`` and, when an argument requires grad, link one graph node."""
        tensor_pos = [i for i, a in enumerate(args) if isinstance(a, Tensor)]
        record = is_grad_enabled() and any(args[i].requires_grad for i in tensor_pos)
        needs = tuple(isinstance(a, Tensor) and a.requires_grad and record for a in args)
        ctx = FunctionCtx(needs)
        with no_grad():
            raw = cls.forward(ctx, *args, **kwargs)
        single = not isinstance(raw, (tuple, list))
        outs = [_as_output(o, cls, k) for k, o in enumerate([raw] if single else raw)]
        # Outputs are new Tensors (a forward that returns an input gets a new object for it).
        outs = [Tensor._make(o._data) for o in outs]
        if not record:
            return outs[0] if single else tuple(outs)
        meta = [(o.shape, o.dtype, backend.get_array_module(o._data)) for o in outs]
        call = _Call(cls, ctx, args, tensor_pos, meta)
        node_cls, select_cls = cls._node_classes()
        parents = [args[i] for i in tensor_pos]
        differentiable = [id(r) not in ctx._non_differentiable and o.dtype.kind in "fc"
                          for r, o in zip([raw] if single else raw, outs)]
        if single:
            if not differentiable[0]:
                return outs[0]
            result = node_cls.apply(*parents, out=outs[0]._data, call=call)
            returned = raw if isinstance(raw, Tensor) else None
            if returned is not None and any(t is returned for t in ctx._saved):
                result._ctx._saves_output = True  # an in-place change of the output is caught
            return result
        xp = meta[0][2]
        token = node_cls.apply(*parents, out=xp.zeros((0,), dtype=parents[0].dtype), call=call)
        results = []
        for k, o in enumerate(outs):
            if differentiable[k]:
                o = select_cls.apply(token, o, index=k, call=call)
            results.append(o)
        return tuple(results)
