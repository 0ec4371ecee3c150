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
"""
from minidl.backend import is_available, synchronize  # noqa: F401
