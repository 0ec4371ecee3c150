"""The CPU emulation of the CUDA execution model (minidl.cuda.emulator) and the NVRTC check.

Deliberately broken kernels are written here (into tmp_path), never into kernels/: a missing
__syncthreads must give a wrong answer under one of the two thread orders, a divergent barrier
must be an error, bad arguments must be TypeErrors naming the argument, code NVRTC rejects must be
rejected, and the ASan/UBSan build must catch an out-of-bounds access. The sanitized run over all
the real kernels happens in a subprocess (the ASan runtime has to be preloaded into Python).
"""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from minidl.cuda import emulator as E
from minidl.cuda import source

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _module(tmp_path, name, code, sanitize=False):
    p = tmp_path / name
    p.write_text(textwrap.dedent(code))
    return E.load_emulated(str(p), sanitize=sanitize)


SHARED = r'''
// Each thread stores x[t] into shared memory and outputs its right neighbour's value.
extern "C" __global__ void neighbour_nosync(const float* x, float* y) {
  extern __shared__ float s[];
  const int t = threadIdx.x;
  s[t] = x[blockIdx.x * blockDim.x + t];
  // missing __syncthreads(): thread t reads s[t + 1] perhaps before thread t + 1 wrote it
  y[blockIdx.x * blockDim.x + t] = s[t + 1 < blockDim.x ? t + 1 : t];
}
extern "C" __global__ void neighbour_sync(const float* x, float* y) {
  extern __shared__ float s[];
  const int t = threadIdx.x;
  s[t] = x[blockIdx.x * blockDim.x + t];
  __syncthreads();
  y[blockIdx.x * blockDim.x + t] = s[t + 1 < blockDim.x ? t + 1 : t];
}
extern "C" __global__ void static_reverse(const float* x, float* y) {
  __shared__ float s[64];
  const int t = threadIdx.x;
  s[t] = x[blockIdx.x * blockDim.x + t];
  __syncthreads();
  y[blockIdx.x * blockDim.x + t] = s[blockDim.x - 1 - t];
}
extern "C" __global__ void static_uninitialised(float* y) {
  __shared__ float s[64];
  y[blockIdx.x * blockDim.x + threadIdx.x] = s[threadIdx.x];  // never written: garbage
  __syncthreads();
  s[threadIdx.x] = 1.0f;  // what a careless next block might find
}
extern "C" __global__ void early_return(const float* x, float* y, int n) {
  __shared__ float s[64];
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;              // divergent: the other threads then wait at the barrier
  s[threadIdx.x] = x[i];
  __syncthreads();
  y[i] = s[threadIdx.x];
}
extern "C" __global__ void two_barriers(float* y) {
  if (threadIdx.x % 2) {
    __syncthreads();
  } else {
    __syncthreads();
  }
  y[threadIdx.x] = 1.0f;
}
extern "C" __global__ void warp_ops(const float* x, float* down, float* xr, float* up, float* bc) {
  const int t = blockIdx.x * blockDim.x + threadIdx.x;
  float v = x[t];
  float s = v;
  for (int o = 16; o > 0; o >>= 1) s += __shfl_down_sync(0xffffffffu, s, o);
  down[t] = s;                                   // lane 0: the warp's sum
  float m = v;
  for (int o = 16; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
  xr[t] = m;                                     // every lane: the warp's max
  up[t] = __shfl_up_sync(0xffffffffu, v, 1);     // lane 0 keeps its own
  bc[t] = __shfl_sync(0xffffffffu, v, 3);        // lane 3's value everywhere
}
extern "C" __global__ void half_warp_shuffle(float* y) {
  float v = threadIdx.x;
  if (threadIdx.x % 32 < 16) v = __shfl_down_sync(0xffffffffu, v, 1);
  y[threadIdx.x] = v;
}
extern "C" __global__ void typed(const float* x, double* d, int n, long long big, float a,
                                 unsigned u) {
  const int i = threadIdx.x;
  if (i < n) d[i] = (double)x[i] * (double)a + (double)(big + u);
}
'''


