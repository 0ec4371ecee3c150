"""``Module``, ``Parameter``, ``Sequential`` and ``ModuleList``, the way PyTorch users know them.

A Module registers what is assigned to it: a :class:`Parameter` becomes a parameter, a Module a
submodule, and ``register_buffer(name, tensor)`` a buffer (state that is saved but not trained,
like batch norm's running statistics). All three are kept in registration order (dicts, never
sets), so ``state_dict()`` keys, optimizer state and results are deterministic for a seed.
"""
from collections import OrderedDict, namedtuple
from collections.abc import Mapping

import numpy as np

from minidl import backend
from minidl.tensor import Function, RemovableHandle, Tensor, _is_array, is_grad_enabled

IncompatibleKeys = namedtuple("IncompatibleKeys", ["missing_keys", "unexpected_keys"])
IncompatibleKeys.__doc__ = ("What :meth:`Module.load_state_dict` returns: the module's keys the "
                            "state dict lacked and the state dict's keys the module lacks.")


class StateDictError(KeyError, RuntimeError):
    """Missing or unexpected keys in a strict ``load_state_dict`` (a KeyError as minidl always
    raised, and a RuntimeError as torch raises)."""

    def __str__(self):
        return str(self.args[0]) if self.args else ""


class Parameter(Tensor):
    """A Tensor that is a trainable parameter of a Module (``requires_grad=True`` by default)."""

    def __init__(self, data, requires_grad=True):
        super().__init__(data, requires_grad=requires_grad)

    def __repr__(self):
        return "Parameter containing:\n" + super().__repr__()


