"""Launch wrappers for the handwritten kernels in ``kernels/*.cu``.

Every wrapper takes arrays of ONE kind and runs the same CUDA source either way:

* ``cupy.ndarray`` inputs -> compiled by NVRTC through ``cupy.RawModule`` (cached per device) and
  launched on the current GPU; results are CuPy arrays;
* ``numpy.ndarray`` inputs -> the CPU emulation (:mod:`minidl.cuda.emulator`): the .cu file
  compiled with g++, each CUDA thread a fiber. Slow, but it runs the kernel and all the
  host-side launch logic below (grid sizes, chunking, scalar types) on machines without a GPU.

Inputs may be non-contiguous or of another float dtype than the first array: they are made
C-contiguous in the dtype of the main input (float32 or float64 -- every kernel has both
variants, ``name_f32``/``name_f64``); any other dtype raises TypeError. Pairs (kernel_size,
stride, padding, dilation) are ints or (h, w) tuples. Layout is NCHW throughout. The geometry
(pairs, output sizes, argument checks) is :mod:`minidl.geometry`'s, the same the NumPy ops use.

All indices inside the kernels are 32-bit. Elementwise kernels, pooling and LRN require fewer than
``INDEX_LIMIT`` (about 2^31) elements per array and raise ValueError beyond; im2col-based
convolution processes the batch in chunks so that every column buffer stays below
``col_budget_bytes()`` (``MINIDL_COL_BUDGET_MB``, default 256 MB) and below ``INDEX_LIMIT``.

Launch configuration: 256 threads per block, a grid-stride loop in every kernel, and at most
:func:`max_blocks` blocks (``MINIDL_MAX_BLOCKS``, default 65535); on a GPU also at most
``GRID_WAVES`` (4) times the blocks the device holds at once. Tests lower the cap with
``launch_limits(max_blocks=3)`` so the grid-stride loops really loop.
"""
import contextlib
import os

import numpy as np

from minidl import backend
from minidl.geometry import conv_geometry, pair, pool_geometry

BLOCK = 256
GRID_WAVES = 4  # on a GPU, at most this many times the blocks the device holds at once
INDEX_LIMIT = 2 ** 31 - 2 ** 26  # headroom so i + blockDim*gridDim cannot overflow an int
_limits = {
    "max_blocks": int(os.environ.get("MINIDL_MAX_BLOCKS", "65535")),
    "col_budget": int(float(os.environ.get("MINIDL_COL_BUDGET_MB", "256")) * 2 ** 20),
}


def max_blocks():
    return _limits["max_blocks"]


def col_budget_bytes():
    return _limits["col_budget"]


@contextlib.contextmanager
def launch_limits(max_blocks=None, col_budget_bytes=None):
    """Temporarily cap the grid size and/or the im2col buffer (to exercise grid-stride loops
    and batch chunking on small inputs)."""
    old = dict(_limits)
    if max_blocks is not None:
        _limits["max_blocks"] = int(max_blocks)
    if col_budget_bytes is not None:
        _limits["col_budget"] = int(col_budget_bytes)
    try:
        yield
    finally:
        _limits.update(old)


# ---- plumbing --------------------------------------------------------------------------------

def _array_module(*arrays):
    """numpy or cupy for the given arrays; all must be of one kind."""
    cp = backend.cupy_module()
    kinds = set()
    for a in arrays:
        if a is None:
            continue
        if isinstance(a, np.ndarray):
            kinds.add("numpy")
        elif cp is not None and isinstance(a, cp.ndarray):
            kinds.add("cupy")
        else:
            raise TypeError(f"expected numpy or cupy arrays, got {type(a).__module__}."
                            f"{type(a).__name__}")
    if len(kinds) > 1:
        raise TypeError("the arrays must all be numpy (emulated kernels) or all cupy (GPU); "
                        "got a mix")
    return cp if kinds == {"cupy"} else np


_gpu_kernels = {}  # (device id, filename, name) -> GpuKernel


