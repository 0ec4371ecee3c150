"""Time minidl's handwritten CUDA kernels on the AlexNet layer shapes, against the hardware and PyTorch.

    python benchmarks/kernels.py                      # batch 128, every op, JSON + table
    python benchmarks/kernels.py --ops lrn,prelu --batch 64 --out lrn.json
    python benchmarks/kernels.py --emulator           # no GPU: time the CPU emulation instead

For every op (forward and backward) on the AlexNet shapes (conv1..conv5 at 227x227 input,
batch 128):

* time per call three ways (:func:`time_calls`): the DEVICE time (``--reps`` calls captured
  into one CUDA graph, replayed between a single pair of events, so no host work sits between
  the kernels), the HOST-INCLUSIVE time a user sees (the same calls back to back, wall clock to
  the end of the last kernel) and the HOST overhead per call (the time to enqueue them); the
  median of ``--replays`` rounds;
* rotating buffers: each timed launch reads a different copy of its inputs (enough copies to
  exceed ``--rotate-mb``, default 4x a large L2), so a small tensor is not served from L2;
* achieved GB/s (from the device time) counting the minimum bytes the kernel must move (every
  input read once, every output written once), and that as a fraction of a device-to-device
  copy (``b[...] = a`` on a 512 MB buffer, read + write, timed the same way) in the same run;
* the issue's target for each row beside it (fraction of copy bandwidth, or time against
  PyTorch), with "(met)" / "(MISSED)";
* where PyTorch with CUDA is importable, the same op in PyTorch side by side (LRN as
  ``local_response_norm(x, n, alpha*n, beta, k=2)`` -- PyTorch divides alpha by n; TF32 off on
  both sides; backward through autograd), host-inclusive time against host-inclusive time, and
  the peak GPU memory of each op: CuPy's
  allocations observed by a memory hook against ``torch.cuda.max_memory_allocated``.

Writes JSON (``--out``, default ``runs/kernels_benchmark.json``) and prints a table. Without a GPU it
says so and exits 0 (``--emulator`` times the emulation on a reduced batch for study; those
numbers say nothing about GPU speed).
"""
import argparse
import json
import os
import platform
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from minidl import backend  # noqa: E402
from minidl.cuda import kernels as K  # noqa: E402
from minidl.geometry import conv_output_size, pool_output_size  # noqa: E402

# AlexNet (227x227 input) layer shapes, per image: (C, H, W) of the tensor the op reads.
ALEXNET = {
    "conv1": dict(x=(3, 227, 227), w=(96, 3, 11, 11), stride=4, padding=0, groups=1),
    "conv2": dict(x=(96, 27, 27), w=(256, 48, 5, 5), stride=1, padding=2, groups=2),
    "conv3": dict(x=(256, 13, 13), w=(384, 256, 3, 3), stride=1, padding=1, groups=1),
    "conv4": dict(x=(384, 13, 13), w=(384, 192, 3, 3), stride=1, padding=1, groups=2),
    "conv5": dict(x=(384, 13, 13), w=(256, 192, 3, 3), stride=1, padding=1, groups=2),
}
LRN_SHAPES = {"lrn1": (96, 55, 55), "lrn2": (256, 27, 27)}
POOL_SHAPES = {"pool1": (96, 55, 55), "pool2": (256, 27, 27), "pool5": (256, 13, 13)}
PRELU_SHAPES = {"conv1": (96, 55, 55), "conv2": (256, 27, 27)}
LRN = dict(size=5, alpha=1e-4, beta=0.75, k=2.0)  # the paper's constants (alpha not / n)


# ---- cases: each returns (name, make_inputs(xp, rng) -> tuple, run(*inputs), torch_run or None,
#      min_bytes, flops) ---------------------------------------------------------------------------

