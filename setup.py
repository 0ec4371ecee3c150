"""Installs the ``minidl`` package.

numpy is the only hard run-time requirement of ``import minidl``; everything else is an extra:

* ``gpu``   -- CuPy for CUDA 12 or 13 (pick the one matching your driver), used for the GPU
  device and the handwritten kernels in ``kernels/*.cu``.
* ``data``  -- Pillow, for decoding images (ImageFolder, GeneratedShapes).
* ``plot``  -- matplotlib for learning-curve PNGs; tqdm for progress bars.
* ``test``  -- what the test suite and CI need (pytest, hypothesis, Pillow, tqdm, matplotlib,
  ruff).
* ``mpi``   -- mpi4py and the MPICH library with its ``mpiexec``, for ``minidl.distributed``
  (data-parallel training over MPI; the "nccl" backend also sends its unique id over MPI).
"""
from setuptools import setup, find_packages

setup(
    name="minidl",
    version="0.1.0",
    description="A from-scratch deep-learning framework over NumPy/CuPy with handwritten CUDA "
    "kernels, rebuilding AlexNet, PReLU-net and ResNet.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    packages=find_packages(include=["minidl", "minidl.*"]) + ["minidl.kernels"],
    # The CUDA sources live in <repo>/kernels so users find them at the top level; they are
    # installed as package data of minidl.kernels so an installed minidl finds them too.
    package_dir={"minidl.kernels": "kernels"},
    # the emulator's header and runtime are compiled with g++ at run time, like the kernels
    package_data={"minidl.kernels": ["*.cu", "*.h"], "minidl.cuda": ["*.h", "*.cpp"]},
    include_package_data=True,
    install_requires=["numpy>=1.22"],
    extras_require={
        "gpu": ["cupy-cuda12x"],
        "gpu13": ["cupy-cuda13x"],
        "data": ["pillow>=9"],
        "plot": ["matplotlib>=3.5", "tqdm>=4.60"],
        "test": [
            "pytest>=7",
            "hypothesis>=6.70",
            "pillow>=9",
            "tqdm>=4.60",
            "matplotlib>=3.5",
            "ruff>=0.4",
            # minidl reads/writes .safetensors itself; the package checks it interoperates
            "safetensors>=0.4",
        ],
        # minidl.distributed: `mpiexec -n 2 python script.py` (the mpich wheel brings mpiexec)
        "mpi": ["mpi4py>=3.1", "mpich"],
        # NVRTC for `python -m minidl.cuda.nvrtc_check` without CuPy or a GPU (what CI uses)
        "nvrtc": ["cuda-bindings>=13,<14", "nvidia-cuda-nvrtc>=13,<14"],
    },
)