@pytest.fixture(scope="module")
def shared_mod(tmp_path_factory):
    return _module(tmp_path_factory.mktemp("emu"), "shared.cu", SHARED)


def test_missing_barrier_shows_under_one_order(shared_mod, rng):
    x = rng.standard_normal(2 * 64).astype(np.float32)
    want = x.reshape(2, 64)[:, np.r_[1:64, 63]].reshape(-1)
    results = {}
    for order in ("forward", "reverse"):
        for name in ("neighbour_nosync", "neighbour_sync"):
            y = np.zeros_like(x)
            shared_mod.get_function(name)((2,), (64,), (x, y), shared_mem=64 * 4, order=order)
            results[name, order] = np.allclose(y, want)
    # forward order runs thread t before t+1, so without the barrier t reads unwritten memory
    # (filled with NaN bytes); reverse order happens to be right.
    assert not results["neighbour_nosync", "forward"]
    assert results["neighbour_nosync", "reverse"]
    assert results["neighbour_sync", "forward"] and results["neighbour_sync", "reverse"]


def test_static_shared_is_shared_by_the_block(shared_mod, rng):
    x = rng.standard_normal(3 * 64).astype(np.float32)
    for order in ("forward", "reverse"):
        y = np.zeros_like(x)
        shared_mod.get_function("static_reverse")(3, 64, (x, y), order=order)
        np.testing.assert_array_equal(y, x.reshape(3, 64)[:, ::-1].reshape(-1))


def test_shared_memory_starts_as_garbage_in_every_block(shared_mod):
    y = np.zeros(3 * 64, np.float32)
    shared_mod.get_function("static_uninitialised")(3, 64, (y,))
    assert np.isnan(y).all()  # 0xFF bytes, not zeros and not the previous block's ones


@pytest.mark.parametrize("order", ["forward", "reverse"])
def test_divergent_barrier_is_an_error(shared_mod, order):
    x = np.ones(64, np.float32)
    y = np.zeros(64, np.float32)
    with pytest.raises(E.EmulatorError, match="divergent barrier"):
        shared_mod.get_function("early_return")(1, 64, (x, y, np.int32(40)), order=order)
    shared_mod.get_function("early_return")(1, 64, (x, y, np.int32(64)), order=order)  # fine
    with pytest.raises(E.EmulatorError, match="divergent barrier"):
        shared_mod.get_function("two_barriers")(1, 64, (y,), order=order)


def test_warp_shuffles(shared_mod, rng):
    x = rng.standard_normal(64).astype(np.float32)
    outs = [np.zeros_like(x) for _ in range(4)]
    for order in ("forward", "reverse"):
        shared_mod.get_function("warp_ops")(1, 64, (x, *outs), order=order)
        w = x.reshape(2, 32)
        np.testing.assert_allclose(outs[0].reshape(2, 32)[:, 0], w.sum(1), rtol=1e-5)
        np.testing.assert_array_equal(outs[1].reshape(2, 32), np.repeat(w.max(1)[:, None], 32, 1))
        np.testing.assert_array_equal(outs[2].reshape(2, 32)[:, 1:], w[:, :-1])
        np.testing.assert_array_equal(outs[2].reshape(2, 32)[:, 0], w[:, 0])
        np.testing.assert_array_equal(outs[3].reshape(2, 32), np.repeat(w[:, 3:4], 32, 1))
    with pytest.raises(E.EmulatorError, match="deadlock|warp"):
        shared_mod.get_function("half_warp_shuffle")(1, 64, (np.zeros(64, np.float32),))


