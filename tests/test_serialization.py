"""minidl.save / minidl.load (.pth, .safetensors, .npz) and Module.load_state_dict.

Expected values are the arrays the tests write (or, for the torch-free reader checks, a
checkpoint assembled here byte by byte from the zip/pickle layout torch.save uses). Where torch
or the safetensors package is installed they read what minidl writes and write what minidl
reads.
"""
import os
import pickle
import struct
import zipfile
from collections import OrderedDict

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import minidl
from minidl import nn
from minidl.nn.module import StateDictError
from minidl.serialization import UnsafeCheckpointError

from conftest import require

DTYPES = ["float32", "float64", "float16", "int64", "int32", "int16", "int8", "uint8", "bool"]
EXTS = [".pth", ".pt", ".safetensors", ".npz"]


def _array(rng, shape, dtype):
    if dtype == "bool":
        return np.asarray(rng.random(shape) < 0.5)
    if np.dtype(dtype).kind == "f":
        return np.asarray(rng.standard_normal(shape)).astype(dtype)
    info = np.iinfo(dtype)
    return np.asarray(rng.integers(info.min, info.max, size=shape, endpoint=True, dtype=dtype))


def _check_same(got, want):
    assert isinstance(got, minidl.Tensor)
    assert got.dtype == want.dtype and got.shape == want.shape, (got.dtype, got.shape, want.shape)
    np.testing.assert_array_equal(got.numpy(), want)


# ---------------------------------------------------------------------------------------------
# round trips through each format

@settings(max_examples=12, deadline=None)
@given(shape=st.lists(st.integers(0, 4), min_size=0, max_size=4).map(tuple),
       dtype=st.sampled_from(DTYPES), ext=st.sampled_from(EXTS), seed=st.integers(0, 2 ** 16))
def test_round_trip_every_dtype_and_shape(tmp_path_factory, shape, dtype, ext, seed):
    rng = np.random.default_rng(seed)
    a = _array(rng, shape, dtype)
    b = np.asfortranarray(_array(rng, (3, 2), dtype))            # not C-contiguous
    path = tmp_path_factory.mktemp("rt") / f"w{ext}"
    minidl.save({"a": a, "b": minidl.Tensor(b)}, path)
    out = minidl.load(path)
    assert list(out) == ["a", "b"]
    _check_same(out["a"], a)
    _check_same(out["b"], b)


@pytest.mark.parametrize("ext", EXTS)
def test_nested_containers_and_numbers_round_trip(tmp_path, ext):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((2, 3)).astype(np.float32)
    obj = {"model": OrderedDict([("fc.weight", minidl.Tensor(w)), ("fc.bias", np.zeros(2))]),
           "epoch": 7, "lr": 0.125, "best": float("inf"), "name": "run-1", "flag": True,
           "nothing": None, "history": [0.5, (np.arange(3), False)], 3: {"momentum": w * 2}}
    minidl.save(obj, tmp_path / f"ck{ext}")
    out = minidl.load(tmp_path / f"ck{ext}")
    assert list(out) == ["model", "epoch", "lr", "best", "name", "flag", "nothing", "history", 3]
    assert isinstance(out["model"], OrderedDict)
    assert list(out["model"]) == ["fc.weight", "fc.bias"]
    _check_same(out["model"]["fc.weight"], w)
    _check_same(out["model"]["fc.bias"], np.zeros(2))
    assert out["epoch"] == 7 and isinstance(out["epoch"], int)
    assert out["lr"] == 0.125 and out["best"] == float("inf")
    assert (out["name"], out["flag"], out["nothing"]) == ("run-1", True, None)
    assert isinstance(out["history"], list) and out["history"][0] == 0.5
    assert isinstance(out["history"][1], tuple) and out["history"][1][1] is False
    _check_same(out["history"][1][0], np.arange(3))
    _check_same(out[3]["momentum"], w * 2)


