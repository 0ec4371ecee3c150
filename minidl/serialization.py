"""``minidl.save(obj, path)`` and ``minidl.load(path)``: weights in and out, by file extension.

======================  ==========================================================================
extension               format
======================  ==========================================================================
``.pth`` / ``.pt``      PyTorch's zip format (``torch.save`` since 1.6). Written so that
                        ``torch.load(path, weights_only=True)`` reads it; read WITHOUT torch and
                        without executing anything from the pickle (see below).
``.safetensors``        the safetensors format (8-byte header length, JSON header, raw bytes),
                        read and written here directly; the ``safetensors`` package is not needed.
``.npz``                NumPy's zip of ``.npy`` files, read with ``allow_pickle=False``.
======================  ==========================================================================

``obj`` is a state dict or any nesting of dicts (string or integer keys), lists and tuples whose
leaves are Tensors, NumPy/CuPy arrays, numbers, strings, booleans or None. A flat mapping of names
to Tensors/arrays is stored as exactly that, so other tools read the ``.safetensors``/``.npz``
files as usual; anything else is stored in those two formats as its tensors under dotted path
names plus a JSON description of the nesting (``minidl_structure``), which :func:`load` uses to
give the same nesting back.

dtypes: float16/32/64, bfloat16 (read only, as float32 since NumPy has no bfloat16), int8/16/32/64,
uint8, bool, complex64/128. :func:`load` returns :class:`minidl.Tensor` leaves (on ``map_location``).

Reading ``.pth`` safely: the pickle inside a torch checkpoint names Python callables that a plain
``pickle.load`` would import and call. Here a restricted unpickler resolves only
``torch._utils._rebuild_tensor_v2`` / ``_rebuild_tensor`` / ``_rebuild_tensor_v3`` /
``_rebuild_parameter`` / ``_rebuild_parameter_with_state``, ``collections.OrderedDict``,
``torch.Size``, torch's storage classes and dtypes, each to this module's own code; the storages
are the zip's ``data/<key>`` records, read with their dtype, byte order, offset and strides. Any
other global stops the load with :class:`UnsafeCheckpointError` before anything is executed.

Every write goes to a temporary file in the target's folder and is renamed over the target, so
an interrupted save never leaves a truncated file behind.
"""
import errno
import io
import json
import math
import os
import pickle
import struct
import sys
import tempfile
import zipfile
from collections import OrderedDict

import numpy as np

from minidl import backend
from minidl.tensor import Tensor

__all__ = ["UnsafeCheckpointError", "load", "save"]

_EXTENSIONS = (".pth", ".pt", ".safetensors", ".npz")
_STRUCTURE_KEY = "minidl_structure"          # safetensors __metadata__ key / npz member name


class UnsafeCheckpointError(pickle.UnpicklingError):
    """A checkpoint's pickle names a global outside the tensor-rebuild allow-list."""


# ----------------------------------------------------------------------------------------------
# dtypes


# torch storage class -> numpy dtype (None: bfloat16, widened to float32 on read)
_STORAGE_DTYPES = {
    "DoubleStorage": np.dtype("f8"), "FloatStorage": np.dtype("f4"),
    "HalfStorage": np.dtype("f2"), "BFloat16Storage": None,
    "LongStorage": np.dtype("i8"), "IntStorage": np.dtype("i4"),
    "ShortStorage": np.dtype("i2"), "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"), "BoolStorage": np.dtype("?"),
    "ComplexFloatStorage": np.dtype("c8"), "ComplexDoubleStorage": np.dtype("c16"),
    "UntypedStorage": np.dtype("u1"),
}
_STORAGE_FOR = {dt.str[1:]: name for name, dt in _STORAGE_DTYPES.items()
                if dt is not None and name != "UntypedStorage"}
