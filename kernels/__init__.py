"""The handwritten CUDA C kernels (*.cu), installed as package data of minidl.kernels.

They are compiled at run time: by CuPy RawModule on a GPU, by NVRTC for the compile check, and
by g++ with the emulation header in minidl/cuda for the CPU emulation.
"""