def test_argument_checks_name_the_argument(shared_mod, rng):
    k = shared_mod.get_function("typed")
    x = rng.standard_normal(32).astype(np.float32)
    d = np.zeros(32)
    ok = (x, d, np.int32(32), np.int64(2 ** 40), np.float32(2.0), np.uint32(3))
    k(1, 32, ok)
    np.testing.assert_allclose(d, x.astype(np.float64) * 2.0 + 2 ** 40 + 3)
    bad = [
        (0, x.astype(np.float64), r"argument 0 'x'.*float32.*got float64"),
        (0, rng.standard_normal((32, 2)).astype(np.float32)[:, 0], "not C-contiguous"),
        (1, d.astype(np.float32), r"argument 1 'd'.*float64"),
        (2, 32, r"argument 2 'n'.*np.int32.*got builtins.int"),
        (2, np.int64(32), r"argument 2 'n'.*np.int32"),
        (3, np.int32(1), r"argument 3 'big' \(long long\).*np.int64"),
        (4, 2.0, r"argument 4 'a'.*np.float32"),
        (5, np.int32(3), r"argument 5 'u'.*np.uint32"),
    ]
    for i, value, pattern in bad:
        args = list(ok)
        args[i] = value
        with pytest.raises(TypeError, match=pattern):
            k(1, 32, tuple(args))
    ro = d.copy()
    ro.flags.writeable = False
    with pytest.raises(TypeError, match="read-only"):
        k(1, 32, (x, ro, *ok[2:]))
    with pytest.raises(TypeError, match="expected 6 arguments"):
        k(1, 32, ok[:5])


def test_launch_limits_are_checked(shared_mod):
    y = np.zeros(64, np.float32)
    with pytest.raises(E.EmulatorError, match="multiple of the warp size"):
        shared_mod.get_function("two_barriers")(1, 48, (y,))
    with pytest.raises(E.EmulatorError, match="at most 1024"):
        shared_mod.get_function("two_barriers")(1, 2048, (y,))
    x = np.zeros(64, np.float32)
    with pytest.raises(E.EmulatorError, match="48 KiB"):
        shared_mod.get_function("neighbour_sync")(1, 64, (x, y), shared_mem=49153)
    with pytest.raises(AttributeError, match="no kernel 'nope'"):
        shared_mod.get_function("nope")


@pytest.mark.parametrize("body,why", [
    ("y[0] = INFINITY;", "INFINITY"),
    ("int64_t i = 0; y[i] = 1.0f;", "int64_t"),
    ("y[0] = std::max(1.0f, 2.0f);", "std"),
    ("y[0] = y[0] * 0.5;", "double literal"),  # a double literal in float code
    ("double d = 2; y[0] = (float)(y[0] * d);", "double-promotion"),  # implicit float->double
    ("#ifdef __CUDA_ARCH__\n y[0] = 1.0f;\n#endif", "__CUDA_ARCH__"),
    ("y[0] = undefined_helper(1.0f);", "undefined_helper"),
])
def test_rejects_what_nvrtc_rejects(tmp_path, body, why):
    src = 'extern "C" __global__ void k(float* y) { %s }\n' % body
    with pytest.raises(E.CompileError, match=why):
        _module(tmp_path, "bad.cu", src)


def test_rejects_include(tmp_path):
    with pytest.raises(E.CompileError, match="#include"):
        _module(tmp_path, "inc.cu", '#include <math.h>\nextern "C" __global__ void k(float* y) {}\n')


def test_parse_kernels_reads_the_real_sources():
    sigs = source.parse_kernels(source.resolve("lrn.cu"))
    p = sigs["lrn_forward_f32"].params
    assert [q.name for q in p[:3]] == ["x", "y", "scale"]
    assert p[0].pointer and p[0].const and p[0].dtype == np.float32
    assert not p[1].const and p[3].dtype == np.int32 and not p[3].pointer
    for f in source.kernel_files():  # every source keeps the rules lint checks
        assert source.lint(f) == [], f


# ---- ASan / UBSan ------------------------------------------------------------------------------

_ASAN_PROBE = r'''
import numpy as np, sys
from minidl.cuda.emulator import load_emulated
m = load_emulated(sys.argv[1], sanitize=True)
x = np.ones(64, np.float32)
y = np.zeros(64, np.float32)
n = int(sys.argv[2])
k = m.get_function(sys.argv[3] if len(sys.argv) > 3 else "oob")
k((1,), (64,), (x, y, np.int32(n)))
print("finished", float(y.sum()))
'''

