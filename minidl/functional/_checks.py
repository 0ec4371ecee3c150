"""Argument checks shared by the functional ops: Tensor types, the dtype rule, finite numbers.

The dtype rule (stated for users in the package docstring): the layers compute in floating
point, and every Tensor argument must have the input's dtype. A mix is a TypeError naming both
dtypes and shapes; nothing is promoted silently.
"""
import math
import numbers

from minidl.tensor import Tensor


def _tensor(op, name, t):
    if not isinstance(t, Tensor):
        raise TypeError(f"{op}: {name} must be a minidl Tensor, got {type(t).__name__}"
                        + (" (wrap it: minidl.Tensor(array))" if hasattr(t, "shape") else ""))
    return t


def check_floating(op, input, **others):
    """``input`` is a floating-point Tensor and each of ``others`` (name -> Tensor or None) is a
    Tensor of the same dtype; otherwise TypeError naming the op, the arguments, dtypes, shapes."""
    _tensor(op, "input", input)
    if input.dtype.kind != "f":
        raise TypeError(f"{op}: input has dtype {input.dtype} (shape {input.shape}), but {op} "
                        "computes in floating point (float16, float32, float64): cast it with "
                        ".float() or .double()")
    for name, t in others.items():
        if t is None:
            continue
        _tensor(op, name, t)
        if t.dtype != input.dtype:
            raise TypeError(f"{op}: input is {input.dtype} (shape {input.shape}) but {name} is "
                            f"{t.dtype} (shape {t.shape}); minidl does not promote mixed "
                            "dtypes: cast one with .to(dtype=...)")
    return input


def finite(op, name, value, low=None, high=None, low_open=False):
    """``float(value)``, which must be a real, finite number in [low, high] (low excluded when
    ``low_open``); otherwise TypeError/ValueError naming the op and the argument."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{op}: {name} must be a real number, got {type(value).__name__} "
                        f"{value!r:.40}")
    v = float(value)
    bad = not math.isfinite(v) or (low is not None and (v <= low if low_open else v < low)) \
        or (high is not None and v > high)
    if bad:
        where = (" a finite number" if low is None and high is None else
                 f" in {'(' if low_open else '['}{'-inf' if low is None else low}, "
                 f"{'inf)' if high is None else str(high) + ']'}")
        raise ValueError(f"{op}: {name} must be{where}, got {value!r}")
    return v