def _cases(batch, ops):
    cases = []
    f32 = np.float32

    def rnd(shape):
        return lambda xp, rng: xp.asarray(rng.standard_normal(shape, dtype=f32))

    if "lrn" in ops:
        for name, chw in LRN_SHAPES.items():
            shape = (batch,) + chw
            n = int(np.prod(shape))
            cases.append(dict(
                op="lrn_forward", layer=name, shape=shape, bytes=3 * 4 * n,
                inputs=lambda xp, rng, s=shape: (xp.asarray(np.abs(rng.standard_normal(s, dtype=f32))),),
                run=lambda x: K.lrn_forward(x, **LRN),
                torch=lambda T, x: T.nn.functional.local_response_norm(
                    x, LRN["size"], alpha=LRN["alpha"] * LRN["size"], beta=LRN["beta"], k=LRN["k"])))
            cases.append(dict(
                # the kernel reads x, scale, gy and writes gx (y is not needed: see lrn.cu)
                op="lrn_backward", layer=name, shape=shape, bytes=4 * 4 * n,
                inputs=lambda xp, rng, s=shape: _lrn_bw_inputs(xp, rng, s),
                run=lambda x, y, sc, gy: K.lrn_backward(x, y, sc, gy, LRN["size"], LRN["alpha"],
                                                        LRN["beta"]),
                torch_bw=lambda T, x: T.nn.functional.local_response_norm(
                    x, LRN["size"], alpha=LRN["alpha"] * LRN["size"], beta=LRN["beta"], k=LRN["k"])))
    if "pool" in ops:
        for name, chw in POOL_SHAPES.items():
            shape = (batch,) + chw
            n = int(np.prod(shape))
            o = pool_output_size(chw[1], 3, 2, 0, False)
            m = batch * chw[0] * o * o
            cases.append(dict(
                op="max_pool2d_forward", layer=name, shape=shape, bytes=4 * n + 8 * m,
                inputs=lambda xp, rng, s=shape: (rnd(s)(xp, rng),),
                run=lambda x: K.max_pool2d_forward(x, 3, 2),
                torch=lambda T, x: T.nn.functional.max_pool2d(x, 3, 2)))
            cases.append(dict(
                op="max_pool2d_backward", layer=name, shape=shape, bytes=8 * m + 4 * n,
                inputs=lambda xp, rng, s=shape: _maxpool_bw_inputs(xp, rng, s),
                run=lambda gy, am, s=shape: K.max_pool2d_backward(gy, am, s, 3, 2),
                torch_bw=lambda T, x: T.nn.functional.max_pool2d(x, 3, 2)))
            cases.append(dict(
                op="avg_pool2d_forward", layer=name, shape=shape, bytes=4 * n + 4 * m,
                inputs=lambda xp, rng, s=shape: (rnd(s)(xp, rng),),
                run=lambda x: K.avg_pool2d_forward(x, 3, 2),
                torch=lambda T, x: T.nn.functional.avg_pool2d(x, 3, 2)))
            cases.append(dict(
                op="avg_pool2d_backward", layer=name, shape=shape, bytes=4 * m + 4 * n,
                inputs=lambda xp, rng, s=shape, mm=(batch, chw[0], o, o): (rnd(mm)(xp, rng),),
                run=lambda gy, s=shape: K.avg_pool2d_backward(gy, s, 3, 2),
                torch_bw=lambda T, x: T.nn.functional.avg_pool2d(x, 3, 2)))
    if "prelu" in ops:
        for name, chw in PRELU_SHAPES.items():
            shape = (batch,) + chw
            n = int(np.prod(shape))
            for kind, C in (("channel", chw[0]), ("shared", 1)):
                w = lambda xp, rng, C=C: xp.full((C,), 0.25, dtype=f32)  # noqa: E731
                cases.append(dict(
                    op=f"prelu_forward_{kind}", layer=name, shape=shape, bytes=2 * 4 * n,
                    inputs=lambda xp, rng, s=shape, w=w: (rnd(s)(xp, rng), w(xp, rng)),
                    run=lambda x, a: K.prelu_forward(x, a),
                    torch=lambda T, x, a: T.nn.functional.prelu(x, a)))
                cases.append(dict(
                    op=f"prelu_backward_{kind}", layer=name, shape=shape, bytes=3 * 4 * n,
                    inputs=lambda xp, rng, s=shape, w=w: (rnd(s)(xp, rng), w(xp, rng),
                                                          rnd(s)(xp, rng)),
                    run=lambda x, a, gy: K.prelu_backward(x, a, gy),
                    torch_bw=lambda T, x, a: T.nn.functional.prelu(x, a), grad_params=True))
    if "im2col" in ops or "conv" in ops:
        for name, spec in ALEXNET.items():
            xs = (batch,) + spec["x"]
            F, Cg, KH, KW = spec["w"]
            s, p, g = spec["stride"], spec["padding"], spec["groups"]
            OH = conv_output_size(xs[2], KH, s, p, 1)
            n_x = int(np.prod(xs))
            n_col = batch * xs[1] * KH * KW * OH * OH
            flops = 2 * batch * F * Cg * KH * KW * OH * OH
            if "im2col" in ops and name in ("conv1", "conv2"):
                cases.append(dict(
                    op="im2col", layer=name, shape=xs, bytes=4 * (n_x + n_col),
                    inputs=lambda xp, rng, xs=xs: (rnd(xs)(xp, rng),),
                    run=lambda x, k=(KH, KW), s=s, p=p: K.im2col(x, k, s, p, 1),
                    torch=lambda T, x, k=(KH, KW), s=s, p=p: T.nn.functional.unfold(
                        x, k, padding=p, stride=s)))
                cases.append(dict(
                    op="col2im", layer=name, shape=xs, bytes=4 * (n_x + n_col),
                    inputs=lambda xp, rng, sh=(batch, xs[1] * KH * KW, OH * OH): (rnd(sh)(xp, rng),),
                    run=lambda c, hw=xs[2:], k=(KH, KW), s=s, p=p: K.col2im(c, hw, k, s, p, 1),
                    torch=lambda T, c, hw=xs[2:], k=(KH, KW), s=s, p=p: T.nn.functional.fold(
                        c, hw, k, padding=p, stride=s)))
            if "conv" in ops:
                ws = spec["w"]
                cases.append(dict(
                    op="conv2d_forward", layer=name, shape=xs, bytes=None, flops=flops,
                    inputs=lambda xp, rng, xs=xs, ws=ws, F=F: (
                        rnd(xs)(xp, rng), rnd(ws)(xp, rng) * 0.01, xp.zeros(F, f32)),
                    run=lambda x, w, b, s=s, p=p, g=g: K.conv2d_forward(x, w, b, s, p, 1, g),
                    torch=lambda T, x, w, b, s=s, p=p, g=g: T.nn.functional.conv2d(
                        x, w, b, s, p, 1, g)))
                cases.append(dict(
                    op="conv2d_backward", layer=name, shape=xs, bytes=None, flops=2 * flops,
                    inputs=lambda xp, rng, xs=xs, ws=ws, F=F, OH=OH: (
                        rnd(xs)(xp, rng), rnd(ws)(xp, rng) * 0.01, rnd((batch, F, OH, OH))(xp, rng)),
                    run=lambda x, w, gy, s=s, p=p, g=g: K.conv2d_backward(x, w, gy, s, p, 1, g),
                    torch_bw=lambda T, x, w, s=s, p=p, g=g: T.nn.functional.conv2d(
                        x, w, None, s, p, 1, g), grad_params=True))
    return cases


