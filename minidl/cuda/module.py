"""Loading ``kernels/*.cu`` on the GPU through CuPy, cached per device and source.

``load_module("lrn.cu")`` returns a :class:`GpuModule` whose ``get_function(name)`` gives a
launcher with CuPy's ``RawKernel`` call shape, ``k(grid, block, args, shared_mem=0)``, that first
checks every argument against the kernel's parsed C signature (the same check the emulator
does): ``float*`` takes a C-contiguous float32 ``cupy.ndarray``, ``int`` takes ``np.int32`` ...
CuPy itself would pass a float64 array or a Python int to a ``float*``/``int`` parameter without
complaint and the kernel would read the wrong bytes.

CuPy is reached only through :func:`minidl.backend.cupy_module`.
"""
import hashlib
import os
import threading

import numpy as np

from minidl import backend
from minidl.cuda import source as _source

NVRTC_OPTIONS = ("-std=c++17",)
_cache = {}
_fast = {}  # (device, path, mtime) -> module, to skip re-hashing on every launch
_lock = threading.Lock()


def _cupy():
    cp = backend.cupy_module()
    if cp is None or not backend.is_available():
        raise backend.DeviceError(
            "a CUDA kernel was launched with GPU arrays but CUDA is not available: "
            f"{backend._why_no_cuda()}")
    return cp


class GpuKernel:
    """A compiled kernel plus its signature; calling it checks the arguments, then launches."""

    def __init__(self, raw, sig):
        self.raw = raw
        self.sig = sig
        self.name = sig.name
        # per parameter: (is pointer, dtype), resolved once (a launch checks every argument)
        self._want = tuple((p.pointer, np.dtype(p.dtype)) for p in sig.params)

    def __call__(self, grid, block, args, shared_mem=0, stream=None):
        cp = _cupy()
        ps = self.sig.params
        if len(args) != len(ps):
            raise TypeError(f"{self.name}: expected {len(ps)} arguments "
                            f"({', '.join(p.name for p in ps)}), got {len(args)}")
        nd = cp.ndarray
        for (pointer, want), a in zip(self._want, args):  # the fast check; details below
            if pointer:
                if type(a) is not nd or a.dtype != want or not a.flags.c_contiguous:
                    break
            elif type(a) is not want.type:
                break
        else:
            self._launch(grid, block, args, shared_mem, stream)
            return
        for i, (p, a) in enumerate(zip(ps, args)):
            where = f"{self.name}: argument {i} '{p.name}' ({p.ctype})"
            want = np.dtype(p.dtype)
            if p.pointer:
                if not isinstance(a, cp.ndarray) or a.dtype != want or not a.flags.c_contiguous:
                    got = (f"{a.dtype} cupy.ndarray of shape {a.shape}"
                           f"{'' if a.flags.c_contiguous else ', not C-contiguous'}"
                           if isinstance(a, cp.ndarray) else type(a).__name__)
                    raise TypeError(f"{where} expects a C-contiguous {want} cupy.ndarray, got {got}")
            elif not isinstance(a, np.generic) or a.dtype != want:
                raise TypeError(f"{where} expects an exact numpy scalar np.{want.name}(...), "
                                f"got {type(a).__name__} {a!r}")
        self._launch(grid, block, args, shared_mem, stream)  # a subclass of ndarray, say

    def _launch(self, grid, block, args, shared_mem, stream):
        kw = {"shared_mem": int(shared_mem)}
        if stream is not None:
            kw["stream"] = stream
        self.raw(tuple(grid) if not isinstance(grid, int) else (grid,),
                 tuple(block) if not isinstance(block, int) else (block,), tuple(args), **kw)


class GpuModule:
    def __init__(self, path, code, device_id):
        cp = _cupy()
        self.path = path
        self.device_id = device_id
        self.signatures = _source.parse_kernels(path)
        self.raw = cp.RawModule(code=code, options=NVRTC_OPTIONS)
        self._kernels = {}

    def get_function(self, name):
        if name not in self.signatures:
            raise AttributeError(f"{self.path} has no kernel {name!r}; it has "
                                 f"{sorted(self.signatures)}")
        k = self._kernels.get(name)
        if k is None:
            k = self._kernels[name] = GpuKernel(self.raw.get_function(name), self.signatures[name])
        return k


def load_module(name):
    """The :class:`GpuModule` for ``name`` ("lrn.cu" or a path) on the current device, cached
    per (device, source hash): editing a .cu file and reloading picks the new source up."""
    cp = _cupy()
    path = _source.resolve(name)
    dev = cp.cuda.Device().id
    fast = (dev, path, os.stat(path).st_mtime_ns)
    m = _fast.get(fast)
    if m is not None:
        return m
    with open(path, encoding="utf-8") as f:
        code = f.read()
    key = (dev, path, hashlib.sha256(code.encode()).hexdigest())
    with _lock:
        m = _cache.get(key)
        if m is None:
            m = _cache[key] = GpuModule(path, code, dev)
        _fast[fast] = m
    return m
