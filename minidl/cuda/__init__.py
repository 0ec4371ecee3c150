"""GPU side of minidl: loading the handwritten kernels in ``kernels/*.cu`` and launching them.

``minidl.cuda.is_available()`` tells whether CuPy and a CUDA device are both present.
CuPy is reached only through :mod:`minidl.backend`.
"""
from minidl.backend import is_available, synchronize  # noqa: F401