class Module:
    """Base class of layers and models: subclasses set attributes in ``__init__`` and define
    ``forward``; calling the module runs ``forward`` and then the forward hooks."""

    def __init__(self):
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "_forward_hooks", OrderedDict())
        object.__setattr__(self, "_backward_hooks", OrderedDict())
        object.__setattr__(self, "training", True)

    # -- registration ----------------------------------------------------------------------
    def _check_init(self):
        if "_parameters" not in self.__dict__:
            raise RuntimeError(f"{type(self).__name__}.__init__ must call super().__init__() "
                               "before assigning parameters or submodules")

    def __setattr__(self, name, value):
        if isinstance(value, Parameter):
            self._check_init()
            self._remove(name)
            self._parameters[name] = value
        elif isinstance(value, Module):
            self._check_init()
            self._remove(name)
            self._modules[name] = value
        elif "_parameters" in self.__dict__ and name in self._parameters:
            if value is not None:
                raise TypeError(f"cannot assign {type(value).__name__} to parameter {name!r} of "
                                f"{type(self).__name__} (expected a Parameter or None)")
            self._parameters[name] = None
        elif "_buffers" in self.__dict__ and name in self._buffers:
            if value is not None and not isinstance(value, Tensor):
                raise TypeError(f"cannot assign {type(value).__name__} to buffer {name!r} "
                                "(expected a Tensor or None)")
            self._buffers[name] = value
        elif "_modules" in self.__dict__ and name in self._modules and value is None:
            self._modules[name] = None
        else:
            object.__setattr__(self, name, value)

    def _remove(self, name):
        for d in (self._parameters, self._buffers, self._modules):
            d.pop(name, None)
        self.__dict__.pop(name, None)

    def __getattr__(self, name):
        # only called when normal lookup fails
        d = self.__dict__
        for store in ("_parameters", "_buffers", "_modules"):
            if store in d and name in d[store]:
                return d[store][name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __delattr__(self, name):
        for store in (self._parameters, self._buffers, self._modules):
            if name in store:
                del store[name]
                return
        object.__delattr__(self, name)

    def register_buffer(self, name, tensor):
        """Register ``tensor`` (a Tensor or None) as saved, untrained state called ``name``."""
        self._check_init()
        if tensor is not None and not isinstance(tensor, Tensor):
            tensor = Tensor(tensor)
        if "." in name or not name:
            raise KeyError(f"buffer name {name!r} must be a non-empty name without dots")
        self._remove(name)
        self._buffers[name] = tensor

    def register_parameter(self, name, param):
        self._check_init()
        if param is not None and not isinstance(param, Parameter):
            raise TypeError(f"register_parameter({name!r}): expected a Parameter or None, got "
                            f"{type(param).__name__}")
        self._remove(name)
        self._parameters[name] = param

    def add_module(self, name, module):
        self._check_init()
        self._remove(name)
        self._modules[name] = module

    # -- forward and hooks -------------------------------------------------------------------
    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} does not define forward()")

    def __call__(self, *args, **kwargs):
        if self.__dict__.get("_backward_hooks") and is_grad_enabled():
            return _call_with_backward_hooks(self, args, kwargs)
        return self._call_forward(args, kwargs)

    def _call_forward(self, args, kwargs):
        out = self.forward(*args, **kwargs)
        for hook in list(self._forward_hooks.values()):
            r = hook(self, args, out)
            if r is not None:
                out = r
        return out

    def register_forward_hook(self, hook):
        """``hook(module, inputs, output)`` runs after every forward; returning a value replaces
        the output. Returns a handle with ``.remove()``."""
        return RemovableHandle(self._forward_hooks, hook)

    def register_full_backward_hook(self, hook):
        """``hook(module, grad_input, grad_output) -> tuple or None`` runs in backward, once the
        gradients with respect to the module's inputs are computed (PyTorch's semantics).

        ``grad_output`` is a tuple with the gradient for each Tensor the forward returned (the
        output itself, or the items of a returned tuple/list); ``grad_input`` one entry per
        positional argument of the call: the gradient with respect to it, or None for
        arguments that are not Tensors requiring grad (keyword arguments are not included).
        Returning a tuple of the same length replaces ``grad_input`` for the rest of the
        backward pass. When no input requires grad (a first layer fed with data), the hook runs
        with ``grad_input`` all None as soon as ``grad_output`` is known. Hooks are wired in
        when the module is called with grad enabled, so calls under ``no_grad()`` never run
        them. The hook must not change its arguments in place.

        Differences from PyTorch: the module's inputs and outputs are passed through identity
        nodes (as PyTorch does), so inside ``forward`` they are new Tensor objects; with several
        outputs, the hook of a module none of whose inputs requires grad waits for the gradient
        of every output that requires grad (an output never used in the loss means it does not
        run). Returns a handle with ``.remove()``.
        """
        return RemovableHandle(self._backward_hooks, hook)

    # -- traversal ---------------------------------------------------------------------------
    def named_modules(self, prefix=""):
        """(dotted name, module) for this module and every descendant, depth first, each once."""
        seen = set()
        stack = [(prefix, self)]
        while stack:
            name, m = stack.pop()
            if id(m) in seen:
                continue
            seen.add(id(m))
            yield name, m
            children = [(f"{name}.{n}" if name else n, c) for n, c in m._modules.items()
                        if c is not None]
            stack.extend(reversed(children))

    def modules(self):
        for _, m in self.named_modules():
            yield m

    def named_children(self):
        for n, m in self._modules.items():
            if m is not None:
                yield n, m

    def children(self):
        for _, m in self.named_children():
            yield m

    def named_parameters(self, prefix="", recurse=True):
        """(dotted name, Parameter) in registration order; shared parameters appear once."""
        seen = set()
        mods = self.named_modules(prefix) if recurse else [(prefix, self)]
        for mname, m in mods:
            for n, p in m._parameters.items():
                if p is None or id(p) in seen:
                    continue
                seen.add(id(p))
                yield (f"{mname}.{n}" if mname else n), p

    def parameters(self, recurse=True):
        for _, p in self.named_parameters(recurse=recurse):
            yield p

    def named_buffers(self, prefix="", recurse=True):
        mods = self.named_modules(prefix) if recurse else [(prefix, self)]
        for mname, m in mods:
            for n, b in m._buffers.items():
                if b is not None:
                    yield (f"{mname}.{n}" if mname else n), b

    def buffers(self, recurse=True):
        for _, b in self.named_buffers(recurse=recurse):
            yield b

    def num_parameters(self, trainable_only=False):
        """Total number of parameter elements."""
        return int(sum(p.numel() for p in self.parameters()
                       if p.requires_grad or not trainable_only))

    # -- modes and devices -------------------------------------------------------------------
    def train(self, mode=True):
        """Set training mode here and in every submodule; returns self."""
        for m in self.modules():
            object.__setattr__(m, "training", bool(mode))
        return self

    def eval(self):
        """``train(False)``; returns self."""
        return self.train(False)

    def to(self, device=None, dtype=None):
        """Move (and/or cast floating) parameters and buffers in place; returns self.

        Parameters keep their identity, so an optimizer built before ``to`` still updates them.
        """
        if device is not None:
            device = backend.normalize_device(device)
        for t in list(self.parameters()) + list(self.buffers()):
            arr = t.data
            if device is not None:
                arr = backend.to_device(arr, device)
            if dtype is not None and arr.dtype.kind == "f":
                arr = arr.astype(dtype)
            t.data = arr
            if t.grad is not None:
                g = t.grad.data
                if device is not None:
                    g = backend.to_device(g, device)
                if dtype is not None:
                    g = g.astype(dtype)
                t.grad = Tensor._make(g)
        return self

    def double(self):
        return self.to(dtype=np.float64)

    def float(self):
        return self.to(dtype=np.float32)

    def cpu(self):
        return self.to("cpu")

    def cuda(self):
        return self.to("cuda")

    def zero_grad(self, set_to_none=True):
        """Reset the gradients of all parameters: ``.grad = None`` (``set_to_none=True``, the
        default, as torch), or zero the existing ``.grad`` arrays in place."""
        for p in self.parameters():
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad.data[...] = 0
                p.grad._version += 1

    def requires_grad_(self, flag=True):
        for p in self.parameters():
            p.requires_grad_(flag)
        return self

    def apply(self, fn):
        """Call ``fn(module)`` on every submodule and self (children first); returns self."""
        for m in reversed(list(self.modules())):
            fn(m)
        return self

    # -- state -------------------------------------------------------------------------------
    def state_dict(self):
        """An OrderedDict of dotted name -> Tensor (parameters, then buffers, per module),
        sharing the module's arrays (copy them to snapshot)."""
        out = OrderedDict()
        for mname, m in self.named_modules():
            for n, p in m._parameters.items():
                if p is not None:
                    out[f"{mname}.{n}" if mname else n] = p.detach()
            for n, b in m._buffers.items():
                if b is not None:
                    out[f"{mname}.{n}" if mname else n] = b.detach()
        return out

    def load_state_dict(self, state_dict, strict=True):
        """Copy values (Tensors or arrays, e.g. the mapping :func:`minidl.load` returns) into this
        module's parameters and buffers.

        Returns ``IncompatibleKeys(missing_keys, unexpected_keys)`` (a named tuple, unpackable as
        ``missing, unexpected``). With ``strict=True`` either being non-empty raises
        :class:`StateDictError` (a KeyError and a RuntimeError) listing them. Whatever
        ``strict``, a value that is None, not a Tensor/array, not numeric, or of the wrong shape
        raises (TypeError / ValueError naming the key, the shapes and dtypes) before anything is
        copied. Values are cast to each parameter's dtype and moved to its device.
        """
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"load_state_dict for {type(self).__name__}: expected a mapping of "
                            f"names to Tensors or arrays, got {type(state_dict).__name__}")
        own = OrderedDict()
        for mname, m in self.named_modules():
            for store in (m._parameters, m._buffers):
                for n, t in store.items():
                    if t is not None:
                        own[f"{mname}.{n}" if mname else n] = t
        missing = [k for k in own if k not in state_dict]
        unexpected = [k for k in state_dict if k not in own]
        if strict and (missing or unexpected):
            raise StateDictError(f"load_state_dict for {type(self).__name__}: missing keys "
                                 f"{missing}, unexpected keys {unexpected}")
        arrays, wrong_shapes = OrderedDict(), []
        for k, t in own.items():
            if k not in state_dict:
                continue
            v = state_dict[k]
            if v is None:
                raise TypeError(f"load_state_dict for {type(self).__name__}: {k!r} is None in "
                                f"the state dict (expected a Tensor or array of shape "
                                f"{t.shape})")
            if isinstance(v, Tensor):
                arr = v.data
            elif _is_array(v) or isinstance(v, np.generic):
                arr = v if _is_array(v) else np.asarray(v)
            else:
                raise TypeError(f"load_state_dict for {type(self).__name__}: {k!r} is a "
                                f"{type(v).__name__} in the state dict (expected a Tensor or "
                                f"array of shape {t.shape})")
            if arr.dtype.kind not in "biuf":
                raise TypeError(f"load_state_dict for {type(self).__name__}: {k!r} has dtype "
                                f"{arr.dtype} in the state dict, which cannot be copied into "
                                f"a {t.dtype} {'parameter' if isinstance(t, Parameter) else 'buffer'}")
            if tuple(arr.shape) != t.shape:
                wrong_shapes.append(f"{k!r} has shape {tuple(arr.shape)} in the state dict but "
                                    f"{t.shape} in the module")
            arrays[k] = arr
        if wrong_shapes:
            raise ValueError(f"load_state_dict for {type(self).__name__}: "
                             + "; ".join(wrong_shapes))
        for k, arr in arrays.items():
            t = own[k]
            t.data = backend.to_device(arr, t.device).astype(t.dtype, copy=True)  # bumps _version
        return IncompatibleKeys(missing, unexpected)

    # -- display -----------------------------------------------------------------------------
    def extra_repr(self):
        return ""

    def __repr__(self):
        lines = []
        for name, m in self._modules.items():
            sub = repr(m).split("\n")
            lines.append(f"  ({name}): " + "\n  ".join(sub))
        head = f"{type(self).__name__}({self.extra_repr()}"
        if not lines:
            return head + ")"
        return head + "\n" + "\n".join(lines) + "\n)"


