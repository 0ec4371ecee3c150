"""The lazy import of the CUDA launch wrappers, shared by the ops' ``forward_cuda`` methods.

Geometry (pairs, output sizes) lives in :mod:`minidl.geometry`; the array module of an array is
:func:`minidl.backend.get_array_module`.
"""


def kernels():
    """:mod:`minidl.cuda.kernels` (imported on first use: only the GPU path needs it)."""
    from minidl.cuda import kernels as K
    return K