# torch dtype attribute names (used by _rebuild_tensor_v3) -> numpy dtype
_TORCH_DTYPES = {
    "float64": np.dtype("f8"), "double": np.dtype("f8"), "float32": np.dtype("f4"),
    "float": np.dtype("f4"), "float16": np.dtype("f2"), "half": np.dtype("f2"),
    "bfloat16": None, "int64": np.dtype("i8"), "long": np.dtype("i8"),
    "int32": np.dtype("i4"), "int": np.dtype("i4"), "int16": np.dtype("i2"),
    "short": np.dtype("i2"), "int8": np.dtype("i1"), "uint8": np.dtype("u1"),
    "bool": np.dtype("?"), "uint16": np.dtype("u2"), "uint32": np.dtype("u4"),
    "uint64": np.dtype("u8"), "complex64": np.dtype("c8"), "complex128": np.dtype("c16"),
}
_ST_DTYPES = {"F64": np.dtype("f8"), "F32": np.dtype("f4"), "F16": np.dtype("f2"),
              "BF16": None, "I64": np.dtype("i8"), "I32": np.dtype("i4"),
              "I16": np.dtype("i2"), "I8": np.dtype("i1"), "U8": np.dtype("u1"),
              "U16": np.dtype("u2"), "U32": np.dtype("u4"), "U64": np.dtype("u8"),
              "BOOL": np.dtype("?"), "C64": np.dtype("c8")}
_ST_NAMES = {dt.str[1:]: name for name, dt in _ST_DTYPES.items() if dt is not None}


def _bf16_to_f32(raw_u16):
    """bfloat16 bit patterns (uint16) -> float32 (exact: bfloat16 is float32's top half)."""
    return (raw_u16.astype(np.uint32) << 16).view(np.float32)


# ----------------------------------------------------------------------------------------------
# the object tree


def _is_arraylike(v):
    return isinstance(v, (Tensor, np.ndarray)) or (
        backend.cupy_module() is not None and isinstance(v, backend.cupy_module().ndarray))


def _to_numpy(v, where, path):
    arr = backend.to_numpy(v.data if isinstance(v, Tensor) else v)
    if arr.dtype.str[1:] not in _STORAGE_FOR:
        raise TypeError(f"minidl.save({where}): {path or 'the object'} has dtype {arr.dtype}, "
                        f"which is not saved (supported: float16/32/64, int8/16/32/64, uint8, "
                        f"bool, complex64/128)")
    arr = arr.astype(arr.dtype.newbyteorder("<"), copy=False)
    return arr if arr.flags.c_contiguous else arr.copy(order="C")   # (keeps 0-d arrays 0-d)


def _check_leaf(v, where, path):
    if v is None or isinstance(v, (bool, int, float, str)):
        return
    if isinstance(v, np.generic) and v.dtype.kind in "biuf":
        return
    hint = (" -- save its state_dict() instead" if hasattr(v, "state_dict") else "")
    raise TypeError(f"minidl.save({where}): cannot save {path or 'the object'} of type "
                    f"{type(v).__name__} (expected Tensors, arrays, numbers, strings, None, and "
                    f"dicts/lists/tuples of them){hint}")


def _plain_number(v):
    if isinstance(v, np.generic):
        return v.item()
    return v


def _is_flat_tensor_map(obj):
    return (isinstance(obj, dict) and all(isinstance(k, str) for k in obj)
            and all(_is_arraylike(v) for v in obj.values()))


def _flatten(obj, where):
    """(structure JSON-able tree, OrderedDict path -> numpy array)."""
    arrays = OrderedDict()

    def name_for(path):
        base = ".".join(str(p) for p in path) or "tensor"
        name, i = base, 1
        while name in arrays or name == _STRUCTURE_KEY:
            name, i = f"{base}#{i}", i + 1
        return name

    def walk(v, path):
        label = ".".join(str(p) for p in path)
        if _is_arraylike(v):
            name = name_for(path)
            arrays[name] = _to_numpy(v, where, label)
            return {"tensor": name}
        if isinstance(v, dict):
            items = []
            for k, x in v.items():
                if isinstance(k, bool) or not isinstance(k, (str, int)):
                    raise TypeError(f"minidl.save({where}): dict key {k!r} at "
                                    f"{label or 'the top level'} is a {type(k).__name__}; "
                                    f"only str and int keys can be saved in this format")
                items.append([["s" if isinstance(k, str) else "i", k], walk(x, path + [k])])
            return {"dict": items, "ordered": isinstance(v, OrderedDict)}
        if isinstance(v, (list, tuple)):
            kind = "list" if isinstance(v, list) else "tuple"
            return {kind: [walk(x, path + [i]) for i, x in enumerate(v)]}
        _check_leaf(v, where, label)
        v = _plain_number(v)
        if isinstance(v, float) and not np.isfinite(v):
            return {"float": repr(v)}
        return {"value": v}

    return walk(obj, []), arrays


