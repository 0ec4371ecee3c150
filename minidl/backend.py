"""Devices and array modules: the ONLY module in minidl that imports CuPy.

minidl has two devices:

* ``"cpu"``  -- arrays are ``numpy.ndarray``;
* ``"cuda"`` -- arrays are ``cupy.ndarray`` on the current GPU.

CuPy is optional. ``import minidl`` works with NumPy alone; CuPy importable without a GPU (as on
CI machines) is a normal case in which :func:`is_available` is False. Asking for ``"cuda"`` when
it is not available raises :class:`DeviceError` saying what is missing.

One body of code serves both devices through ``xp = get_array_module(x)`` (the Chainer/CuPy
idiom): ``xp`` is ``numpy`` or ``cupy``.
"""
import numpy as np

try:  # guarded: CuPy is an optional extra
    import cupy as _cupy
    _cupy_import_error = None
except Exception as e:  # ImportError, or a broken CUDA install raising something else
    _cupy = None
    _cupy_import_error = e

DEVICES = ("cpu", "cuda")


class DeviceError(RuntimeError):
    """A device was asked for that this machine cannot provide, or devices were mixed."""


_available_cache = None


def cupy_module():
    """The ``cupy`` module, or None when it cannot be imported (no GPU needed to import it)."""
    return _cupy


def is_available():
    """True when CuPy imports AND at least one CUDA device is present and usable."""
    global _available_cache
    if _available_cache is None:
        ok = False
        if _cupy is not None:
            try:
                ok = bool(_cupy.cuda.is_available())
            except Exception:
                ok = False
        _available_cache = ok
    return _available_cache


def _why_no_cuda():
    if _cupy is None:
        return (f"CuPy is not importable ({type(_cupy_import_error).__name__}: "
                f"{_cupy_import_error}); install it with pip install \"minidl[gpu]\" "
                "(cupy-cuda12x) or cupy-cuda13x to match your CUDA driver")
    return "CuPy is installed but no CUDA device is visible (cupy.cuda.is_available() is False)"


def normalize_device(device):
    """Map ``None``/``"cpu"``/``"cuda"``/``"cuda:0"``/``"gpu"`` to ``"cpu"`` or ``"cuda"``.

    Raises ValueError for an unknown name and DeviceError when CUDA is asked for but unavailable.
    """
    if device is None:
        return "cpu"
    if not isinstance(device, str):
        device = getattr(device, "type", None) or str(device)
    d = device.lower()
    if d in ("cuda", "gpu") or d.startswith("cuda:"):
        if not is_available():
            raise DeviceError(f"device {device!r} was asked for, but {_why_no_cuda()}.")
        return "cuda"
    if d == "cpu":
        return "cpu"
    raise ValueError(f"unknown device {device!r}: expected one of {DEVICES}")


def get_array_module(*arrays):
    """``numpy`` or ``cupy``: the module that owns the given arrays (numpy for anything else).

    Accepts raw arrays or minidl Tensors (anything with a ``.data`` array attribute).
    """
    if _cupy is not None:
        for a in arrays:
            a = getattr(a, "data", a) if not isinstance(a, (np.ndarray,)) else a
            if isinstance(a, _cupy.ndarray):
                return _cupy
    return np


def device_of(array):
    """``"cuda"`` for a CuPy array, ``"cpu"`` otherwise."""
    if _cupy is not None and isinstance(array, _cupy.ndarray):
        return "cuda"
    return "cpu"


def xp_for(device):
    """The array module for a (normalized) device name."""
    if normalize_device(device) == "cuda":
        return _cupy
    return np


def to_device(array, device):
    """Return ``array`` on ``device`` (no copy when it is already there)."""
    device = normalize_device(device)
    if device == "cpu":
        if _cupy is not None and isinstance(array, _cupy.ndarray):
            return _cupy.asnumpy(array)
        return np.asarray(array)
    return _cupy.asarray(array)


def to_numpy(array):
    """A NumPy array with the values of ``array`` (a copy for CuPy arrays)."""
    if _cupy is not None and isinstance(array, _cupy.ndarray):
        return _cupy.asnumpy(array)
    return np.asarray(array)


def synchronize(device="cuda"):
    """Wait for all queued GPU work (a no-op on the CPU or without CUDA)."""
    if device != "cpu" and is_available():
        _cupy.cuda.get_current_stream().synchronize()