@pytest.mark.parametrize("ext", EXTS)
def test_module_state_dict_round_trip(tmp_path, ext):
    minidl.manual_seed(0)
    src = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                        nn.Linear(4 * 4 * 4, 5))
    src.train()
    x = minidl.Tensor(np.random.default_rng(1).standard_normal((2, 3, 6, 6)).astype("f4"))
    src(x)                                                   # moves the BN running statistics
    minidl.save(src.state_dict(), tmp_path / f"m{ext}")
    minidl.manual_seed(1)
    dst = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                        nn.Linear(4 * 4 * 4, 5))
    missing, unexpected = dst.load_state_dict(minidl.load(tmp_path / f"m{ext}"))
    assert missing == [] and unexpected == []
    src.eval(), dst.eval()
    np.testing.assert_array_equal(src(x).numpy(), dst(x).numpy())
    assert int(dst[1].num_batches_tracked.item()) == 1


def test_save_is_atomic_and_leaves_no_temporary_files(tmp_path):
    target = tmp_path / "w.pth"
    minidl.save({"a": np.ones(3)}, target)
    before = target.read_bytes()
    with pytest.raises(TypeError, match="object"):
        minidl.save({"a": np.array([object()], dtype=object)}, target)
    assert target.read_bytes() == before                 # the old file is intact
    assert sorted(os.listdir(tmp_path)) == ["w.pth"]      # no temporary file left behind
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(target).st_mode & 0o777 == 0o666 & ~umask   # a normal file's mode, not 0600


def test_save_and_load_errors_name_the_file_and_the_problem(tmp_path):
    with pytest.raises(ValueError, match=r"\.txt.*\.pth/\.pt.*\.safetensors.*\.npz"):
        minidl.save({"a": np.ones(1)}, tmp_path / "w.txt")
    with pytest.raises(TypeError, match="object comes first"):
        minidl.save(tmp_path / "w.pth", {"a": np.ones(1)})
    with pytest.raises(TypeError, match="Linear.*state_dict"):
        minidl.save(nn.Linear(2, 2), tmp_path / "w.pth")
    with pytest.raises(TypeError, match="history.1.*set"):
        minidl.save({"history": [1, {2}]}, tmp_path / "w.pth")
    with pytest.raises(TypeError, match=r"dict key \(1, 2\)"):
        minidl.save({(1, 2): np.ones(1)}, tmp_path / "w.npz")
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        minidl.load(tmp_path / "nope.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a zip at all")
    with pytest.raises(ValueError, match="junk.pth.*not a zip"):
        minidl.load(tmp_path / "junk.pth")
    (tmp_path / "short.safetensors").write_bytes(struct.pack("<Q", 1000) + b"{}")
    with pytest.raises(ValueError, match="short.safetensors.*header length 1000"):
        minidl.load(tmp_path / "short.safetensors")
    header = b'{"w":{"dtype":"F32","shape":[2,2],"data_offsets":[0,12]}}'
    (tmp_path / "bad.safetensors").write_bytes(struct.pack("<Q", len(header)) + header
                                               + bytes(12))
    with pytest.raises(ValueError, match=r"bad.safetensors.*'w'.*\[2, 2\].*\[0, 12\]"):
        minidl.load(tmp_path / "bad.safetensors")
    with pytest.raises(ValueError, match="disagree"):
        minidl.load(tmp_path / "w.pth", map_location="cpu", device="cuda")


@pytest.mark.parametrize("ext", EXTS)
@settings(max_examples=15, deadline=None)
@given(data=st.data())
def test_damaged_files_raise_errors_naming_the_file(tmp_path_factory, ext, data):
    """Truncated or byte-flipped files: load either returns or raises ValueError/TypeError (or
    UnsafeCheckpointError) naming the file, never another exception."""
    folder = tmp_path_factory.mktemp("damaged")
    good = folder / f"good{ext}"
    minidl.save({"w": np.arange(6, dtype=np.float32).reshape(2, 3), "n": 3}, good)
    raw = bytearray(good.read_bytes())
    if data.draw(st.booleans(), label="truncate"):
        raw = raw[:data.draw(st.integers(0, len(raw) - 1), label="length")]
    else:
        for _ in range(data.draw(st.integers(1, 4), label="flips")):
            i = data.draw(st.integers(0, len(raw) - 1), label="index")
            raw[i] ^= data.draw(st.integers(1, 255), label="xor")
    bad = folder / f"bad{ext}"
    bad.write_bytes(bytes(raw))
    try:
        minidl.load(bad)
    except (ValueError, TypeError, UnsafeCheckpointError) as e:
        assert str(bad) in str(e), e


