"""Checkpoints: everything a run needs to continue exactly, in ONE ``.npz`` file, saved atomically.

A checkpoint holds

* ``model/<name>``: every array of ``model.state_dict()`` (parameters and buffers, as NumPy);
* ``__meta__``: a JSON document (stored as a uint8 array) with the optimizer's and the
  scheduler's ``state_dict()``, the data loader's ``state_dict()`` (epoch and position), the
  global random state of :mod:`minidl.random`, and the user's ``**extra`` (epoch, iteration,
  best error, ...). Arrays inside those (momentum buffers) are stored as further entries
  ``state/<n>`` and referenced from the JSON, so nothing is pickled.

Writing goes to a temporary file in the checkpoint's directory, which is flushed and fsync'ed,
then renamed over the old file with ``os.replace`` (atomic on POSIX and Windows) and the
directory fsync'ed. A crash or an exception during the save leaves the previous checkpoint
untouched, and the temporary file is removed.

Resuming a run on the CPU with the same code and seed gives bit-identical weights to a run that
was never interrupted: the model, the momentum buffers, the learning-rate schedule, the dropout
random state and the loader's position are all restored.
"""
import io
import json
import os
import tempfile

import numpy as np

from minidl import backend
from minidl import random as _random

FORMAT = "minidl-checkpoint"
VERSION = 1
META = "__meta__"


# ----------------------------------------------------------------------------------------------
# JSON + arrays encoding (exact round trip of dicts with int keys, tuples, arrays, inf/nan)


def _is_array(v):
    cp = backend.cupy_module()
    return isinstance(v, np.ndarray) or (cp is not None and isinstance(v, cp.ndarray))


def _encode(obj, arrays):
    if _is_array(obj):
        key = f"state/{len(arrays)}"
        arrays[key] = backend.to_numpy(obj)
        return {"__array__": key}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj) and "__array__" not in obj \
                and "__items__" not in obj and "__tuple__" not in obj:
            return {k: _encode(v, arrays) for k, v in obj.items()}
        return {"__items__": [[_encode(k, arrays), _encode(v, arrays)] for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, arrays) for v in obj]}
    if isinstance(obj, list):
        return [_encode(v, arrays) for v in obj]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if hasattr(obj, "state_dict") and callable(obj.state_dict):
        return _encode(obj.state_dict(), arrays)
    raise TypeError(f"save_checkpoint: cannot store a value of type {type(obj).__name__} "
                    f"({obj!r:.80}); use numbers, strings, lists, dicts and arrays")


def _decode(obj, arrays):
    if isinstance(obj, list):
        return [_decode(v, arrays) for v in obj]
    if isinstance(obj, dict):
        if "__array__" in obj:
            return np.array(arrays[obj["__array__"]])
        if "__tuple__" in obj:
            return tuple(_decode(v, arrays) for v in obj["__tuple__"])
        if "__items__" in obj:
            out = {}
            for k, v in obj["__items__"]:
                k = _decode(k, arrays)
                out[tuple(k) if isinstance(k, list) else k] = _decode(v, arrays)
            return out
        return {k: _decode(v, arrays) for k, v in obj.items()}
    return obj


# ----------------------------------------------------------------------------------------------
# atomic write


def _fsync_dir(directory):
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # e.g. Windows: directories cannot be opened
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_npz(f, arrays):
    """Write the arrays as an .npz into the open binary file ``f`` (a seam tests patch)."""
    np.savez(f, **arrays)


def atomic_write(path, write):
    """Call ``write(file)`` on a temporary file next to ``path``, then rename it to ``path``.

    On any exception the temporary file is removed and ``path`` is left as it was."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix="." + os.path.basename(path) + ".",
                               suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(directory)


# ----------------------------------------------------------------------------------------------
# save / load


def save_checkpoint(path, model, optimizer=None, scheduler=None, loader=None, **extra):
    """Save model, optimizer, scheduler, loader position, random state and ``extra`` to ``path``
    (one .npz file, written atomically). ``extra`` values: numbers, strings, lists, dicts,
    arrays (e.g. ``epoch=3, iteration=1200, best_top1=0.31``). Returns ``path``."""
    arrays = {}
    for k, v in model.state_dict().items():
        arrays["model/" + k] = backend.to_numpy(getattr(v, "data", v))
    meta = {
        "format": FORMAT, "version": VERSION,
        "model_keys": list(model.state_dict().keys()),
        "optimizer": None if optimizer is None else _encode(optimizer.state_dict(), arrays),
        "scheduler": None if scheduler is None else _encode(scheduler.state_dict(), arrays),
        "loader": None if loader is None else _encode(loader.state_dict(), arrays),
        "random": _random.get_state(),
        "extra": _encode(dict(extra), arrays),
    }
    text = json.dumps(meta, allow_nan=True)
    arrays[META] = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
    atomic_write(path, lambda f: _write_npz(f, arrays))
    return path


def read_checkpoint(path):
    """The raw contents: ``(model_state: dict name -> ndarray, meta: dict)`` with the optimizer,
    scheduler, loader and extra entries decoded."""
    with open(path, "rb") as fh:
        data = fh.read()
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as e:
        raise ValueError(f"{path}: not a readable minidl checkpoint ({type(e).__name__}: {e})") \
            from e
    if META not in arrays:
        raise ValueError(f"{path}: not a minidl checkpoint (no {META} entry)")
    meta = json.loads(arrays.pop(META).tobytes().decode("utf-8"))
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path}: unknown checkpoint format {meta.get('format')!r}")
    if meta.get("version", 0) > VERSION:
        raise ValueError(f"{path}: checkpoint version {meta['version']} is newer than this "
                         f"minidl understands ({VERSION})")
    model_state = {k[len("model/"):]: v for k, v in arrays.items() if k.startswith("model/")}
    for name in ("optimizer", "scheduler", "loader", "extra"):
        if meta.get(name) is not None:
            meta[name] = _decode(meta[name], arrays)
    return model_state, meta


def load_checkpoint(path, model, optimizer=None, scheduler=None, loader=None, strict=True,
                    restore_random=True):
    """Restore what :func:`save_checkpoint` saved into the given objects; returns the ``extra``
    dict (epoch, iteration, ...).

    Model arrays go to the model's device and dtype. Passing an optimizer, scheduler or loader
    that the checkpoint does not hold raises ValueError. ``restore_random`` also restores the
    global :mod:`minidl.random` state (dropout masks continue as in the uninterrupted run).
    """
    model_state, meta = read_checkpoint(path)
    model.load_state_dict(model_state, strict=strict)
    for name, obj in (("optimizer", optimizer), ("scheduler", scheduler), ("loader", loader)):
        if obj is None:
            continue
        if meta.get(name) is None:
            raise ValueError(f"{path}: the checkpoint holds no {name} state, but a {name} was "
                             "passed to load_checkpoint")
        obj.load_state_dict(meta[name])
    if restore_random:
        _random.set_state(meta["random"])
    return meta.get("extra") or {}