# -- module backward hooks -----------------------------------------------------------------------
#
# The call is wired as   inputs --Gate--> g --Split_k--> input_k' --forward--> outputs --Tap--> out'
# Split_k hands input_k's data through; in backward each Split_k stores its gradient in the
# shared state and passes an empty gradient to g, so g's node (Gate) runs after all of them and
# sees every gradient with respect to the inputs at once: it calls the hooks and returns the
# (possibly replaced) gradients to the real inputs. Tap records grad_output on the way.


class _HookState:
    def __init__(self, module, n_args, arg_slots):
        self.module = module
        self.n_args = n_args
        self.arg_slots = arg_slots        # positional index of each gated input, in gate order
        self.grad_inputs = {}             # gate slot -> array
        self.grad_outputs = []            # per output: array or None
        self.pending_outputs = 0

    def call_hooks(self, grad_input):
        go = tuple(None if g is None else Tensor._make(g) for g in self.grad_outputs)
        for hook in list(self.module._backward_hooks.values()):
            r = hook(self.module, grad_input, go)
            if r is not None:
                r = tuple(r)
                if len(r) != len(grad_input):
                    raise RuntimeError(
                        f"a backward hook of {type(self.module).__name__} returned {len(r)} "
                        f"gradients for {len(grad_input)} inputs")
                grad_input = r
        return grad_input


