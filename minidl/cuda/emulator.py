"""Run ``kernels/*.cu`` on the CPU: the same source, compiled with g++ against ``emu.h``.

Why: CI has no GPU, yet every kernel must be run and held to the NumPy path. The emulation
compiles the *unchanged* .cu file with g++ (``-include emu.h``: CUDA's built-ins, nothing else),
links it with ``emu_runtime.cpp`` (blocks of fibers with real ``__syncthreads``/warp-shuffle
barriers) and with launch trampolines generated from the parsed ``extern "C" __global__``
signatures, and loads the shared library with ctypes. The loaded kernel has the call shape of a
CuPy ``RawKernel``::

    from minidl.cuda.emulator import load_emulated
    k = load_emulated("lrn.cu").get_function("lrn_forward_f32")
    k((blocks,), (256,), (x, y, scale, np.int32(n), ...), shared_mem=0)

but, unlike CuPy, it checks every argument against the parsed C type -- ``float*`` takes a
C-contiguous float32 ndarray (writable unless ``const``), ``int`` takes ``np.int32``,
``long long`` ``np.int64``, ``float`` ``np.float32`` -- and raises a TypeError naming the
argument, what was expected and what was given (CuPy would pass the wrong bytes silently).

Thread order within a block (and block order in the grid) is ``"forward"`` or ``"reverse"``:
:func:`thread_order` (a context manager), :func:`set_thread_order`, the ``order=`` keyword of a
launch, or ``MINIDL_EMU_ORDER``. A missing barrier shows up under one of the two.

``MINIDL_EMU_DEBUG=1`` builds with ``-O0 -g`` (run Python under gdb, break on the kernel's
name, and step through one CUDA thread at a time); ``MINIDL_EMU_UCONTEXT=1`` switches fibers
with glibc's ucontext instead of the x86-64 stack switch.
``sanitize=True`` (or ``MINIDL_EMU_SANITIZE=1``) builds with ``-fsanitize=address,undefined``;
such a library only loads in a process started with the ASan runtime preloaded (see
:func:`asan_env`). Libraries are cached under ``$MINIDL_CACHE/emu`` (default
``~/.cache/minidl/emu``) by a hash of source, header, runtime, flags and compiler version.
"""
import contextlib
import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
import threading

import numpy as np

from minidl.cuda import source as _source

_HERE = os.path.dirname(os.path.abspath(__file__))
HEADER = os.path.join(_HERE, "emu.h")
RUNTIME = os.path.join(_HERE, "emu_runtime.cpp")
DYN_SHARED_CAPACITY = 48 * 1024  # CUDA's default limit for dynamic shared memory per block

_ORDERS = {"forward": 0, "reverse": 1}
_order = os.environ.get("MINIDL_EMU_ORDER", "forward")
_lock = threading.RLock()  # the runtime has process-global state: one launch at a time
_modules = {}


class EmulatorError(RuntimeError):
    """A kernel broke the CUDA execution model under emulation (divergent barrier, deadlock...)."""


class CompileError(RuntimeError):
    """g++ rejected a kernel source compiled against emu.h (as NVRTC would, see docs/design.md)."""


# ---- configuration ---------------------------------------------------------------------------

def set_thread_order(order):
    """Set the default schedule: "forward" (thread 0 first) or "reverse"."""
    global _order
    if order not in _ORDERS:
        raise ValueError(f"thread order must be one of {sorted(_ORDERS)}, got {order!r}")
    _order = order


def get_thread_order():
    return _order


@contextlib.contextmanager
def thread_order(order):
    """``with thread_order("reverse"): ...`` runs launches inside with that schedule."""
    old = _order
    set_thread_order(order)
    try:
        yield
    finally:
        set_thread_order(old)


