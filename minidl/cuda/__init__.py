"""GPU side of minidl: loading the handwritten kernels in ``kernels/*.cu`` and launching them.

``minidl.cuda.is_available()`` tells whether CuPy and a CUDA device are both present.
CuPy is reached only through :mod:`minidl.backend`.

Modules (imported on demand, so ``import minidl`` stays cheap):

* :mod:`minidl.cuda.kernels` -- the launch wrappers (``lrn_forward``, ``max_pool2d_backward``,
  ``conv2d_forward``...): CuPy arrays run on the GPU, NumPy arrays run the same .cu source under
  the CPU emulation;
* :mod:`minidl.cuda.module` -- ``cupy.RawModule`` loading, cached per device and source;
* :mod:`minidl.cuda.emulator` -- the CPU emulation (g++ + ``emu.h`` + ``emu_runtime.cpp``):
  ``load_emulated("lrn.cu").get_function("lrn_forward_f32")(grid, block, args)``;
* :mod:`minidl.cuda.source` -- finding the .cu files, parsing their entry points, rule lint;
* :mod:`minidl.cuda.nvrtc_check` -- ``python -m minidl.cuda.nvrtc_check``: NVRTC compile of
  every kernel for sm_80/sm_90 with a register/spill table (CI).

TF32: :func:`set_tf32` (or ``MINIDL_TF32=1`` in the environment) lets cuBLAS run float32 GEMMs
(convolution through im2col, linear layers: every CuPy float32 matmul in the process) on TF32
tensor cores -- about 8x the FP32 peak on an A100/H100, with a 10-bit mantissa on the inputs.
It is OFF by default: the papers' float32 numerics, and results within float32 tolerance of the
CPU path. (PyTorch, by contrast, lets cuDNN convolutions use TF32 by default.)
"""
import os

from minidl import backend
from minidl.backend import is_available, synchronize

__all__ = ["is_available", "synchronize", "tf32_enabled", "set_tf32", "apply_tf32"]

_tf32 = {"on": None, "applied": None}


def _env_tf32():
    return os.environ.get("MINIDL_TF32", "0").strip().lower() not in ("", "0", "false", "no", "off")


def tf32_enabled():
    """Whether float32 GEMMs on the GPU may use TF32 (``set_tf32``, else ``MINIDL_TF32``)."""
    on = _tf32["on"]
    return _env_tf32() if on is None else on


def set_tf32(enabled):
    """Allow (True) or forbid (False, the default) TF32 tensor cores in the float32 GEMMs run on
    the GPU. Process-wide: CuPy's compute type for float32/complex64 matmuls is global. Returns
    the previous setting. Does nothing on the CPU (NumPy has no TF32)."""
    if not isinstance(enabled, bool):
        raise TypeError(f"set_tf32 expects True or False, got {type(enabled).__name__} {enabled!r}")
    old = tf32_enabled()
    _tf32["on"] = enabled
    apply_tf32()
    return old


def apply_tf32():
    """Push the TF32 setting into CuPy if it differs from what was last applied (cheap; the
    convolution wrappers call it before their GEMMs so ``MINIDL_TF32`` needs no explicit call)."""
    want = tf32_enabled()
    if _tf32["applied"] is want:
        return
    cp = backend.cupy_module()
    if cp is None or not backend.is_available():  # CuPy checks the device when setting it
        return
    import numpy as np
    linalg = cp._core._routines_linalg
    ct = linalg.COMPUTE_TYPE_TF32 if want else linalg.COMPUTE_TYPE_DEFAULT
    for dt in (np.float32, np.complex64):
        linalg.set_compute_type(dt, ct)
    _tf32["applied"] = want