def _unflatten(node, tensors, where):
    if "tensor" in node:
        if node["tensor"] not in tensors:
            raise ValueError(f"minidl.load({where}): the structure names a tensor "
                             f"{node['tensor']!r} that the file does not hold")
        return tensors[node["tensor"]]
    if "dict" in node:
        out = OrderedDict() if node.get("ordered") else {}
        for (kind, k), v in node["dict"]:
            out[int(k) if kind == "i" else k] = _unflatten(v, tensors, where)
        return out
    if "list" in node:
        return [_unflatten(v, tensors, where) for v in node["list"]]
    if "tuple" in node:
        return tuple(_unflatten(v, tensors, where) for v in node["tuple"])
    if "float" in node:
        return float(node["float"])
    if "value" in node:
        return node["value"]
    raise ValueError(f"minidl.load({where}): malformed {_STRUCTURE_KEY} entry {node!r}")


def _to_tensors(obj, device):
    """Replace every ndarray leaf by a Tensor on ``device``."""
    if isinstance(obj, np.ndarray):
        return Tensor(obj if device in (None, "cpu") else backend.to_device(obj, device))
    if isinstance(obj, OrderedDict):
        out = OrderedDict((k, _to_tensors(v, device)) for k, v in obj.items())
        return out
    if isinstance(obj, dict):
        return {k: _to_tensors(v, device) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_to_tensors(v, device) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_to_tensors(v, device) for v in obj)
    return obj


# ----------------------------------------------------------------------------------------------
# atomic writes