def _kernel(xp, filename, name):
    """The launcher of kernel ``name`` in ``kernels/<filename>``. On the GPU the lookup is cached
    per (device, file, kernel): a launch touches no file system (``load_module`` resolves the
    kernels directory and stats the source). A process that edits a .cu file calls
    :func:`reload_kernels`. The emulator keeps its own cache (keyed by the file's mtime)."""
    if xp is np:
        from minidl.cuda.emulator import load_emulated
        return load_emulated(filename).get_function(name)
    key = (xp.cuda.runtime.getDevice(), filename, name)
    k = _gpu_kernels.get(key)
    if k is None:
        from minidl.cuda.module import load_module
        k = _gpu_kernels[key] = load_module(filename).get_function(name)
    return k


def reload_kernels():
    """Forget the cached GPU kernel lookups, so the next launch re-reads ``kernels/*.cu`` (and
    recompiles what changed)."""
    _gpu_kernels.clear()


def _float_dtype(a, what):
    if a.dtype not in (np.float32, np.float64):
        raise TypeError(f"{what} must be float32 or float64 (the kernels' variants), "
                        f"got {a.dtype}")
    return a.dtype


def _suffix(dtype):
    return "f32" if dtype == np.float32 else "f64"


def _prep(xp, a, dtype):
    return xp.ascontiguousarray(a, dtype=dtype)


def _i32(v, what="value"):
    v = int(v)
    if not -2 ** 31 <= v < 2 ** 31:
        raise OverflowError(f"{what}={v} does not fit a 32-bit kernel argument")
    return np.int32(v)


def _check_index(n, what):
    if n >= INDEX_LIMIT:
        raise ValueError(f"{what} has {n} elements; the kernels index with 32-bit ints and "
                         f"take fewer than {INDEX_LIMIT}")


def fast_divisor(d):
    """The packed divisor the kernels' ``fast_div(n, m)`` divides by: ``n / d`` for every
    0 <= n < 2^31 as ``umulhi(n, mul) >> shr`` with l = ceil(log2 d), mul = ceil(2^(31+l) / d),
    shr = l - 1, packed as ``np.uint64(mul | shr << 32)``; 0 encodes d = 1 (Granlund &
    Montgomery 1994; CUTLASS's FastDivmod). mul < 2^32 because d is not a power of two below
    2^l unless d == 2^l, where mul = 2^31."""
    d = int(d)
    if not 1 <= d < 2 ** 31:
        raise ValueError(f"fast_divisor: divisor {d} out of range [1, 2^31)")
    if d == 1:
        return np.uint64(0)
    lg = (d - 1).bit_length()  # ceil(log2 d)
    mul = ((1 << (31 + lg)) + d - 1) // d
    return np.uint64(mul | ((lg - 1) << 32))


_resident_blocks = {}