_OOB = r'''
extern "C" __global__ void oob(const float* x, float* y, int n) {
  // reads x[threadIdx.x + n - 64]: out of bounds when n > 64
  y[threadIdx.x] = x[threadIdx.x + n - 64];
}
extern "C" __global__ void overflow(const float* x, float* y, int n) {
  // n * n * 64 overflows a signed int for n >= 5793: undefined behaviour UBSan reports
  const int big = n * n * 64;
  y[threadIdx.x] = x[threadIdx.x] + (float)(big % 7);
}
'''


def _asan_or_skip():
    if E.asan_runtime() is None:
        pytest.skip("no libasan.so for the compiler: sanitized builds cannot run here")
    return E.asan_env()


@pytest.mark.slow
def test_sanitizers_catch_out_of_bounds_and_overflow(tmp_path):
    env = _asan_or_skip()
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    (tmp_path / "oob.cu").write_text(_OOB)
    (tmp_path / "probe.py").write_text(_ASAN_PROBE)
    cmd = [sys.executable, str(tmp_path / "probe.py"), str(tmp_path / "oob.cu")]
    good = subprocess.run(cmd + ["64"], env=env, capture_output=True, text=True, timeout=300)
    assert good.returncode == 0, good.stderr[-3000:]
    assert "finished 64.0" in good.stdout
    bad = subprocess.run(cmd + ["65"], env=env, capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0
    assert "AddressSanitizer" in bad.stderr and "oob.cu" in bad.stderr, bad.stderr[-3000:]
    ok = subprocess.run(cmd + ["64", "overflow"], env=env, capture_output=True, text=True,
                        timeout=300)
    assert ok.returncode == 0, ok.stderr[-3000:]
    ub = subprocess.run(cmd + ["6000", "overflow"], env=env, capture_output=True, text=True,
                        timeout=300)
    assert ub.returncode != 0
    assert "runtime error" in ub.stderr and "overflow" in ub.stderr, ub.stderr[-3000:]


@pytest.mark.slow
def test_all_kernels_under_asan_ubsan():
    """The whole kernel suite, emulated with -fsanitize=address,undefined, in a subprocess
    with the ASan runtime preloaded; any report fails it."""
    env = _asan_or_skip()
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    env["MINIDL_TEST_NO_TORCH"] = "1"  # torch's own libraries under ASan are not what we test
    env["MINIDL_TEST_EMU_ORDERS"] = "forward"
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                        "-m", "not cuda", os.path.join(REPO, "tests", "test_kernels.py")],
                       env=env, capture_output=True, text=True, timeout=900, cwd=REPO)
    tail = (r.stdout[-4000:] + "\n" + r.stderr[-4000:])
    assert r.returncode == 0, tail
    assert "Sanitizer" not in r.stderr and "runtime error" not in r.stderr, tail
    assert " passed" in r.stdout, tail


# ---- NVRTC ---------------------------------------------------------------------------------------

def _nvrtc_or_skip():
    from minidl.cuda import nvrtc_check
    nv, why = nvrtc_check.nvrtc_module()
    if nv is None:
        pytest.skip(why)
    return nvrtc_check


@pytest.mark.slow  # NVRTC compiles every kernel twice (sm_80, sm_90); CI also runs nvrtc_check
def test_nvrtc_compiles_every_kernel_without_spills():
    nvrtc_check = _nvrtc_or_skip()
    import io
    out = io.StringIO()
    code, rows = nvrtc_check.check(out=out)
    assert code == 0, out.getvalue()
    names = {r["kernel"] for r in rows}
    for sig_file in source.kernel_files():
        assert set(source.parse_kernels(sig_file)) <= names
    assert {r["arch"] for r in rows} == {"sm_80", "sm_90"}


def test_nvrtc_check_fails_on_what_nvrtc_rejects(tmp_path):
    nvrtc_check = _nvrtc_or_skip()
    p = tmp_path / "bad.cu"
    p.write_text('extern "C" __global__ void k(float* y) { y[0] = INFINITY; }\n')
    import io
    out = io.StringIO()
    code, _ = nvrtc_check.check([str(p)], out=out)
    assert code == 1
    assert "INFINITY" in out.getvalue()