def _lrn_bw_inputs(xp, rng, shape):
    x = xp.asarray(np.abs(rng.standard_normal(shape, dtype=np.float32)))
    y, scale = K.lrn_forward(x, **LRN)
    return x, y, scale, xp.asarray(rng.standard_normal(shape, dtype=np.float32))


def _maxpool_bw_inputs(xp, rng, shape):
    x = xp.asarray(rng.standard_normal(shape, dtype=np.float32))
    y, am = K.max_pool2d_forward(x, 3, 2)
    return xp.asarray(rng.standard_normal(y.shape, dtype=np.float32)), am


# ---- GPU timing ----------------------------------------------------------------------------

def _nbytes(inputs):
    return sum(int(a.nbytes) for a in inputs)


def time_calls(fn, input_sets, reps, replays, cp, graph=True):
    """Time ``fn(*input_sets[i % len])`` per call, three ways (all in ms per call, medians over
    ``replays`` rounds of ``reps`` calls each):

    * ``call_ms`` -- host-inclusive, what a user sees: wall clock from the first call of a round
      to the end of its last kernel (calls back to back, one synchronize at the end);
    * ``host_ms`` -- the Python/launch cost alone: wall clock of enqueuing the round (the GPU
      queue does not fill at these round sizes, so this is host time, not waiting);
    * ``device_ms`` -- the GPU alone: the round captured once into a CUDA graph, then replayed
      between ONE pair of events (no host work between the kernels). Where capture fails (an
      op that synchronizes, a library that refuses capture) it falls back to one event pair
      around a round of back-to-back calls, which is max(device, host) time; ``device_method``
      says which ("cuda-graph" or "events: <why>").

    Outputs of the captured calls are kept alive until the graph is gone, so no replay writes
    into memory the pool has handed out again."""
    n = len(input_sets)
    stream = cp.cuda.Stream(non_blocking=True)
    res = {}
    with stream:
        for i in range(max(3, n)):  # warm: kernel compilation, the memory pool's blocks
            fn(*input_sets[i % n])
        stream.synchronize()
        calls, hosts = [], []
        for _ in range(replays):
            t0 = time.perf_counter()
            for i in range(reps):
                fn(*input_sets[i % n])
            t1 = time.perf_counter()
            stream.synchronize()
            t2 = time.perf_counter()
            hosts.append((t1 - t0) / reps * 1e3)
            calls.append((t2 - t0) / reps * 1e3)
        res.update(call_ms=statistics.median(calls), host_ms=statistics.median(hosts))
        g, outs, why = None, [], "graph capture not tried"
        if graph:
            try:
                stream.begin_capture()
                try:
                    for i in range(reps):
                        outs.append(fn(*input_sets[i % n]))
                except BaseException:
                    try:
                        stream.end_capture()
                    except Exception:  # noqa: BLE001 - the capture error below is the one to report
                        pass
                    raise
                g = stream.end_capture()
                g.launch(stream)
                stream.synchronize()
            except Exception as e:  # noqa: BLE001 - any refusal means: time without a graph
                g, why = None, f"{type(e).__name__}: {str(e)[:80]}"
        dev = []
        for _ in range(replays):
            a, b = cp.cuda.Event(), cp.cuda.Event()
            a.record(stream)
            if g is not None:
                g.launch(stream)
            else:
                for i in range(reps):
                    fn(*input_sets[i % n])
            b.record(stream)
            b.synchronize()
            dev.append(cp.cuda.get_elapsed_time(a, b) / reps)
        res.update(device_ms=statistics.median(dev),
                   device_method="cuda-graph" if g is not None else f"events: {why}")
        del g, outs
    return res