class _HookGate(Function):
    def forward(self, *xs, state):
        self.state = state
        self.shapes = [x.shape for x in xs]
        return backend.get_array_module(xs[0]).zeros((0,), dtype=xs[0].dtype)

    def backward(self, gy):
        st = self.state
        grad_input = [None] * st.n_args
        for slot, pos in enumerate(st.arg_slots):
            g = st.grad_inputs.get(slot)
            grad_input[pos] = None if g is None else Tensor._make(g)
        grad_input = st.call_hooks(tuple(grad_input))
        out = []
        for slot, pos in enumerate(st.arg_slots):
            g = grad_input[pos]
            g = g.data if isinstance(g, Tensor) else g
            if g is not None and tuple(g.shape) != tuple(self.shapes[slot]):
                raise RuntimeError(f"a backward hook of {type(st.module).__name__} returned a "
                                   f"gradient of shape {tuple(g.shape)} for input {pos} of "
                                   f"shape {tuple(self.shapes[slot])}")
            out.append(g)
        return tuple(out)


class _HookSplit(Function):
    def forward(self, gate, x, slot, state):
        self.slot, self.state, self.gate_dtype = slot, state, gate.dtype
        return x

    def backward(self, gy):
        self.state.grad_inputs[self.slot] = gy
        return backend.get_array_module(gy).zeros((0,), dtype=self.gate_dtype), None