def cache_dir():
    base = os.environ.get("MINIDL_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "minidl")
    d = os.path.join(base, "emu")
    os.makedirs(d, exist_ok=True)
    return d


def compiler():
    cxx = os.environ.get("CXX", "g++")
    if shutil.which(cxx) is None:
        raise CompileError(f"the kernel emulation needs a C++ compiler; {cxx!r} was not found "
                           "(set CXX or install g++)")
    return cxx


def sanitize_default():
    return os.environ.get("MINIDL_EMU_SANITIZE", "") not in ("", "0")


def asan_runtime():
    """Path of the compiler's libasan.so, or None when there is none."""
    try:
        p = subprocess.run([compiler(), "-print-file-name=libasan.so"], capture_output=True,
                           text=True, check=True).stdout.strip()
    except (subprocess.CalledProcessError, CompileError):
        return None
    return p if os.path.isabs(p) and os.path.exists(p) else None


def asan_env(base=None):
    """Environment for a subprocess that loads sanitized kernels: libasan preloaded, leak
    checking off (Python's allocations are not leaks), any report fatal."""
    env = dict(os.environ if base is None else base)
    lib = asan_runtime()
    if lib is None:
        raise CompileError("no libasan.so next to the compiler: cannot run sanitized kernels")
    env["LD_PRELOAD"] = lib + ((" " + env["LD_PRELOAD"]) if env.get("LD_PRELOAD") else "")
    env["ASAN_OPTIONS"] = "detect_leaks=0:halt_on_error=1:abort_on_error=0:exitcode=86:" + \
        env.get("ASAN_OPTIONS", "")
    env["UBSAN_OPTIONS"] = "halt_on_error=1:print_stacktrace=1:exitcode=87:" + \
        env.get("UBSAN_OPTIONS", "")
    env["MINIDL_EMU_SANITIZE"] = "1"
    return env


# ---- building --------------------------------------------------------------------------------

_BASE_FLAGS = ["-std=c++17", "-fPIC", "-fno-exceptions", "-fno-rtti", "-Wall",
               "-Werror=double-promotion", "-Werror=return-type", "-Werror=uninitialized",
               "-Wno-unused-function", "-Wno-unused-variable"]


def _flags(sanitize):
    extra = []
    if os.environ.get("MINIDL_EMU_UCONTEXT", "") not in ("", "0"):
        extra.append("-DMINIDL_EMU_UCONTEXT")  # portable (slower) fiber switches
    if sanitize:
        return _BASE_FLAGS + extra + ["-O1", "-g", "-fno-omit-frame-pointer",
                                      "-fsanitize=address,undefined", "-fno-sanitize-recover=all"]
    if os.environ.get("MINIDL_EMU_DEBUG", "") not in ("", "0"):
        return _BASE_FLAGS + extra + ["-O0", "-g"]  # to step through a kernel in gdb
    return _BASE_FLAGS + extra + ["-O2"]


def _compiler_version():
    return subprocess.run([compiler(), "--version"], capture_output=True, text=True).stdout


def _read(p):
    with open(p, encoding="utf-8") as f:
        return f.read()


def _trampolines(path, sigs):
    lines = [f'#include "{path}"', "", 'extern "C" {',
             "typedef void (*__emu_body_t)(void**);",
             "int __emu_launch(__emu_body_t, unsigned, unsigned, unsigned, unsigned, unsigned,",
             "                 unsigned, unsigned, void**, int, void**, int, unsigned);",
             "void __emu_dyn_shared(void** out, int* n);",
             "}", ""]
    for s in sigs.values():
        unpack = ", ".join(f"*({p.c_decl_type()}*)a[{i}]" for i, p in enumerate(s.params))
        lines += [
            f"static void __emu_body_{s.name}(void** a) {{ (void)a; {s.name}({unpack}); }}",
            f'extern "C" int __emu_launch_{s.name}(unsigned gx, unsigned gy, unsigned gz, '
            "unsigned bx, unsigned by, unsigned bz, unsigned shmem, void** args, int order) {",
            "  void* dyn[16]; int ndyn = 0; __emu_dyn_shared(dyn, &ndyn);",
            f"  return __emu_launch(&__emu_body_{s.name}, gx, gy, gz, bx, by, bz, shmem, args, "
            f"order, dyn, ndyn, {DYN_SHARED_CAPACITY}u);",
            "}", ""]
    return "\n".join(lines)


def _shared_defs(names):
    # The extern __shared__ arrays, defined outside the kernel's translation unit so their type
    # does not matter (all of CUDA's extern shared arrays alias raw bytes too).
    out = ["// generated: dynamic shared memory buffers",
           "// (touching the anchor makes sure this thread's copy of the library's TLS segment,",
           "// where the static __shared__ variables live too, exists before a launch)",
           "thread_local unsigned char __emu_tls_anchor[16];"]
    for n in names:
        out.append(f"thread_local unsigned char {n}[{DYN_SHARED_CAPACITY}] __attribute__((aligned(16)));")
    out.append('extern "C" void __emu_dyn_shared(void** out, int* n) {')
    out.append("  int k = 0;")
    out.append("  __emu_tls_anchor[0] = 1;")
    for n in names:
        out.append(f"  out[k++] = {n};")
    out.append("  *n = k;\n}")
    return "\n".join(out) + "\n"


def _run(cmd, what):
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise CompileError(f"{what} failed ({' '.join(cmd)}):\n{r.stderr.strip()}")


def _runtime_object(sanitize, cxx, flags):
    key = hashlib.sha256("\0".join([_read(RUNTIME), " ".join(flags), _compiler_version()])
                         .encode()).hexdigest()[:20]
    obj = os.path.join(cache_dir(), f"emu_runtime-{key}{'-asan' if sanitize else ''}.o")
    if not os.path.exists(obj):
        tmp = obj + f".{os.getpid()}.tmp.o"
        _run([cxx, *flags, "-c", RUNTIME, "-o", tmp], "compiling the emulator runtime")
        os.replace(tmp, obj)
    return obj


def build(path, sanitize=None):
    """Compile ``path`` (a .cu file) for the emulation; return the cached shared library path."""
    sanitize = sanitize_default() if sanitize is None else bool(sanitize)
    for f in (HEADER, RUNTIME):
        if not os.path.exists(f):
            raise CompileError(f"the emulator's {os.path.basename(f)} is missing from {_HERE} "
                               "(an installed minidl needs minidl/cuda/*.h and *.cpp as package "
                               "data)")
    path = _source.resolve(path)
    src = _read(path)
    problems = _source.lint(path)  # docs/design.md's rules that g++ would not enforce by itself
    if problems:
        raise CompileError("kernel rule violations (see docs/design.md):\n" + "\n".join(
            f"{path}:{line}: {msg}" for line, msg in problems))
    sigs = _source.parse_kernels(path)
    if not sigs:
        raise CompileError(f'{path}: no extern "C" __global__ entry points found')
    shared = _source.extern_shared_names(src)
    cxx = compiler()
    flags = _flags(sanitize)
    key = hashlib.sha256("\0".join([path, src, _read(HEADER), _read(RUNTIME), " ".join(flags),
                                    _compiler_version()]).encode()).hexdigest()[:20]
    base = os.path.splitext(os.path.basename(path))[0]
    so = os.path.join(cache_dir(), f"{base}-{key}{'-asan' if sanitize else ''}.so")
    if os.path.exists(so):
        return so, sigs
    rt = _runtime_object(sanitize, cxx, flags)
    with tempfile.TemporaryDirectory(prefix="minidl-emu-") as tmp:
        tramp = os.path.join(tmp, base + "_emu.cpp")
        with open(tramp, "w") as f:
            f.write(_trampolines(path, sigs))
        sh = os.path.join(tmp, base + "_shared.cpp")
        with open(sh, "w") as f:
            f.write(_shared_defs(shared))
        objs = []
        for srcf, inc in ((tramp, True), (sh, False)):
            o = srcf[:-4] + ".o"
            cmd = [cxx, *flags] + (["-include", HEADER] if inc else []) + ["-c", srcf, "-o", o]
            _run(cmd, f"compiling {os.path.basename(path)} against emu.h")
            objs.append(o)
        out = os.path.join(tmp, base + ".so")
        _run([cxx, *flags, "-shared", "-Wl,-z,defs", "-o", out, *objs, rt],
             f"linking the emulation of {os.path.basename(path)} (an undefined symbol is a "
             "built-in emu.h lacks, or an extern __shared__ array it could not find)")
        os.replace(out, so)
    return so, sigs


# ---- loading and launching -------------------------------------------------------------------

def _dims(v, what):
    if isinstance(v, (int, np.integer)):
        v = (int(v),)
    v = tuple(int(d) for d in v)
    if not 1 <= len(v) <= 3 or any(d < 1 for d in v):
        raise ValueError(f"{what} must be 1 to 3 positive ints, got {v}")
    return v + (1,) * (3 - len(v))


def _describe(a):
    if isinstance(a, np.ndarray):
        return (f"{a.dtype} ndarray of shape {a.shape}"
                f"{'' if a.flags.c_contiguous else ', not C-contiguous'}"
                f"{'' if a.flags.writeable else ', read-only'}")
    return f"{type(a).__module__}.{type(a).__qualname__} {a!r}"[:200]


class EmulatedKernel:
    """One kernel of an :class:`EmulatedModule`; call it like a CuPy ``RawKernel``."""

    def __init__(self, module, sig):
        self.module = module
        self.sig = sig
        self.name = sig.name
        self._fn = getattr(module._lib, f"__emu_launch_{sig.name}")
        self._fn.restype = ctypes.c_int
        self._fn.argtypes = [ctypes.c_uint] * 7 + [ctypes.POINTER(ctypes.c_void_p), ctypes.c_int]

    def __repr__(self):
        ps = ", ".join(f"{p.ctype} {p.name}" for p in self.sig.params)
        return f"<emulated kernel {self.name}({ps})>"

    def _check(self, args):
        ps = self.sig.params
        if len(args) != len(ps):
            raise TypeError(f"{self.name}: expected {len(ps)} arguments "
                            f"({', '.join(p.name for p in ps)}), got {len(args)}")
        keep, ptrs = [], []
        for i, (p, a) in enumerate(zip(ps, args)):
            where = f"{self.name}: argument {i} '{p.name}' ({p.ctype})"
            want = np.dtype(p.dtype)
            if p.pointer:
                if not isinstance(a, np.ndarray):
                    raise TypeError(f"{where} expects a C-contiguous {want} numpy.ndarray, "
                                    f"got {_describe(a)}")
                if a.dtype != want or not a.flags.c_contiguous:
                    raise TypeError(f"{where} expects a C-contiguous {want} ndarray, "
                                    f"got {_describe(a)}")
                if not p.const and not a.flags.writeable:
                    raise TypeError(f"{where} is written by the kernel; got a read-only array")
                cell = ctypes.c_void_p(a.ctypes.data)
                keep += [a, cell]
                ptrs.append(ctypes.addressof(cell))
            else:
                if not isinstance(a, np.generic) or a.dtype != want:
                    raise TypeError(f"{where} expects an exact numpy scalar np.{want.name}(...), "
                                    f"got {_describe(a)}")
                cell = np.array(a, dtype=want)  # owns the scalar's bytes
                keep.append(cell)
                ptrs.append(cell.ctypes.data)
        return keep, ptrs

    def __call__(self, grid, block, args, shared_mem=0, order=None, **kwargs):
        """Launch over ``grid`` blocks of ``block`` threads with ``args`` (a tuple)."""
        if kwargs.pop("stream", None) is not None:
            pass  # accepted for CuPy call-shape compatibility; the emulation is synchronous
        if kwargs:
            raise TypeError(f"unexpected keyword arguments {sorted(kwargs)}")
        g, b = _dims(grid, "grid"), _dims(block, "block")
        order = _order if order is None else order
        if order not in _ORDERS:
            raise ValueError(f"order must be one of {sorted(_ORDERS)}, got {order!r}")
        if not isinstance(args, (tuple, list)):
            raise TypeError(f"{self.name}: args must be a tuple, got {type(args).__name__}")
        shared_mem = int(shared_mem)
        if shared_mem < 0:
            raise ValueError("shared_mem must be >= 0")
        keep, ptrs = self._check(args)
        argv = (ctypes.c_void_p * max(1, len(ptrs)))(*ptrs)
        with _lock:
            rc = self._fn(*g, *b, shared_mem, argv, _ORDERS[order])
            if rc != 0:
                msg = self.module._last_error().decode(errors="replace")
                raise EmulatorError(f"{self.name} (grid {g}, block {b}, {order} order): {msg}")
        del keep


class EmulatedModule:
    """A compiled .cu file under emulation; ``get_function(name)`` as ``cupy.RawModule``."""

    def __init__(self, path, sanitize=None):
        self.path = _source.resolve(path)
        self.sanitize = sanitize_default() if sanitize is None else bool(sanitize)
        self.so_path, self.signatures = build(self.path, self.sanitize)
        try:
            self._lib = ctypes.CDLL(self.so_path, mode=os.RTLD_NOW | os.RTLD_LOCAL)
        except OSError as e:
            hint = (" (a sanitized build loads only with the ASan runtime preloaded: run the "
                    "process with minidl.cuda.emulator.asan_env())" if self.sanitize else "")
            raise CompileError(f"cannot load {self.so_path}: {e}{hint}") from None
        self._last_error = getattr(self._lib, "__emu_last_error")  # (no name mangling)
        self._last_error.restype = ctypes.c_char_p
        self._kernels = {}

    def get_function(self, name):
        if name not in self.signatures:
            raise AttributeError(f"{os.path.basename(self.path)} has no kernel {name!r}; it has "
                                 f"{sorted(self.signatures)}")
        if name not in self._kernels:
            self._kernels[name] = EmulatedKernel(self, self.signatures[name])
        return self._kernels[name]

    def __repr__(self):
        return f"<EmulatedModule {self.path} ({'sanitized' if self.sanitize else 'plain'})>"


def load_emulated(name, sanitize=None):
    """The emulated module for ``name`` (a file in kernels/ like "lrn.cu", or a path), cached."""
    sanitize = sanitize_default() if sanitize is None else bool(sanitize)
    path = _source.resolve(name)
    key = (path, sanitize, os.path.getmtime(path))
    with _lock:
        m = _modules.get(key)
        if m is None:
            m = _modules[key] = EmulatedModule(path, sanitize)
    return m