def test_load_map_location_cpu(tmp_path):
    minidl.save({"a": np.arange(4.0)}, tmp_path / "w.safetensors")
    for kw in ({}, {"map_location": "cpu"}, {"device": "cpu"}):
        out = minidl.load(tmp_path / "w.safetensors", **kw)
        assert out["a"].device == "cpu"


@pytest.mark.cuda
def test_load_map_location_cuda(tmp_path, device):
    minidl.save({"a": np.arange(4.0)}, tmp_path / "w.pth")
    out = minidl.load(tmp_path / "w.pth", map_location=device)
    assert out["a"].device == device
    np.testing.assert_array_equal(out["a"].numpy(), np.arange(4.0))


def test_safetensors_bfloat16_reads_as_float32_and_plain_npz_reads(tmp_path):
    """A .safetensors file assembled here (BF16 bit patterns of 1.5, -2.0, 3.25 and a 2x2
    F16), and an .npz written by NumPy itself."""
    header = (b'{"h":{"dtype":"BF16","shape":[3],"data_offsets":[0,6]},'
              b'"f":{"dtype":"F16","shape":[2,2],"data_offsets":[6,14]}}')
    body = struct.pack("<3H", 0x3FC0, 0xC000, 0x4050) + np.array(
        [[1, 2], [3, 4]], "<f2").tobytes()
    (tmp_path / "bf.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + body)
    out = minidl.load(tmp_path / "bf.safetensors")
    _check_same(out["h"], np.array([1.5, -2.0, 3.25], np.float32))
    _check_same(out["f"], np.array([[1, 2], [3, 4]], np.float16))
    np.savez(tmp_path / "plain.npz", w=np.ones((2, 2)), idx=np.arange(3, dtype=np.int32))
    out = minidl.load(tmp_path / "plain.npz")
    assert list(out) == ["w", "idx"]
    _check_same(out["w"], np.ones((2, 2)))
    _check_same(out["idx"], np.arange(3, dtype=np.int32))


# ---------------------------------------------------------------------------------------------
# .pth read without torch: a checkpoint assembled here byte by byte


def _pickle_tensor(storage_cls, key, numel, offset, size, stride):
    """Protocol-2 opcodes of torch._utils._rebuild_tensor_v2(<storage>, offset, size, stride,
    False, OrderedDict()) as torch.save writes them."""
    def ints(vals):
        return b"(" + b"".join(b"K" + bytes([v]) for v in vals) + b"t"

    def s(text):
        return b"X" + struct.pack("<I", len(text)) + text.encode()
    return (b"ctorch._utils\n_rebuild_tensor_v2\n(" + b"(" + s("storage")
            + b"ctorch\n" + storage_cls.encode() + b"\n" + s(key) + s("cpu")
            + b"K" + bytes([numel]) + b"tQ" + b"K" + bytes([offset]) + ints(size) + ints(stride)
            + b"\x89ccollections\nOrderedDict\n)R" + b"tR")


def _write_checkpoint(path, pkl, records, byteorder=b"little"):
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", pkl)
        zf.writestr("archive/byteorder", byteorder)
        for key, raw in records.items():
            zf.writestr(f"archive/data/{key}", raw)
        zf.writestr("archive/version", b"3\n")


def test_pth_reader_offsets_strides_and_shared_storage(tmp_path):
    storage = np.arange(12, dtype="<f4")                     # one storage, two views of it
    pkl = (b"\x80\x02}(" + b"X\x01\x00\x00\x00t" + _pickle_tensor("FloatStorage", "0", 12, 1,
                                                                (2, 3), (1, 4))
           + b"X\x01\x00\x00\x00u" + _pickle_tensor("FloatStorage", "0", 12, 10, (2,), (1,))
           + b"X\x01\x00\x00\x00b" + _pickle_tensor("BoolStorage", "1", 3, 0, (3,), (1,))
           + b"u.")
    _write_checkpoint(tmp_path / "ck.pth", pkl, {"0": storage.tobytes(),
                                                 "1": bytes([1, 0, 1])})
    out = minidl.load(tmp_path / "ck.pth")
    # element [i, j] sits at offset 1 + i*1 + j*4 of the storage
    _check_same(out["t"], np.array([[1, 5, 9], [2, 6, 10]], dtype=np.float32))
    _check_same(out["u"], np.array([10, 11], dtype=np.float32))
    _check_same(out["b"], np.array([True, False, True]))


def test_pth_reader_big_endian_and_bfloat16(tmp_path):
    vals = np.array([1.5, -2.0, 3.25], dtype=">f8")
    bf16 = struct.pack("<3H", 0x3FC0, 0xC000, 0x4050)        # 1.5, -2.0, 3.25 in bfloat16
    pkl = (b"\x80\x02}(" + b"X\x01\x00\x00\x00d"
           + _pickle_tensor("DoubleStorage", "0", 3, 0, (3,), (1,))
           + b"u.")
    _write_checkpoint(tmp_path / "be.pth", pkl, {"0": vals.tobytes()}, byteorder=b"big")
    _check_same(minidl.load(tmp_path / "be.pth")["d"], np.array([1.5, -2.0, 3.25]))
    pkl = (b"\x80\x02}(" + b"X\x01\x00\x00\x00h"
           + _pickle_tensor("BFloat16Storage", "0", 3, 0, (3,), (1,)) + b"u.")
    _write_checkpoint(tmp_path / "bf.pth", pkl, {"0": bf16})
    _check_same(minidl.load(tmp_path / "bf.pth")["h"], np.array([1.5, -2.0, 3.25], "f4"))


def test_pth_reader_rejects_views_outside_the_storage(tmp_path):
    pkl = (b"\x80\x02}(" + b"X\x01\x00\x00\x00t"
           + _pickle_tensor("FloatStorage", "0", 4, 2, (2, 2), (2, 1)) + b"u.")
    _write_checkpoint(tmp_path / "oob.pth", pkl, {"0": np.zeros(4, "<f4").tobytes()})
    with pytest.raises(ValueError, match=r"oob.pth.*reaches element 5.*holds 4"):
        minidl.load(tmp_path / "oob.pth")
    _write_checkpoint(tmp_path / "norec.pth", pkl, {})
    with pytest.raises(ValueError, match=r"norec.pth.*no record 'archive/data/0'"):
        minidl.load(tmp_path / "norec.pth")


class _Evil:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (os.mkdir, (self.target,))


def test_pth_reader_executes_nothing_from_the_pickle(tmp_path):
    target = str(tmp_path / "created_by_pickle")
    pkl = pickle.dumps({"w": _Evil(target)}, protocol=2)
    _write_checkpoint(tmp_path / "evil.pth", pkl, {})
    with pytest.raises(UnsafeCheckpointError,
                       match=r"evil.pth.*(posix|os)\.mkdir.*nothing from the file was executed"):
        minidl.load(tmp_path / "evil.pth")
    assert not os.path.exists(target)
    # the same callable through a persistent id or a REDUCE of an allowed-but-wrong object
    pkl = b"\x80\x02cbuiltins\neval\nX\x04\x00\x00\x001+1\x85R."
    _write_checkpoint(tmp_path / "eval.pth", pkl, {})
    with pytest.raises(UnsafeCheckpointError, match="builtins.eval"):
        minidl.load(tmp_path / "eval.pth")


# ---------------------------------------------------------------------------------------------
# against torch (where installed)


def test_torch_load_reads_what_minidl_writes(tmp_path):
    torch = require("torch")
    rng = np.random.default_rng(0)
    arrays = OrderedDict((d, _array(rng, (2, 3), d)) for d in DTYPES)
    arrays["scalar"] = np.array(5, dtype=np.int64)
    arrays["empty"] = np.zeros((0, 3), np.float32)
    obj = {"state": arrays, "epoch": 3, "lrs": [0.1, 0.01], "pair": (1, "a"), "none": None}
    minidl.save(obj, tmp_path / "w.pth")
    got = torch.load(tmp_path / "w.pth", weights_only=True)
    assert isinstance(got["state"], OrderedDict) and list(got["state"]) == list(arrays)
    for k, a in arrays.items():
        t = got["state"][k]
        assert tuple(t.shape) == a.shape
        assert t.numpy().dtype == a.dtype
        np.testing.assert_array_equal(t.numpy(), a)
    assert got["epoch"] == 3 and got["lrs"] == [0.1, 0.01] and got["pair"] == (1, "a")
    assert got["none"] is None
    mapped = torch.load(tmp_path / "w.pth", weights_only=True, mmap=True)
    for k, a in arrays.items():
        np.testing.assert_array_equal(mapped["state"][k].numpy(), a)


def test_pth_records_start_at_64_byte_boundaries(tmp_path):
    """As torch.save lays them out (.storage_alignment 64), so storages can be mapped in place:
    each record's data offset = local header offset + 30 + name length + extra length."""
    minidl.save({"a": np.arange(10.0), "b": np.ones((3, 3), np.float32), "c": np.ones(1)},
                tmp_path / "w.pth")
    with zipfile.ZipFile(tmp_path / "w.pth") as zf, open(tmp_path / "w.pth", "rb") as f:
        infos = zf.infolist()
        assert zf.read("w/.storage_alignment") == b"64"
        for info in infos:
            f.seek(info.header_offset)
            head = f.read(30)
            assert head[:4] == b"PK\x03\x04"
            n, extra = struct.unpack("<HH", head[26:30])
            assert (info.header_offset + 30 + n + extra) % 64 == 0, info.filename
            assert info.compress_type == zipfile.ZIP_STORED
    assert {i.filename for i in infos} >= {"w/data.pkl", "w/data/0", "w/data/1", "w/data/2",
                                           "w/version", "w/byteorder"}


def test_minidl_reads_what_torch_writes(tmp_path):
    torch = require("torch")
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    g = torch.Generator().manual_seed(0)
    obj = {"view": base[1:, ::2], "transposed": base.t(), "base": base,
           "bf16": torch.randn(5, generator=g).bfloat16(), "half": torch.randn(3).half(),
           "param": torch.nn.Parameter(torch.ones(2, 2)), "long": torch.arange(3),
           "bool": torch.tensor([True, False]), "scalar": torch.tensor(2.5, dtype=torch.float64),
           "nested": [{"x": torch.zeros(1)}, 4, 0.5, "s", None]}
    torch.save(obj, tmp_path / "t.pth")
    out = minidl.load(tmp_path / "t.pth")
    for k in ("view", "transposed", "base", "half", "long", "bool", "scalar"):
        _check_same(out[k], obj[k].numpy())
    _check_same(out["bf16"], obj["bf16"].float().numpy())
    _check_same(out["param"], np.ones((2, 2), np.float32))
    _check_same(out["nested"][0]["x"], np.zeros(1, np.float32))
    assert out["nested"][1:] == [4, 0.5, "s", None]

    # a whole module (a pickled class) is refused, naming the class
    torch.save(torch.nn.Linear(2, 2), tmp_path / "module.pth")
    with pytest.raises(UnsafeCheckpointError, match="torch.nn.modules.linear.Linear"):
        minidl.load(tmp_path / "module.pth")


def test_torch_module_state_dict_loads_into_minidl(tmp_path):
    torch = require("torch")
    torch.manual_seed(0)
    tm = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4),
                             torch.nn.Flatten(), torch.nn.Linear(64, 5)).double()
    tm.train()
    x = np.random.default_rng(0).standard_normal((2, 3, 6, 6))
    tm(torch.from_numpy(x))
    tm.eval()
    torch.save(tm.state_dict(), tmp_path / "sd.pth")
    mm = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(),
                       nn.Linear(64, 5)).double().eval()
    mm.load_state_dict(minidl.load(tmp_path / "sd.pth"), strict=True)
    with torch.no_grad():
        want = tm(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(mm(minidl.Tensor(x)).numpy(), want, rtol=1e-12, atol=1e-12)


def test_safetensors_package_interoperates(tmp_path):
    stn = require("safetensors.numpy", "interoperability check with the safetensors package")
    rng = np.random.default_rng(0)
    arrays = {d: _array(rng, (3, 2), d) for d in DTYPES}
    minidl.save(arrays, tmp_path / "m.safetensors")
    got = stn.load_file(str(tmp_path / "m.safetensors"))
    assert sorted(got) == sorted(arrays)
    for k, a in arrays.items():
        assert got[k].dtype == a.dtype
        np.testing.assert_array_equal(got[k], a)
    stn.save_file(arrays, str(tmp_path / "p.safetensors"))
    out = minidl.load(tmp_path / "p.safetensors")
    for k, a in arrays.items():
        _check_same(out[k], a)


# ---------------------------------------------------------------------------------------------
# Module.load_state_dict


def _net():
    return nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))