def _gpu_block_cap(xp):
    """On a GPU: blocks of BLOCK threads that fill the device GRID_WAVES times over. Grid-stride
    loops then give each thread several elements, so per-thread setup (a division, say) is paid
    once per thread rather than per element."""
    dev = xp.cuda.Device()
    cap = _resident_blocks.get(dev.id)
    if cap is None:
        attrs = dev.attributes  # CUDA reports both attributes on every device
        per_sm = max(1, attrs["MaxThreadsPerMultiProcessor"] // BLOCK)
        cap = _resident_blocks[dev.id] = attrs["MultiProcessorCount"] * per_sm
    return GRID_WAVES * cap


def _grid(n_work, xp=np):
    blocks = min(-(-n_work // BLOCK), max_blocks())
    if xp is not np:
        blocks = min(blocks, _gpu_block_cap(xp))
    return (max(1, blocks),)


def _launch(xp, filename, name, n_work, args, grid=None, block=BLOCK, shared_mem=0):
    if n_work == 0:
        return
    k = _kernel(xp, filename, name)
    k(_grid(n_work, xp) if grid is None else grid, (block,), tuple(args), shared_mem=shared_mem)


# ---- im2col / col2im / convolution -------------------------------------------------------------

def _batch_chunk(N, col_elems, x_elems, itemsize=None):
    """How many images one launch may take: their column buffer (col_elems per image) and
    image block (x_elems per image) must be indexable with 32-bit ints, and, when itemsize is
    given (a temporary buffer), the column buffer must fit col_budget_bytes()."""
    by_index = (INDEX_LIMIT - 1) // max(1, col_elems, x_elems)
    if by_index < 1:
        raise ValueError(f"one image has {max(col_elems, x_elems)} column/image elements, more "
                         "than 32-bit indices allow")
    by_mem = N if itemsize is None else col_budget_bytes() // max(1, col_elems * itemsize)
    return max(1, min(N, by_mem, by_index))


def _im2col_into(xp, x, col, geo, batch_wide=False):
    """x (n, C, H, W) contiguous -> col, one launch: per image (n, C*KH*KW, OH*OW) (torch's
    unfold), or with ``batch_wide`` the (C*KH*KW, n*OH*OW) matrix (column n*L + l)."""
    KH, KW, SH, SW, PH, PW, DH, DW, OH, OW = geo
    n, C, H, W = x.shape
    L = OH * OW
    _check_index(col.size, "the column buffer")
    _check_index(x.size, "the image block")
    img, row = (L, n * L) if batch_wide else (C * KH * KW * L, L)
    _launch(xp, "im2col.cu", "im2col_" + _suffix(x.dtype), n * C * L,
            (x, col, *[_i32(v) for v in (n, C, H, W, KH, KW, SH, SW, PH, PW, DH, DW, OH, OW,
                                        img, row)],
             fast_divisor(OW), fast_divisor(OH), fast_divisor(C)))


def _col2im_into(xp, col, x, geo, batch_wide=False):
    """The adjoint of :func:`_im2col_into` (same layouts) into x (n, C, H, W)."""
    KH, KW, SH, SW, PH, PW, DH, DW, OH, OW = geo
    n, C, H, W = x.shape
    L = OH * OW
    _check_index(col.size, "the column buffer")
    _check_index(x.size, "the image block")
    img, row = (L, n * L) if batch_wide else (C * KH * KW * L, L)
    _launch(xp, "im2col.cu", "col2im_" + _suffix(x.dtype), x.size,
            (col, x, *[_i32(v) for v in (n, C, H, W, KH, KW, SH, SW, PH, PW, DH, DW, OH, OW,
                                        img, row)],
             fast_divisor(W), fast_divisor(H), fast_divisor(C), fast_divisor(SH),
             fast_divisor(SW)))


def im2col(x, kernel_size, stride=1, padding=0, dilation=1):
    """x (N, C, H, W) -> col (N, C*KH*KW, OH*OW), torch.nn.functional.unfold's layout:
    row c*KH*KW + kh*KW + kw, column oh*OW + ow; zero where the tap falls in the padding."""
    xp = _array_module(x)
    if x.ndim != 4:
        raise ValueError(f"im2col expects x of shape (N, C, H, W), got {x.shape}")
    dt = _float_dtype(x, "x")
    x = _prep(xp, x, dt)
    N, C, H, W = x.shape
    geo = conv_geometry("im2col", x.shape, kernel_size, stride, padding, dilation)
    KH, KW, OH, OW = geo.kh, geo.kw, geo.oh, geo.ow
    col = xp.empty((N, C * KH * KW, OH * OW), dtype=dt)
    step = _batch_chunk(N, C * KH * KW * OH * OW, C * H * W)  # indices only: col is the result
    for n0 in range(0, N, step):
        _im2col_into(xp, x[n0:n0 + step], col[n0:n0 + step], geo)
    return col


def col2im(col, output_size, kernel_size, stride=1, padding=0, dilation=1):
    """The adjoint of :func:`im2col` (torch fold): col (N, C*KH*KW, OH*OW) -> x (N, C, H, W),
    each element the sum of the column entries that copy it. output_size = (H, W)."""
    xp = _array_module(col)
    if col.ndim != 3:
        raise ValueError(f"col2im expects col of shape (N, C*KH*KW, L), got {col.shape}")
    dt = _float_dtype(col, "col")
    col = _prep(xp, col, dt)
    H, W = pair(output_size, "output_size", 1)
    geo = conv_geometry("col2im", (H, W), kernel_size, stride, padding, dilation)
    KH, KW, OH, OW = geo.kh, geo.kw, geo.oh, geo.ow
    N, rows, L = col.shape
    if rows % (KH * KW) or L != OH * OW:
        raise ValueError(f"col of shape {col.shape} does not match kernel {(KH, KW)} and output "
                         f"size {(H, W)}: expected (N, C*{KH * KW}, {OH * OW})")
    C = rows // (KH * KW)
    x = xp.empty((N, C, H, W), dtype=dt)
    step = _batch_chunk(N, rows * L, C * H * W)
    for n0 in range(0, N, step):
        _col2im_into(xp, col[n0:n0 + step], x[n0:n0 + step], geo)
    return x


def _conv_setup(x, w, stride, padding, dilation, groups, extra=()):
    xp = _array_module(x, w, *extra)
    if x.ndim != 4 or w.ndim != 4:
        raise ValueError(f"conv2d expects x (N, C, H, W) and w (F, C/groups, KH, KW), got "
                         f"{x.shape} and {w.shape}")
    dt = _float_dtype(x, "x")
    N, C, H, W = x.shape
    F, Cg, KH, KW = w.shape
    groups = int(groups)
    if groups < 1 or C % groups or F % groups or Cg != C // groups:
        raise ValueError(f"conv2d: x has {C} channels, w has shape {w.shape}, groups={groups}: "
                         "need C and F divisible by groups and w.shape[1] == C/groups")
    geo = conv_geometry("conv2d", x.shape, (KH, KW), stride, padding, dilation)
    return xp, dt, geo, groups


def _conv_chunk(N, C, K2, L, F, itemsize):
    """Images per pass: the column buffer (C*K2 rows, n*L columns) within col_budget_bytes() and
    32-bit indexing, and the (F, n*L) GEMM output likewise."""
    return _batch_chunk(N, (C * K2 + F) * L, C * K2 * L, itemsize)


def _tf32(xp):
    if xp is not np:
        from minidl import cuda as _cuda
        _cuda.apply_tf32()


def conv2d_forward(x, w, b=None, stride=1, padding=0, dilation=1, groups=1):
    """y (N, F, OH, OW) = conv(x (N, C, H, W), w (F, C/groups, KH, KW)) + b (F,).

    Per chunk of n images (all N unless the column buffer would exceed
    ``col_budget_bytes()``): im2col into ONE buffer laid out as the (C*KH*KW, n*OH*OW) matrix,
    then ONE GEMM per group over the whole chunk, written in place (``out=``) into an
    (F, n*OH*OW) buffer: rows of group g = W_g (F/g, K) @ col[rows of g] (K, n*L) (cuBLAS on
    the GPU, NumPy under the emulation). One pass then writes it to y in (N, F, L) order with
    the bias added. Temporaries: the column buffer and the GEMM output (y-sized), nothing else."""
    xp, dt, geo, groups = _conv_setup(x, w, stride, padding, dilation, groups, (b,))
    x, w = _prep(xp, x, dt), _prep(xp, w, dt)
    N, C, H, W = x.shape
    F = w.shape[0]
    KH, KW, OH, OW = geo.kh, geo.kw, geo.oh, geo.ow
    K, L, Fg = (C // groups) * KH * KW, OH * OW, F // groups
    if b is not None:
        if b.shape != (F,):
            raise ValueError(f"conv2d bias must have shape ({F},), got {b.shape}")
        b = _prep(xp, b, dt).reshape(1, F, 1)
    _tf32(xp)
    y = xp.empty((N, F, L), dtype=dt)
    wg = w.reshape(groups, Fg, K)
    step = _conv_chunk(N, C, KH * KW, L, F, x.itemsize)
    col = out = None
    for n0 in range(0, N, step):
        n1 = min(N, n0 + step)
        n = n1 - n0
        if col is None or col.shape[1] != n * L:
            col = xp.empty((C * KH * KW, n * L), dtype=dt)
            out = xp.empty((F, n * L), dtype=dt)
        _im2col_into(xp, x[n0:n1], col, geo, batch_wide=True)
        for g in range(groups):
            xp.dot(wg[g], col[g * K:(g + 1) * K], out=out[g * Fg:(g + 1) * Fg])
        res = out.reshape(F, n, L).transpose(1, 0, 2)
        if b is None:
            y[n0:n1] = res
        else:
            xp.add(res, b, out=y[n0:n1])
    return y.reshape(N, F, OH, OW)


def conv2d_backward(x, w, gy, stride=1, padding=0, dilation=1, groups=1, need_x=True,
                    need_w=True, need_b=True):
    """Gradients of :func:`conv2d_forward` given gy (N, F, OH, OW): (gx, gw, gb), None where
    not needed. Per chunk of n images, with gy^T the chunk's gy as an (F, n*L) matrix (one
    gy-sized transpose): gw_g += gy^T_g (F/g, n*L) @ col_g^T (n*L, K) -- one GEMM per group --
    then the SAME column buffer receives gcol_g = W_g^T (K, F/g) @ gy^T_g (one GEMM per group,
    ``out=``) and col2im folds it into gx. gb = sum of gy over (N, OH, OW)."""
    xp, dt, geo, groups = _conv_setup(x, w, stride, padding, dilation, groups, (gy,))
    x, w = _prep(xp, x, dt), _prep(xp, w, dt)
    N, C, H, W = x.shape
    F = w.shape[0]
    KH, KW, OH, OW = geo.kh, geo.kw, geo.oh, geo.ow
    K, L, Fg = (C // groups) * KH * KW, OH * OW, F // groups
    if gy.shape != (N, F, OH, OW):
        raise ValueError(f"conv2d_backward: gy has shape {gy.shape}, expected {(N, F, OH, OW)}")
    _tf32(xp)
    gy = _prep(xp, gy, dt).reshape(N, F, L)
    gb = gy.sum(axis=(0, 2)) if need_b else None
    gx = xp.empty((N, C, H, W), dtype=dt) if need_x else None
    gw = xp.empty((groups, Fg, K), dtype=dt) if need_w else None
    wg = w.reshape(groups, Fg, K)
    if need_x or need_w:
        step = _conv_chunk(N, C, KH * KW, L, F, x.itemsize)
        col = gyt = part = None
        for n0 in range(0, N, step):
            n1 = min(N, n0 + step)
            n = n1 - n0
            if col is None or col.shape[1] != n * L:
                col = xp.empty((C * KH * KW, n * L), dtype=dt)
                gyt = xp.empty((F, n * L), dtype=dt)
            gyt.reshape(F, n, L)[...] = gy[n0:n1].transpose(1, 0, 2)
            if need_w:
                _im2col_into(xp, x[n0:n1], col, geo, batch_wide=True)
                for g in range(groups):
                    rows = col[g * K:(g + 1) * K]
                    if n0 == 0:
                        xp.dot(gyt[g * Fg:(g + 1) * Fg], rows.T, out=gw[g])
                    else:
                        if part is None:
                            part = xp.empty((Fg, K), dtype=dt)
                        xp.dot(gyt[g * Fg:(g + 1) * Fg], rows.T, out=part)
                        gw[g] += part
            if need_x:
                for g in range(groups):
                    xp.dot(wg[g].T, gyt[g * Fg:(g + 1) * Fg], out=col[g * K:(g + 1) * K])
                _col2im_into(xp, col, gx[n0:n1], geo, batch_wide=True)
    if gw is not None:
        gw = gw.reshape(w.shape)
    return gx, gw, gb


# ---- LRN -------------------------------------------------------------------------------------

def _lrn_setup(x, size):
    if x.ndim < 2:
        raise ValueError(f"LRN expects x of shape (N, C, ...), got {x.shape}")
    size = int(size)
    if size < 1:
        raise ValueError(f"LRN size must be >= 1, got {size}")
    N, C = x.shape[:2]
    HW = int(np.prod(x.shape[2:], dtype=np.int64))
    _check_index(x.size, "the LRN input")
    return size, N, C, HW


def _lrn_chunk(N, C, HW, chunk=None):
    """Channels per LRN thread: the largest of 32/16/8 that still gives about 2^20 threads
    (several waves on any current GPU), never more than C. ``chunk`` overrides (tests)."""
    if chunk is not None:
        chunk = int(chunk)
        if chunk < 1:
            raise ValueError(f"LRN chunk must be >= 1, got {chunk}")
        return min(chunk, max(1, C))
    for c in (32, 16):
        if N * HW * -(-C // c) >= 2 ** 20:
            return min(c, max(1, C))
    return min(8, max(1, C))


def lrn_forward(x, size, alpha=1e-4, beta=0.75, k=2.0, chunk=None):
    """Local response normalization in the AlexNet paper's form (alpha NOT divided by size).

    x (N, C, ...) -> (y, scale), both x's shape and dtype:
    scale = k + alpha * sum_{j in [c - size//2, c + (size-1)//2] clipped} x_j^2,
    y = x * scale^-beta. One thread per (n, chunk of channels, spatial position); ``chunk``
    (channels per thread) is chosen to fill the GPU unless given."""
    xp = _array_module(x)
    dt = _float_dtype(x, "x")
    x = _prep(xp, x, dt)
    size, N, C, HW = _lrn_setup(x, size)
    y, scale = xp.empty_like(x), xp.empty_like(x)
    s = dt.type
    ch = _lrn_chunk(N, C, HW, chunk)
    _launch(xp, "lrn.cu", "lrn_forward_" + _suffix(dt), N * -(-C // ch) * HW,
            (x, y, scale, _i32(N), _i32(C), _i32(HW), _i32(size), s(alpha), s(beta), s(k),
             _i32(ch)))
    return y, scale


def lrn_backward(x, y, scale, gy, size, alpha=1e-4, beta=0.75, chunk=None):
    """dL/dx for :func:`lrn_forward` from its saved scale and gy (all x's shape):
    gx_i = gy_i * scale_i^-beta - 2*alpha*beta * x_i * sum_{j in [i-(size-1)//2, i+size//2]}
    gy_j * x_j * scale_j^(-beta-1). ``y`` is checked for shape but not read (the kernel forms
    y_j / scale_j from x_j and scale_j: one array less to read)."""
    xp = _array_module(x, y, scale, gy)
    dt = _float_dtype(x, "x")
    for name, a in (("y", y), ("scale", scale), ("gy", gy)):
        if a.shape != x.shape:
            raise ValueError(f"lrn_backward: {name} has shape {a.shape}, x has {x.shape}")
    x, scale, gy = (_prep(xp, a, dt) for a in (x, scale, gy))
    size, N, C, HW = _lrn_setup(x, size)
    gx = xp.empty_like(x)
    s = dt.type
    ch = _lrn_chunk(N, C, HW, chunk)
    _launch(xp, "lrn.cu", "lrn_backward_" + _suffix(dt), N * -(-C // ch) * HW,
            (x, scale, gy, gx, _i32(N), _i32(C), _i32(HW), _i32(size), s(alpha), s(beta),
             _i32(ch)))
    return gx


# ---- pooling ---------------------------------------------------------------------------------

def _pool_geometry(name, shape, kernel_size, stride, padding, ceil_mode):
    """:func:`minidl.geometry.pool_geometry`, plus the kernels' 32-bit index limit."""
    g = pool_geometry(name, shape, kernel_size, stride, padding, ceil_mode)
    _check_index(g.n * g.c * g.h * g.w, "the pooling input")
    _check_index(g.n * g.c * g.oh * g.ow, "the pooling output")
    return g


def _shape_args(g):
    """The pooling kernels' shape arguments: planes N*C, H, W, OH, OW, KH, KW, SH, SW, PH, PW."""
    return tuple(_i32(v) for v in (g.n * g.c, g.h, g.w, g.oh, g.ow, g.kh, g.kw, g.sh, g.sw,
                                   g.ph, g.pw))


def _pool_divs(g):
    """The packed divisors (:func:`fast_divisor`) of W, H, OW, OH, SH, SW: the pooling kernels'
    last six arguments."""
    return tuple(fast_divisor(v) for v in (g.w, g.h, g.ow, g.oh, g.sh, g.sw))


def max_pool2d_forward(x, kernel_size, stride=None, padding=0, ceil_mode=False):
    """x (N, C, H, W) -> (y (N, C, OH, OW), argmax int32 (N, C, OH, OW) = h*W + w per plane).
    A value wins if v > max or v is NaN (first maximum in row-major order wins ties; NaN
    propagates); padding is -inf (never chosen)."""
    xp = _array_module(x)
    dt = _float_dtype(x, "x")
    x = _prep(xp, x, dt)
    g = _pool_geometry("max_pool2d", x.shape, kernel_size, stride, padding, ceil_mode)
    y = xp.empty(g.output_shape, dtype=dt)
    argmax = xp.empty(g.output_shape, dtype=np.int32)
    _launch(xp, "pooling.cu", "max_pool2d_forward_" + _suffix(dt), y.size,
            (x, y, argmax, *_shape_args(g), *_pool_divs(g)))
    return y, argmax


def max_pool2d_backward(gy, argmax, input_shape, kernel_size, stride=None, padding=0,
                        ceil_mode=False):
    """gx (input_shape) = for each input, the sum of gy over the windows whose argmax it is,
    gathered from the at most ceil(k/s)^2 windows covering it (no atomics)."""
    xp = _array_module(gy, argmax)
    dt = _float_dtype(gy, "gy")
    g = _pool_geometry("max_pool2d_backward", input_shape, kernel_size, stride, padding,
                       ceil_mode)
    if gy.shape != g.output_shape or argmax.shape != gy.shape:
        raise ValueError(f"max_pool2d_backward: gy {gy.shape} and argmax {argmax.shape} must "
                         f"have the output shape {g.output_shape}")
    gy, argmax = _prep(xp, gy, dt), _prep(xp, argmax, np.int32)
    gx = xp.empty(g.input_shape, dtype=dt)
    _launch(xp, "pooling.cu", "max_pool2d_backward_" + _suffix(dt), gx.size,
            (gy, argmax, gx, *_shape_args(g), *_pool_divs(g)))
    return gx


def avg_pool2d_forward(x, kernel_size, stride=None, padding=0, ceil_mode=False,
                       count_include_pad=True):
    """x (N, C, H, W) -> y (N, C, OH, OW), window mean with torch's divisor: with
    count_include_pad the window clipped to the padded image, else its in-image part."""
    xp = _array_module(x)
    dt = _float_dtype(x, "x")
    x = _prep(xp, x, dt)
    g = _pool_geometry("avg_pool2d", x.shape, kernel_size, stride, padding, ceil_mode)
    y = xp.empty(g.output_shape, dtype=dt)
    _launch(xp, "pooling.cu", "avg_pool2d_forward_" + _suffix(dt), y.size,
            (x, y, *_shape_args(g), _i32(bool(count_include_pad)), *_pool_divs(g)))
    return y


def avg_pool2d_backward(gy, input_shape, kernel_size, stride=None, padding=0, ceil_mode=False,
                        count_include_pad=True):
    """gx (input_shape): each input gathers gy / divisor from the windows covering it."""
    xp = _array_module(gy)
    dt = _float_dtype(gy, "gy")
    g = _pool_geometry("avg_pool2d_backward", input_shape, kernel_size, stride, padding,
                       ceil_mode)
    if gy.shape != g.output_shape:
        raise ValueError(f"avg_pool2d_backward: gy {gy.shape} must have the output shape "
                         f"{g.output_shape}")
    gy = _prep(xp, gy, dt)
    gx = xp.empty(g.input_shape, dtype=dt)
    _launch(xp, "pooling.cu", "avg_pool2d_backward_" + _suffix(dt), gx.size,
            (gy, gx, *_shape_args(g), _i32(bool(count_include_pad)), *_pool_divs(g)))
    return gx


# ---- PReLU -----------------------------------------------------------------------------------

def _prelu_setup(x, weight):
    if weight.ndim != 1 or weight.size < 1:
        raise ValueError(f"PReLU weight must have shape (C,) or (1,), got {weight.shape}")
    shared = weight.size == 1
    if shared:
        C, S = 1, 1
    else:
        if x.ndim < 2 or x.shape[1] != weight.size:
            raise ValueError(f"channel-wise PReLU: x {x.shape} must be (N, C, ...) with "
                             f"C == weight.size == {weight.size}")
        C, S = x.shape[1], int(np.prod(x.shape[2:], dtype=np.int64))
    _check_index(x.size, "the PReLU input")
    return shared, C, S


def prelu_forward(x, weight):
    """y = x if x > 0 else a*x, with a = weight[c] (x (N, C, ...), weight (C,)) or the single
    shared slope (weight (1,), x of any shape)."""
    xp = _array_module(x, weight)
    dt = _float_dtype(x, "x")
    x, weight = _prep(xp, x, dt), _prep(xp, weight, dt)
    shared, C, S = _prelu_setup(x, weight)
    y = xp.empty_like(x)
    _launch(xp, "prelu.cu", "prelu_forward_" + _suffix(dt), x.size,
            (x, weight, y, _i32(x.size), _i32(C), _i32(S), _i32(shared)))
    return y


def _slope_blocks(M):
    """Blocks per slope group in the fused backward: ~8 elements per thread, at most 2048
    partial sums (the final pass adds them in one block)."""
    return max(1, min(-(-M // (BLOCK * 8)), 2048, max_blocks()))


def prelu_backward(x, weight, gy, need_weight=True):
    """(gx, gw): gx = gy if x > 0 else a*gy; gw[c] = sum of gy*x over x <= 0 in channel c (or
    over everything when shared). With need_weight: ONE pass reads x and gy once, writes gx and
    per-block partial sums, and a second tiny launch adds the partials in a fixed order
    (deterministic). gw is None when not needed."""
    xp = _array_module(x, weight, gy)
    dt = _float_dtype(x, "x")
    if gy.shape != x.shape:
        raise ValueError(f"prelu_backward: gy has shape {gy.shape}, x has {x.shape}")
    x, weight, gy = (_prep(xp, a, dt) for a in (x, weight, gy))
    shared, C, S = _prelu_setup(x, weight)
    sfx = _suffix(dt)
    gx = xp.empty_like(x)
    if not need_weight:
        _launch(xp, "prelu.cu", "prelu_backward_x_" + sfx, x.size,
                (x, weight, gy, gx, _i32(x.size), _i32(C), _i32(S), _i32(shared)))
        return gx, None
    if shared:  # one group of all elements: N = 1 item of C*S = size consecutive elements
        N, C, S = 1, 1, x.size
    else:
        N = x.shape[0]
    G, M = C, N * S
    if G > 65535:
        raise ValueError(f"PReLU with {G} channels exceeds the grid's y limit 65535")
    gw = xp.empty(weight.shape, dtype=dt)
    if M == 0:
        gw[...] = 0
        return gx, gw
    P = _slope_blocks(M)
    partial = xp.empty(G * P, dtype=dt)
    k1 = _kernel(xp, "prelu.cu", "prelu_backward_partial_" + sfx)
    k1((P, G), (BLOCK,), (x, weight, gy, gx, partial, _i32(N), _i32(C), _i32(S)))
    k2 = _kernel(xp, "prelu.cu", "prelu_slope_final_" + sfx)
    k2((G,), (BLOCK,), (partial, gw, _i32(P)))
    return gx, gw