class _HookTap(Function):
    def forward(self, x, index, state):
        self.index, self.state = index, state
        return x

    def backward(self, gy):
        st = self.state
        st.grad_outputs[self.index] = gy
        st.pending_outputs -= 1
        if not st.arg_slots and st.pending_outputs == 0:
            st.call_hooks((None,) * st.n_args)
        return gy


def _call_with_backward_hooks(module, args, kwargs):
    slots = [i for i, a in enumerate(args) if isinstance(a, Tensor) and a.requires_grad]
    state = _HookState(module, len(args), slots)
    args = list(args)
    if slots:
        gate = _HookGate.apply(*[args[i] for i in slots], state=state)
        for slot, i in enumerate(slots):
            args[i] = _HookSplit.apply(gate, Tensor._make(args[i].data), slot=slot, state=state)
    out = module._call_forward(tuple(args), kwargs)
    single = isinstance(out, Tensor)
    outs = [out] if single else list(out) if isinstance(out, (tuple, list)) else None
    if outs is None:
        raise TypeError(f"{type(module).__name__} has backward hooks, so its forward must return "
                        f"a Tensor or a tuple/list of Tensors, not {type(out).__name__}")
    state.grad_outputs = [None] * len(outs)
    for j, o in enumerate(outs):
        if isinstance(o, Tensor) and o.requires_grad:
            outs[j] = _HookTap.apply(o, index=j, state=state)
            state.pending_outputs += 1
    if single:
        return outs[0]
    return type(out)(outs)


class Sequential(Module):
    """Modules applied in order. Indexable (``seq[0]``, slices give a Sequential), iterable."""

    def __init__(self, *modules):
        super().__init__()
        if len(modules) == 1 and isinstance(modules[0], (OrderedDict, dict)):
            for name, m in modules[0].items():
                self.add_module(name, m)
        else:
            for i, m in enumerate(modules):
                if not isinstance(m, Module):
                    raise TypeError(f"Sequential: argument {i} is a {type(m).__name__}, not a "
                                    "Module")
                self.add_module(str(i), m)

    def forward(self, x):
        for m in self._modules.values():
            x = m(x)
        return x

    def __getitem__(self, idx):
        items = list(self._modules.items())
        if isinstance(idx, slice):
            return Sequential(OrderedDict(items[idx]))
        return items[idx][1]

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())

    def append(self, module):
        self.add_module(str(len(self)), module)
        return self


class ModuleList(Module):
    """A list of modules, registered as submodules "0", "1", ...; it has no forward."""

    def __init__(self, modules=()):
        super().__init__()
        for m in modules:
            self.append(m)

    def append(self, module):
        if not isinstance(module, Module):
            raise TypeError(f"ModuleList.append: expected a Module, got {type(module).__name__}")
        self.add_module(str(len(self._modules)), module)
        return self

    def extend(self, modules):
        for m in modules:
            self.append(m)
        return self

    def __getitem__(self, idx):
        vals = list(self._modules.values())
        if isinstance(idx, slice):
            return ModuleList(vals[idx])
        return vals[idx]

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())
