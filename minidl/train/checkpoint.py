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
untouched, and the temporary file is removed. A writer killed outright (``kill -9``, power loss)
cannot remove its temporary file; its name ``.<name>.<host>.<pid>.<random>.tmp`` says whose it
is, and the next save to the same path on that host removes every such file whose process is
gone (a save in progress in another live process is left alone).

Loading is all-or-nothing: the model's keys and shapes are checked before anything is written,
and when a later part fails (the optimizer's, scheduler's or loader's state does not fit) the
model, optimizer, scheduler, loader and random state are put back as they were before the call.
Every load error names the file, whether the zip, an array or the JSON metadata is damaged.

Resuming a run on the CPU with the same code and seed gives bit-identical weights to a run that
was never interrupted: the model, the momentum buffers, the learning-rate schedule, the dropout
random state and the loader's position are all restored.
"""
import copy
import io
import json
import os
import socket
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


def _tmp_prefix(path):
    """Start of the temporary files' names for ``path``; the host name and process id that follow
    say which writer a leftover belongs to."""
    return "." + os.path.basename(path) + "."


def _host_tag():
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in socket.gethostname())[:64]


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):  # exists but not ours, or no way to ask: keep the file
        return True
    return True


def remove_stale_temporaries(path):
    """Remove the temporary files left next to ``path`` by writers on this host that were killed
    mid-save (their process no longer exists). Returns the names removed."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    prefix = _tmp_prefix(path) + _host_tag() + "."
    removed = []
    try:
        names = os.listdir(directory)
    except OSError:
        return removed
    for name in names:
        if not (name.startswith(prefix) and name.endswith(".tmp")):
            continue
        pid = name[len(prefix):].split(".", 1)[0]
        if not pid.isdigit() or int(pid) == os.getpid() or _pid_alive(int(pid)):
            continue
        try:
            os.unlink(os.path.join(directory, name))
            removed.append(name)
        except OSError:
            pass
    return removed


def atomic_write(path, write):
    """Call ``write(file)`` on a temporary file next to ``path``, then rename it to ``path``.

    On any exception the temporary file is removed and ``path`` is left as it was. Temporary
    files of earlier writers to ``path`` on this host that were killed mid-write are removed
    first (:func:`remove_stale_temporaries`)."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    remove_stale_temporaries(path)
    fd, tmp = tempfile.mkstemp(dir=directory,
                               prefix=f"{_tmp_prefix(path)}{_host_tag()}.{os.getpid()}.",
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


class CheckpointError(ValueError):
    """A checkpoint file cannot be read or does not fit what it is loaded into; the message
    starts with the file's path."""


def read_checkpoint(path):
    """The raw contents: ``(model_state: dict name -> ndarray, meta: dict)`` with the optimizer,
    scheduler, loader and extra entries decoded. Any damage (truncation, a flipped byte, bad JSON
    metadata) raises :class:`CheckpointError` (a ValueError) naming ``path``."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as e:
        raise type(e)(e.errno, f"cannot read checkpoint {path}: {e.strerror}", path) from e
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as e:
        raise CheckpointError(f"{path}: not a readable minidl checkpoint "
                              f"({type(e).__name__}: {e})") from e
    if META not in arrays:
        raise CheckpointError(f"{path}: not a minidl checkpoint (no {META} entry)")
    raw = arrays.pop(META)
    try:
        meta = json.loads(raw.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise CheckpointError(f"{path}: the checkpoint's JSON metadata ({META}, {raw.size} "
                              f"bytes) is damaged: {type(e).__name__}: {e}") from e
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: the checkpoint's metadata ({META}) is a "
                              f"{type(meta).__name__}, not a JSON object: damaged")
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: unknown checkpoint format {meta.get('format')!r}")
    version = meta.get("version", 0)
    if not isinstance(version, int) or isinstance(version, bool):
        raise CheckpointError(f"{path}: the checkpoint's metadata has version {version!r}, not "
                              "an integer: damaged")
    if version > VERSION:
        raise CheckpointError(f"{path}: checkpoint version {version} is newer than this "
                              f"minidl understands ({VERSION})")
    model_state = {k[len("model/"):]: v for k, v in arrays.items() if k.startswith("model/")}
    keys = meta.get("model_keys")
    if keys is not None and (not isinstance(keys, list) or sorted(map(str, keys)) !=
                             sorted(model_state)):
        raise CheckpointError(f"{path}: the metadata lists model entries {keys!r:.200} but the "
                              f"file holds {sorted(model_state)!r:.200}: damaged")
    if not isinstance(meta.get("random"), dict):
        raise CheckpointError(f"{path}: the checkpoint's metadata has no random state: damaged")
    for name in ("optimizer", "scheduler", "loader", "extra"):
        if meta.get(name) is not None:
            try:
                meta[name] = _decode(meta[name], arrays)
            except (KeyError, TypeError, ValueError) as e:
                raise CheckpointError(f"{path}: the {name} entry of the metadata is damaged "
                                      f"({type(e).__name__}: {e})") from e
    return model_state, meta


def _check_model_state(path, model, model_state, strict):
    """Keys and shapes, before anything is written."""
    own = model.state_dict()
    missing = [k for k in own if k not in model_state]
    unexpected = [k for k in model_state if k not in own]
    if strict and (missing or unexpected):
        raise CheckpointError(f"{path}: does not fit {type(model).__name__}: missing keys "
                              f"{missing}, unexpected keys {unexpected}")
    for k, t in own.items():
        if k in model_state and tuple(model_state[k].shape) != tuple(t.shape):
            raise CheckpointError(f"{path}: {k!r} has shape {tuple(model_state[k].shape)} in the "
                                  f"checkpoint but {tuple(t.shape)} in the model")


def _snapshot_model(model):
    return {k: backend.to_numpy(getattr(v, "data", v)).copy()
            for k, v in model.state_dict().items()}


def load_checkpoint(path, model, optimizer=None, scheduler=None, loader=None, strict=True,
                    restore_random=True):
    """Restore what :func:`save_checkpoint` saved into the given objects; returns the ``extra``
    dict (epoch, iteration, ...).

    Model arrays go to the model's device and dtype. Passing an optimizer, scheduler or loader
    that the checkpoint does not hold raises ValueError. ``restore_random`` also restores the
    global :mod:`minidl.random` state (dropout masks continue as in the uninterrupted run).

    All or nothing: when any part fails to load (damaged file, wrong model, an optimizer state
    that does not fit), every object passed in is left as it was, and the error
    (:class:`CheckpointError`, a ValueError) names ``path`` and the part.
    """
    path = os.fspath(path)
    model_state, meta = read_checkpoint(path)
    parts = [(name, obj) for name, obj in (("optimizer", optimizer), ("scheduler", scheduler),
                                           ("loader", loader)) if obj is not None]
    for name, _obj in parts:
        if meta.get(name) is None:
            raise CheckpointError(f"{path}: the checkpoint holds no {name} state, but a {name} "
                                  "was passed to load_checkpoint")
    _check_model_state(path, model, model_state, strict)

    # everything below writes; on failure put back what was there
    saved_model = _snapshot_model(model)
    saved_parts = [(obj, copy.deepcopy(obj.state_dict())) for _, obj in parts]
    saved_random = _random.get_state()
    part = "model"
    try:
        model.load_state_dict(model_state, strict=strict)
        for part, obj in parts:
            obj.load_state_dict(meta[part])
        if restore_random:
            part = "random"
            _random.set_state(meta["random"])
    except Exception as e:
        model.load_state_dict(saved_model, strict=False)
        for obj, state in saved_parts:
            obj.load_state_dict(state)
        _random.set_state(saved_random)
        raise CheckpointError(f"{path}: cannot load the {part} state "
                              f"({type(e).__name__}: {e}); nothing was changed") from e
    return meta.get("extra") or {}