def _atomic_write(path, write_fn):
    """Call ``write_fn(fileobj)`` on a temporary file next to ``path``, then rename it."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"minidl.save: folder {folder!r} of {path!r} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=".tmp-" + os.path.basename(path) + "-", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            write_fn(f)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)        # mkstemp makes it 0600; give a normal file's mode
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


# ----------------------------------------------------------------------------------------------
# .pth writer: a hand-written protocol-2 pickle (only opcodes torch's weights_only unpickler
# accepts) plus the zip records torch.save writes


class _PickleWriter:
    def __init__(self, where):
        self.out = io.BytesIO()
        self.where = where
        self.storages = []                   # numpy arrays, key = index

    def op(self, b):
        self.out.write(b)

    def global_(self, module, name):
        self.op(b"c" + module.encode() + b"\n" + name.encode() + b"\n")

    def int_(self, v):
        v = int(v)
        if 0 <= v < 256:
            self.op(b"K" + bytes([v]))
        elif 0 <= v < 65536:
            self.op(b"M" + struct.pack("<H", v))
        elif -2 ** 31 <= v < 2 ** 31:
            self.op(b"J" + struct.pack("<i", v))
        else:
            raw = v.to_bytes((v.bit_length() + 8) // 8, "little", signed=True)
            self.op(b"\x8a" + bytes([len(raw)]) + raw)

    def str_(self, s):
        raw = s.encode("utf-8")
        self.op(b"X" + struct.pack("<I", len(raw)) + raw)

    def tuple_(self, items, emit):
        self.op(b"(")
        for x in items:
            emit(x)
        self.op(b"t")

    def ordered_dict(self):
        self.global_("collections", "OrderedDict")
        self.op(b")R")

    def tensor(self, arr):
        key = str(len(self.storages))
        self.storages.append(arr)
        self.global_("torch._utils", "_rebuild_tensor_v2")
        self.op(b"(")                                          # args of _rebuild_tensor_v2
        self.op(b"(")                                          # persistent id tuple
        self.str_("storage")
        self.global_("torch", _STORAGE_FOR[arr.dtype.str[1:]])
        self.str_(key)
        self.str_("cpu")
        self.int_(arr.size)
        self.op(b"tQ")                                          # TUPLE, BINPERSID
        self.int_(0)                                            # storage offset
        self.tuple_(arr.shape, self.int_)
        strides = [s // arr.itemsize for s in arr.strides] if arr.size else [
            int(np.prod(arr.shape[i + 1:])) for i in range(arr.ndim)]
        self.tuple_(strides, self.int_)
        self.op(b"\x89")                                        # requires_grad False
        self.ordered_dict()                                     # backward hooks
        self.op(b"tR")

    def value(self, v, path):
        label = ".".join(str(p) for p in path)
        if _is_arraylike(v):
            self.tensor(_to_numpy(v, self.where, label))
        elif isinstance(v, dict):
            if isinstance(v, OrderedDict):
                self.ordered_dict()
            else:
                self.op(b"}")
            if v:
                self.op(b"(")
                for k, x in v.items():
                    if not isinstance(k, (str, int)):
                        raise TypeError(f"minidl.save({self.where}): dict key {k!r} at "
                                        f"{label or 'the top level'} is a {type(k).__name__} "
                                        f"(only str, int and bool keys are saved)")
                    self.value(k, path)
                    self.value(x, path + [k])
                self.op(b"u")
        elif isinstance(v, list):
            self.op(b"]")
            if v:
                self.op(b"(")
                for i, x in enumerate(v):
                    self.value(x, path + [i])
                self.op(b"e")
        elif isinstance(v, tuple):
            self.op(b"(")
            for i, x in enumerate(v):
                self.value(x, path + [i])
            self.op(b"t")
        else:
            _check_leaf(v, self.where, label)
            v = _plain_number(v)
            if v is None:
                self.op(b"N")
            elif v is True:
                self.op(b"\x88")
            elif v is False:
                self.op(b"\x89")
            elif isinstance(v, int):
                self.int_(v)
            elif isinstance(v, float):
                self.op(b"G" + struct.pack(">d", v))
            else:
                self.str_(v)

    def dump(self, obj):
        self.op(b"\x80\x02")
        self.value(obj, [])
        self.op(b".")
        return self.out.getvalue()


def _zip_add(zf, name, data, align=64):
    """Add an uncompressed record whose data starts at a multiple of ``align`` (as torch does,
    so the storages can be memory-mapped)."""
    info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_STORED
    offset = zf.fp.tell() + 30 + len(name.encode("utf-8"))
    pad = (-(offset + 4)) % align
    info.extra = struct.pack("<HH", 0x4246, pad) + b"Z" * pad      # "FB" padding field
    zf.writestr(info, data)


def _save_pth(obj, f, path):
    writer = _PickleWriter(path)
    pkl = writer.dump(obj)
    stem = os.path.splitext(os.path.basename(path))[0] or "archive"
    stem = "".join(c if (c.isalnum() or c in "_-") else "_" for c in stem) or "archive"
    with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED) as zf:
        _zip_add(zf, f"{stem}/data.pkl", pkl)
        _zip_add(zf, f"{stem}/.format_version", b"1")
        _zip_add(zf, f"{stem}/.storage_alignment", b"64")
        _zip_add(zf, f"{stem}/byteorder", b"little")
        for key, arr in enumerate(writer.storages):
            _zip_add(zf, f"{stem}/data/{key}", arr.tobytes())
        _zip_add(zf, f"{stem}/version", b"3\n")


# ----------------------------------------------------------------------------------------------
# .pth reader


class _Storage:
    __slots__ = ("array", "dtype", "key", "numel")

    def __init__(self, key, dtype, numel, array):
        self.key, self.dtype, self.numel, self.array = key, dtype, numel, array


class _StorageType:
    __slots__ = ("name",)

    def __init__(self, name):
        self.name = name


class _DType:
    __slots__ = ("name",)

    def __init__(self, name):
        self.name = name


class _Rebuilt:
    """A tensor read from the checkpoint (an ndarray in ``array``); no ``__dict__`` and no
    ``__setstate__``, so a BUILD opcode cannot attach anything to it."""
    __slots__ = ("array",)

    def __init__(self, array):
        self.array = array


def _make_unpickler(zf, prefix, path, byteorder):
    cache = {}
    names = set(zf.namelist())

    def view(storage, offset, size, stride, what):
        arr = storage.array
        size = tuple(int(s) for s in size)
        stride = tuple(int(s) for s in stride)
        offset = int(offset)
        if len(size) != len(stride):
            raise ValueError(f"minidl.load({path!r}): {what} has size {size} but stride "
                             f"{stride}")
        if any(s < 0 for s in size) or any(s < 0 for s in stride) or offset < 0:
            raise ValueError(f"minidl.load({path!r}): {what} has a negative size, stride or "
                             f"storage offset ({size}, {stride}, {offset})")
        n = math.prod(size)
        if n == 0:
            return np.zeros(size, dtype=arr.dtype)
        last = offset + sum((s - 1) * st for s, st in zip(size, stride))
        if last >= arr.size:
            raise ValueError(f"minidl.load({path!r}): {what} (size {size}, stride {stride}, "
                             f"offset {offset}) reaches element {last} of storage "
                             f"data/{storage.key}, which holds {arr.size} elements")
        out = np.lib.stride_tricks.as_strided(arr[offset:], shape=size,
                                              strides=[s * arr.itemsize for s in stride])
        return np.array(out)                    # own, writable, C-contiguous copy

    def rebuild_v2(storage, offset, size, stride, requires_grad=False, hooks=None,
                   metadata=None):
        if not isinstance(storage, _Storage):
            raise TypeError(f"minidl.load({path!r}): _rebuild_tensor_v2 got "
                             f"{type(storage).__name__} instead of a storage")
        return _Rebuilt(view(storage, offset, size, stride, "a tensor"))

    def rebuild_v1(storage, offset, size, stride):
        return rebuild_v2(storage, offset, size, stride)

    def rebuild_v3(storage, offset, size, stride, requires_grad, hooks, dtype, metadata=None):
        if not isinstance(dtype, _DType):
            raise TypeError(f"minidl.load({path!r}): _rebuild_tensor_v3 got a dtype of type "
                             f"{type(dtype).__name__}")
        raw = storage.array.view(np.uint8)
        np_dtype = _TORCH_DTYPES[dtype.name]
        if np_dtype is None:
            arr = _bf16_to_f32(raw.view(np.dtype("u2").newbyteorder(byteorder)))
        else:
            arr = raw.view(np_dtype.newbyteorder(byteorder)).astype(np_dtype)
        return _Rebuilt(view(_Storage(storage.key, arr.dtype, arr.size, arr), offset, size,
                             stride, "a tensor"))

    def rebuild_parameter(data, requires_grad=True, hooks=None, state=None):
        if not isinstance(data, _Rebuilt):
            raise TypeError(f"minidl.load({path!r}): _rebuild_parameter got "
                             f"{type(data).__name__} instead of a tensor")
        return data

    def size(*args):
        return tuple(*args)

    allowed = {
        ("torch._utils", "_rebuild_tensor_v2"): rebuild_v2,
        ("torch._utils", "_rebuild_tensor"): rebuild_v1,
        ("torch._utils", "_rebuild_tensor_v3"): rebuild_v3,
        ("torch._utils", "_rebuild_parameter"): rebuild_parameter,
        ("torch._utils", "_rebuild_parameter_with_state"): rebuild_parameter,
        ("collections", "OrderedDict"): OrderedDict,
        ("torch", "Size"): size,
    }

    class Unpickler(pickle.Unpickler):
        def find_class(self, module, name):
            fn = allowed.get((module, name))
            if fn is not None:
                return fn
            if module in ("torch", "torch.storage") and name in _STORAGE_DTYPES:
                return _StorageType(name)
            if module == "torch" and name in _TORCH_DTYPES:
                return _DType(name)
            raise UnsafeCheckpointError(
                f"minidl.load({path!r}): the checkpoint's pickle refers to {module}.{name}, "
                f"which is not one of the tensor-rebuild functions, containers or storage "
                f"types this loader allows; nothing from the file was executed (re-save the "
                f"tensors alone, e.g. torch.save(model.state_dict(), path))")

        def persistent_load(self, pid):
            if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                    and isinstance(pid[1], _StorageType)):
                raise UnsafeCheckpointError(f"minidl.load({path!r}): unknown persistent id "
                                            f"{pid!r} in the pickle; nothing was executed")
            _, stype, key, _location, numel = pid
            key = str(key)
            if key in cache:
                return cache[key]
            record = f"{prefix}data/{key}"
            if record not in names:
                raise ValueError(f"minidl.load({path!r}): the pickle refers to storage "
                                 f"{key!r} but the archive has no record {record!r}")
            raw = zf.read(record)
            dtype = _STORAGE_DTYPES[stype.name]
            if dtype is None:                                    # bfloat16
                u16 = np.frombuffer(raw, dtype=np.dtype("u2").newbyteorder(byteorder))
                arr = _bf16_to_f32(u16)
            else:
                if len(raw) % dtype.itemsize:
                    raise ValueError(f"minidl.load({path!r}): record {record!r} holds "
                                     f"{len(raw)} bytes, not a whole number of {stype.name} "
                                     f"elements ({dtype.itemsize} bytes each)")
                arr = np.frombuffer(raw, dtype=dtype.newbyteorder(byteorder)).astype(dtype)
            if arr.size < int(numel):
                raise ValueError(f"minidl.load({path!r}): record {record!r} holds {arr.size} "
                                 f"elements but the pickle says {numel}")
            st = _Storage(key, arr.dtype, int(numel), arr)
            cache[key] = st
            return st

    return Unpickler


def _unwrap(obj, path):
    if isinstance(obj, _Rebuilt):
        return obj.array
    if isinstance(obj, OrderedDict):
        return OrderedDict((k, _unwrap(v, path)) for k, v in obj.items())
    if isinstance(obj, dict):
        return {k: _unwrap(v, path) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_unwrap(v, path) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_unwrap(v, path) for v in obj)
    if isinstance(obj, (_Storage, _StorageType, _DType)):
        raise TypeError(f"minidl.load({path!r}): the checkpoint holds a bare storage or "
                         f"dtype, not a tensor; only tensors and containers are read")
    return obj


def _load_pth(path):
    try:
        zf = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        with open(path, "rb") as f:
            head = f.read(2)
        legacy = head[:1] == b"\x80"
        raise ValueError(f"minidl.load({path!r}): not a zip archive" + (
            " (it looks like torch's legacy pre-1.6 format; re-save it with torch >= 1.6 or "
            "with _use_new_zipfile_serialization=True)" if legacy else "")) from None
    with zf:
        names = zf.namelist()
        pkls = [n for n in names if n.endswith("data.pkl") and n.count("/") == 1]
        if not pkls:
            if any(n.endswith("constants.pkl") for n in names):
                raise ValueError(f"minidl.load({path!r}): this is a TorchScript archive "
                                 f"(torch.jit.save); save its state_dict() with torch.save")
            raise ValueError(f"minidl.load({path!r}): the zip archive has no <name>/data.pkl "
                             f"record, so it is not a torch.save checkpoint")
        if len(pkls) > 1:
            raise ValueError(f"minidl.load({path!r}): the archive holds several pickles "
                             f"({pkls}); expected one torch.save checkpoint")
        prefix = pkls[0][:-len("data.pkl")]
        byteorder = "<"
        if prefix + "byteorder" in names:
            mark = zf.read(prefix + "byteorder").decode("ascii", "replace").strip()
            if mark not in ("little", "big"):
                raise ValueError(f"minidl.load({path!r}): unknown byte order mark {mark!r}")
            byteorder = "<" if mark == "little" else ">"
        Unpickler = _make_unpickler(zf, prefix, path, byteorder)
        try:
            obj = Unpickler(io.BytesIO(zf.read(pkls[0]))).load()
        except UnsafeCheckpointError:
            raise
        except (ValueError, TypeError) as e:
            if str(e).startswith("minidl.load("):
                raise
            raise ValueError(f"minidl.load({path!r}): cannot read the checkpoint's pickle: "
                             f"{type(e).__name__}: {e}") from None
        except (pickle.UnpicklingError, EOFError, AttributeError, KeyError, IndexError,
                struct.error, OverflowError, RecursionError) as e:
            raise ValueError(f"minidl.load({path!r}): cannot read the checkpoint's pickle: "
                             f"{type(e).__name__}: {e}") from None
    return _unwrap(obj, path)


# ----------------------------------------------------------------------------------------------
# .safetensors


def _save_safetensors(obj, f, path):
    if _is_flat_tensor_map(obj):
        arrays = OrderedDict((k, _to_numpy(v, path, k)) for k, v in obj.items())
        metadata = None
    else:
        structure, arrays = _flatten(obj, path)
        metadata = {_STRUCTURE_KEY: json.dumps(structure)}
    header, offset = OrderedDict(), 0
    if metadata:
        header["__metadata__"] = metadata
    for k, arr in arrays.items():
        if k == "__metadata__":
            raise ValueError(f"minidl.save({path!r}): '__metadata__' is reserved in "
                             f".safetensors files and cannot be a tensor name")
        if arr.dtype.str[1:] not in _ST_NAMES:
            raise TypeError(f"minidl.save({path!r}): {k!r} has dtype {arr.dtype}, which "
                            f".safetensors cannot hold")
        header[k] = {"dtype": _ST_NAMES[arr.dtype.str[1:]], "shape": list(arr.shape),
                     "data_offsets": [offset, offset + arr.nbytes]}
        offset += arr.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    f.write(struct.pack("<Q", len(raw)))
    f.write(raw)
    for arr in arrays.values():
        f.write(arr.tobytes())


def _load_safetensors(path):
    with open(path, "rb") as f:
        buf = f.read()
    if len(buf) < 8:
        raise ValueError(f"minidl.load({path!r}): {len(buf)} bytes is too short for a "
                         f".safetensors file (8-byte header length first)")
    (n,) = struct.unpack("<Q", buf[:8])
    if n > len(buf) - 8:
        raise ValueError(f"minidl.load({path!r}): header length {n} exceeds the file "
                         f"({len(buf)} bytes); not a .safetensors file or truncated")
    try:
        header = json.loads(buf[8:8 + n].decode("utf-8"), object_pairs_hook=OrderedDict)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"minidl.load({path!r}): the .safetensors header is not valid "
                         f"JSON: {e}") from None
    if not isinstance(header, dict):
        raise TypeError(f"minidl.load({path!r}): the .safetensors header is not a JSON "
                         f"object")
    data = memoryview(buf)[8 + n:]
    metadata = header.pop("__metadata__", None) or {}
    tensors = OrderedDict()
    for k, info in header.items():
        try:
            dt, shape, (begin, end) = info["dtype"], tuple(info["shape"]), info["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"minidl.load({path!r}): header entry {k!r} lacks dtype, shape "
                             f"or data_offsets: {info!r}") from None
        if dt not in _ST_DTYPES:
            raise ValueError(f"minidl.load({path!r}): tensor {k!r} has dtype {dt!r}, which "
                             f"is not read (supported: {', '.join(_ST_DTYPES)})")
        if not all(isinstance(d, int) and d >= 0 for d in shape) or not all(
                isinstance(o, int) for o in (begin, end)):
            raise ValueError(f"minidl.load({path!r}): tensor {k!r} has a shape {list(shape)} "
                             f"or data_offsets {[begin, end]} that are not non-negative "
                             f"integers")
        np_dtype = _ST_DTYPES[dt]
        itemsize = 2 if np_dtype is None else np_dtype.itemsize
        count = math.prod(shape)
        if not (0 <= begin <= end <= len(data)) or end - begin != count * itemsize:
            raise ValueError(f"minidl.load({path!r}): tensor {k!r} (dtype {dt}, shape "
                             f"{list(shape)}) has data_offsets [{begin}, {end}] that do not "
                             f"fit its size or the {len(data)} data bytes")
        chunk = data[begin:end]
        if np_dtype is None:
            arr = _bf16_to_f32(np.frombuffer(chunk, dtype="<u2")).reshape(shape)
        else:
            arr = np.frombuffer(chunk, dtype=np_dtype.newbyteorder("<")).astype(
                np_dtype).reshape(shape)
        tensors[k] = arr
    if _STRUCTURE_KEY in metadata:
        return _unflatten(json.loads(metadata[_STRUCTURE_KEY]), tensors, path)
    return tensors


# ----------------------------------------------------------------------------------------------
# .npz


def _save_npz(obj, f, path):
    if _is_flat_tensor_map(obj):
        arrays = OrderedDict((k, _to_numpy(v, path, k)) for k, v in obj.items())
        if _STRUCTURE_KEY in arrays:
            raise ValueError(f"minidl.save({path!r}): {_STRUCTURE_KEY!r} is a reserved name")
    else:
        structure, arrays = _flatten(obj, path)
        arrays[_STRUCTURE_KEY] = np.frombuffer(json.dumps(structure).encode("utf-8"), np.uint8)
    np.savez(f, **arrays)


def _load_npz(path):
    try:
        with np.load(path, allow_pickle=False) as z:
            tensors = OrderedDict((k, z[k]) for k in z.files)
    except ValueError as e:
        raise ValueError(f"minidl.load({path!r}): cannot read the .npz file ({e}); object "
                         f"arrays are refused since they would need pickle") from None
    except zipfile.BadZipFile:
        raise ValueError(f"minidl.load({path!r}): not a .npz (zip) file") from None
    if _STRUCTURE_KEY in tensors:
        structure = json.loads(tensors.pop(_STRUCTURE_KEY).tobytes().decode("utf-8"))
        return _unflatten(structure, tensors, path)
    return tensors


# ----------------------------------------------------------------------------------------------
# public API


def _format(path, what):
    ext = os.path.splitext(os.fspath(path))[1].lower()
    if ext not in _EXTENSIONS:
        raise ValueError(f"minidl.{what}({os.fspath(path)!r}): unknown extension {ext!r}; the "
                         f"format is chosen by it: .pth/.pt (PyTorch), .safetensors, .npz")
    return ext


def save(obj, path):
    """Save ``obj`` (a state dict, or nested dicts/lists/tuples of Tensors, arrays and numbers)
    to ``path``; the format follows the extension: ``.pth``/``.pt`` (PyTorch's zip format,
    readable by ``torch.load(path, weights_only=True)``), ``.safetensors`` or ``.npz``.

    The file is written to a temporary file in the same folder and renamed into place.
    Parameters are saved as plain tensors (values only, no autograd state).
    """
    if not isinstance(path, (str, bytes, os.PathLike)):
        raise TypeError(f"minidl.save: path must be a str or os.PathLike, got "
                        f"{type(path).__name__} (the object comes first: save(obj, path))")
    path = os.fspath(path)
    ext = _format(path, "save")
    writer = {".pth": _save_pth, ".pt": _save_pth, ".safetensors": _save_safetensors,
              ".npz": _save_npz}[ext]
    _atomic_write(path, lambda f: writer(obj, f, path))


def load(path, map_location=None, device=None):
    """Load what :func:`save` (or ``torch.save``, or a safetensors/NumPy tool) wrote to ``path``.

    Returns the same nesting with :class:`minidl.Tensor` leaves (on ``map_location``, or its
    alias ``device``: "cpu" (default) or "cuda"). ``.pth``/``.pt`` files are read without torch
    and without executing code from their pickle: a global outside the tensor-rebuild allow-list
    raises :class:`UnsafeCheckpointError` (nothing from the file was executed). bfloat16 tensors
    come back as float32.
    """
    if map_location is not None and device is not None and map_location != device:
        raise ValueError(f"minidl.load: map_location={map_location!r} and device={device!r} "
                         f"disagree; pass one of them")
    target = device if device is not None else map_location
    if target is not None:
        if not isinstance(target, str):
            raise TypeError(f"minidl.load: map_location must be a device string such as "
                            f"'cpu' or 'cuda', got {type(target).__name__}")
        target = backend.normalize_device(target.split(":")[0])
    path = os.fspath(path)
    ext = _format(path, "load")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"minidl.load: no such file {path!r}")
    reader = {".pth": _load_pth, ".pt": _load_pth, ".safetensors": _load_safetensors,
              ".npz": _load_npz}[ext]
    try:
        obj = reader(path)
    except UnsafeCheckpointError:
        raise
    except (ValueError, TypeError) as e:
        if str(e).startswith("minidl.load("):
            raise                                   # already names the file and the problem
        raise ValueError(f"minidl.load({path!r}): cannot read the {ext} file: "
                         f"{type(e).__name__}: {e}") from None
    except OSError as e:
        if e.errno != errno.EINVAL:                 # a missing/unreadable file stays OSError
            raise
        # a damaged zip directory makes zipfile seek to a negative offset
        raise ValueError(f"minidl.load({path!r}): cannot read the {ext} file (damaged: "
                         f"{e.strerror} while seeking in it)") from None
    except Exception as e:                          # a damaged file: zip, pickle, npy layers
        raise ValueError(f"minidl.load({path!r}): cannot read the {ext} file: "
                         f"{type(e).__name__}: {e}") from None
    return _to_tensors(obj, target)


if sys.byteorder not in ("little", "big"):  # pragma: no cover - no such machine
    raise ImportError("minidl.serialization: unknown byte order " + sys.byteorder)