def _copy_bandwidth(cp, reps, replays, mb=512):
    """Device-to-device copy bandwidth (GB/s, read + write) of ``b[...] = a`` on ``mb`` MB,
    timed like the kernels (graph replay)."""
    n = mb * 2 ** 20 // 4
    a = cp.ones(n, dtype=np.float32)
    b = cp.empty_like(a)

    def copy():
        cp.copyto(b, a)
    t = time_calls(copy, [()], max(2, reps // 4), replays, cp)
    return 2 * a.nbytes / (t["device_ms"] * 1e-3) / 1e9, t


# The issue's targets (H100/H200): fraction of the copy bandwidth, or a time ratio to PyTorch.
def target_of(op):
    """(kind, value, text) of the issue's target for ``op``, or None."""
    if op.startswith("lrn_"):
        return ("frac_copy", 0.80, ">=80% copy, >=3x torch")
    if op.startswith("prelu_"):
        return ("frac_copy", 0.80, ">=80% copy")
    if op.endswith("pool2d_forward"):
        return ("frac_copy", 0.70, ">=70% copy")
    if op.endswith("pool2d_backward"):
        return ("frac_copy", 0.60, ">=60% copy")
    if op in ("im2col", "col2im"):
        return ("frac_copy", 0.60, ">=60% copy")
    if op.startswith("conv2d_"):
        return ("vs_torch", 1 / 1.5, "<=1.5x cuDNN (fwd+bwd)")
    return None


class _PeakHook:
    """Peak bytes CuPy allocates while active (a cupy MemoryHook, created lazily)."""

    def __new__(cls, cp):
        from cupy.cuda import memory_hook

        class Hook(memory_hook.MemoryHook):
            name = "minidl_peak"

            def __init__(self):
                self.cur = self.peak = 0
                self.sizes = {}

            def malloc_postprocess(self, device_id, size, mem_size, mem_ptr, pmem_id):
                self.sizes[mem_ptr] = mem_size
                self.cur += mem_size
                self.peak = max(self.peak, self.cur)

            def free_postprocess(self, device_id, mem_size, mem_ptr, pmem_id):
                self.cur -= self.sizes.pop(mem_ptr, mem_size)
        return Hook()


def _torch_cuda():
    try:
        import torch
    except ImportError:
        return None
    return torch if torch.cuda.is_available() else None


def run_gpu(args):
    cp = backend.cupy_module()
    from minidl import cuda as minidl_cuda
    minidl_cuda.set_tf32(False)  # FP32 GEMMs on both sides
    T = None if args.no_torch else _torch_cuda()
    if T is not None:
        T.backends.cudnn.allow_tf32 = False
        T.backends.cuda.matmul.allow_tf32 = False
    rng = np.random.default_rng(0)
    dev = cp.cuda.Device()
    props = cp.cuda.runtime.getDeviceProperties(dev.id)
    name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
    copy_gbs, copy_t = _copy_bandwidth(cp, args.reps, args.replays)
    print(f"device: {name}; device-to-device copy {copy_gbs:.0f} GB/s "
          f"({copy_t['device_method']}); batch {args.batch}; "
          f"torch {T.__version__ if T else 'not used'}; {args.reps} calls per timed round, "
          f"median of {args.replays} rounds")
    results = []
    for case in _cases(args.batch, args.ops):
        first = case["inputs"](cp, rng)
        per = max(1, _nbytes(first))
        copies = max(1, min(args.max_copies, -(-args.rotate_mb * 2 ** 20 // per)))
        sets = [first] + [case["inputs"](cp, rng) for _ in range(copies - 1)]
        t = time_calls(case["run"], sets, args.reps, args.replays, cp, graph=not args.no_graph)
        hook = _PeakHook(cp)
        cp.cuda.get_current_stream().synchronize()
        with hook:
            out = case["run"](*first)
            cp.cuda.get_current_stream().synchronize()
        del out
        ms = t["device_ms"]
        row = dict(op=case["op"], layer=case["layer"], shape=list(case["shape"]), ms=ms,
                   call_ms=t["call_ms"], host_us=t["host_ms"] * 1e3,
                   device_method=t["device_method"], copies=copies, peak_mb=hook.peak / 2 ** 20)
        if case.get("bytes"):
            row["gbs"] = case["bytes"] / (ms * 1e-3) / 1e9
            row["frac_copy"] = row["gbs"] / copy_gbs
        if case.get("flops"):
            row["tflops"] = case["flops"] / (ms * 1e-3) / 1e12
        if T is not None:
            row.update(_torch_side(T, case, sets, args))
            if row.get("torch_ms"):
                row["speedup_vs_torch"] = row["torch_ms"] / row["call_ms"]
        tgt = target_of(case["op"])
        if tgt:
            kind, val, text = tgt
            row["target"] = text
            got = row.get("frac_copy") if kind == "frac_copy" else row.get("speedup_vs_torch")
            row["meets_target"] = None if got is None else bool(got >= val)
        results.append(row)
        _print_row(row)
        del sets, first
        cp.get_default_memory_pool().free_all_blocks()
    return dict(device=name, copy_gbs=copy_gbs, copy_timing=copy_t, batch=args.batch,
                reps=args.reps, replays=args.replays, results=results)


def _torch_side(T, case, sets, args):
    """PyTorch's time per call for the same op: a round of ``reps`` back-to-back calls between
    one event pair (host-inclusive, like minidl's ``call_ms``), and its peak memory."""
    tsets = [tuple(T.from_dlpack(a) if hasattr(a, "__dlpack__") else a for a in s) for s in sets]
    if "torch" in case:
        fn = lambda *a: case["torch"](T, *a)  # noqa: E731
        run_sets = tsets
    elif "torch_bw" in case:
        # backward through autograd: graph built once per buffer set, timed is the grad call
        run_sets = []
        for _s, cs in zip(tsets, sets):
            shape = case["shape"]
            x = T.randn(shape, device="cuda", requires_grad=True)
            extra = ()
            if case.get("grad_params"):
                extra = (T.from_dlpack(cs[1]).clone().requires_grad_(True),)
            y = case["torch_bw"](T, x, *extra)
            gy = T.randn_like(y)
            run_sets.append((y, (x,) + extra, gy))
        fn = lambda y, xs, gy: T.autograd.grad(y, xs, gy, retain_graph=True)  # noqa: E731
    else:
        return {}
    n = len(run_sets)
    for i in range(max(3, n)):
        fn(*run_sets[i % n])
    T.cuda.synchronize()
    times = []
    for _ in range(args.replays):
        a, b = T.cuda.Event(enable_timing=True), T.cuda.Event(enable_timing=True)
        a.record()
        for i in range(args.reps):
            fn(*run_sets[i % n])
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) / args.reps)
    T.cuda.synchronize()
    base = T.cuda.memory_allocated()
    T.cuda.reset_peak_memory_stats()
    fn(*run_sets[0])
    T.cuda.synchronize()
    return dict(torch_ms=statistics.median(times),
                torch_peak_mb=(T.cuda.max_memory_allocated() - base) / 2 ** 20)


# ---- emulator timing (no GPU) ----------------------------------------------------------------

def run_emulator(args):
    rng = np.random.default_rng(0)
    print(f"CPU emulation (NOT GPU speed): batch {args.batch}, {platform.processor() or 'cpu'}")
    results = []
    for case in _cases(args.batch, args.ops):
        inputs = case["inputs"](np, rng)
        case["run"](*inputs)  # compile + warm
        times = []
        for _ in range(args.repeat):
            t = time.perf_counter()
            case["run"](*inputs)
            times.append((time.perf_counter() - t) * 1e3)
        row = dict(op=case["op"], layer=case["layer"], shape=list(case["shape"]),
                   ms=statistics.median(times))
        results.append(row)
        _print_row(row)
    return dict(device="cpu-emulation", batch=args.batch, results=results)


# ---- output ------------------------------------------------------------------------------------

_HEADER = (f"{'op':<24} {'layer':<6} {'dev ms':>8} {'call ms':>8} {'host us':>7} {'GB/s':>6} "
           f"{'%copy':>6} {'TFLOP/s':>7} {'torch ms':>8} {'x torch':>7} {'MB':>6} "
           f"{'torch MB':>8}  target")


def _print_row(r):
    if not getattr(_print_row, "started", False):
        print(_HEADER)
        print("-" * len(_HEADER))
        _print_row.started = True

    def f(key, fmt, width):
        v = r.get(key)
        return format(v, fmt).rjust(width) if v is not None else "-".rjust(width)
    met = {True: " (met)", False: " (MISSED)"}.get(r.get("meets_target"), "")
    print(f"{r['op']:<24} {r['layer']:<6} {f('ms', '.3f', 8)} {f('call_ms', '.3f', 8)} "
          f"{f('host_us', '.0f', 7)} {f('gbs', '.0f', 6)} {f('frac_copy', '.0%', 6)} "
          f"{f('tflops', '.1f', 7)} {f('torch_ms', '.3f', 8)} {f('speedup_vs_torch', '.2f', 7)} "
          f"{f('peak_mb', '.0f', 6)} {f('torch_peak_mb', '.0f', 8)}  {r.get('target', '')}{met}",
          flush=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("--batch", type=int, default=None, help="batch size (128; 2 with --emulator)")
    ap.add_argument("--ops", default="lrn,pool,prelu,im2col,conv",
                    help="comma list of lrn,pool,prelu,im2col,conv")
    ap.add_argument("--reps", type=int, default=20,
                    help="calls per timed round (captured into one CUDA graph) [20]")
    ap.add_argument("--replays", type=int, default=5, help="timed rounds; the median is reported")
    ap.add_argument("--repeat", type=int, default=3, help="--emulator: timed calls [3]")
    ap.add_argument("--no-graph", action="store_true",
                    help="device time from one event pair around back-to-back calls (no graph)")
    ap.add_argument("--rotate-mb", type=int, default=200,
                    help="rotate input copies until they total at least this many MB")
    ap.add_argument("--max-copies", type=int, default=16)
    ap.add_argument("--no-torch", action="store_true", help="skip the PyTorch side-by-side")
    ap.add_argument("--emulator", action="store_true",
                    help="time the CPU emulation instead (for study; not GPU speed)")
    ap.add_argument("--out", default=os.path.join("runs", "kernels_benchmark.json"),
                    help="JSON output path (default runs/kernels_benchmark.json)")
    args = ap.parse_args(argv)
    args.ops = {o.strip() for o in args.ops.split(",") if o.strip()}
    if args.emulator:
        args.batch = args.batch or 2
        report = run_emulator(args)
    else:
        if not backend.is_available():
            print(f"No GPU: {backend._why_no_cuda()}.\nGPU figures: not measured. "
                  "Run this on a machine with a CUDA GPU and CuPy, or pass --emulator to time "
                  "the CPU emulation of the kernels (for study only).")
            return 0
        args.batch = args.batch or 128
        report = run_gpu(args)
    report.update(argv=sys.argv[1:], time=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    if os.path.dirname(args.out):
        os.makedirs(os.path.dirname(args.out), exist_ok=True)
    tmp = args.out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(report, f, indent=1)
    os.replace(tmp, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