def test_load_state_dict_takes_tensors_arrays_and_numpy_scalars():
    dst = _net()
    sd = {"0.weight": np.full((2, 3), 2.0), "0.bias": minidl.Tensor(np.ones(2, np.float32)),
          "1.weight": [1.0, 2.0], "1.bias": np.zeros(2), "1.running_mean": np.zeros(2),
          "1.running_var": np.ones(2), "1.num_batches_tracked": np.int64(4)}
    sd["1.weight"] = np.array(sd["1.weight"])
    v = dst[0].weight._version
    res = dst.load_state_dict(sd)
    assert dst[0].weight._version == v + 1       # an in-place write as far as autograd cares
    assert res.missing_keys == [] and res.unexpected_keys == []
    assert dst[0].weight.dtype == np.float32                  # cast to the parameter's dtype
    np.testing.assert_array_equal(dst[0].weight.numpy(), 2.0)
    assert int(dst[1].num_batches_tracked.item()) == 4


def test_load_state_dict_errors_name_the_key():
    dst = _net()
    good = {k: v.numpy().copy() for k, v in _net().state_dict().items()}
    for value, err, pattern in ((None, TypeError, r"'0.bias' is None.*\(2,\)"),
                                (3.0, TypeError, r"'0.bias' is a float.*\(2,\)"),
                                ([1.0, 2.0], TypeError, r"'0.bias' is a list"),
                                (np.array(["a", "b"]), TypeError, r"'0.bias' has dtype <U1"),
                                (np.zeros(3), ValueError, r"'0.bias' has shape \(3,\).*\(2,\)")):
        bad = dict(good, **{"0.bias": value})
        with pytest.raises(err, match=pattern):
            dst.load_state_dict(bad)
        with pytest.raises(err, match=pattern):                # strict=False checks values too
            dst.load_state_dict(bad, strict=False)
    before = dst[0].weight.numpy().copy()
    bad = dict(good, **{"0.weight": np.ones((2, 3)), "1.bias": np.zeros(5)})
    with pytest.raises(ValueError, match="1.bias"):
        dst.load_state_dict(bad)
    np.testing.assert_array_equal(dst[0].weight.numpy(), before)   # nothing copied
    with pytest.raises(TypeError, match="mapping"):
        dst.load_state_dict([("0.weight", np.ones((2, 3)))])


def test_load_state_dict_strict_semantics():
    dst = _net()
    sd = {k: v.numpy().copy() for k, v in _net().state_dict().items()}
    sd.pop("1.running_var")
    sd["extra.weight"] = np.zeros(1)
    with pytest.raises(StateDictError, match=r"missing keys \['1.running_var'\].*"
                                             r"unexpected keys \['extra.weight'\]") as info:
        dst.load_state_dict(sd)
    assert isinstance(info.value, KeyError) and isinstance(info.value, RuntimeError)
    missing, unexpected = dst.load_state_dict(sd, strict=False)
    assert missing == ["1.running_var"] and unexpected == ["extra.weight"]
