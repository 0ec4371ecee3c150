#!/usr/bin/env python
"""Time minidl's CPU (NumPy) operations on the AlexNet layer shapes against PyTorch CPU.

For every case -- conv1..conv5 at batch 16 (groups=1, and the paper's two-tower groups=2 for
conv2/4/5), LRN and max-pool after conv1 and conv2, max-pool after conv5, PReLU on a
conv3-sized tensor -- it times the forward (no graph) and forward+backward (gradients to every
input) of minidl and, when torch is importable, of torch on the same float32 inputs in the same
run, with the same number of threads for NumPy's BLAS and for torch. It prints a table of
times (best of the repeats, run interleaved with torch; medians are in the JSON) and
minidl/torch ratios, and writes everything to a JSON file.

    python benchmarks/ops_cpu.py                 # full run (a few minutes on 2 cores)
    python benchmarks/ops_cpu.py --quick         # tiny shapes, one repeat: a smoke test
    python benchmarks/ops_cpu.py --threads 1 --only conv --json out.json

Targets (geometric means printed at the end): conv2d forward+backward, float32, batch 16, on
conv2..conv5 with groups=1 at or below PyTorch CPU (<= 1.0x), the grouped (two-tower) conv2/4/5
within 1.3x. The CIFAR ResNets' 3x3 convolutions (16-64 channels on 32x32..8x8 maps, batch
128), their batch norm and a 2x2 max pool are timed too.
LRN is compared with torch's ``local_response_norm(x, n, alpha * n, beta, k)`` (torch divides
alpha by n, the AlexNet paper and minidl do not).
"""
import argparse
import json
import math
import os
import platform
import statistics
import sys
import time


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    p.add_argument("--quick", action="store_true",
                   help="tiny shapes (batch 2, small images) and 1 repeat: a smoke test")
    p.add_argument("--batch", type=int, default=16, help="batch size (default 16)")
    p.add_argument("--cifar-batch", type=int, default=128,
                   help="batch size of the CIFAR ResNet cases (default 128)")
    p.add_argument("--repeats", type=int, default=5,
                   help="timed repetitions per measurement, interleaved with torch's; the best is "
                        "reported, the median kept in the JSON (default 5)")
    p.add_argument("--threads", type=int, default=None,
                   help="threads for NumPy's BLAS (OPENBLAS/OMP/MKL_NUM_THREADS, set before "
                        "NumPy is imported) and torch.set_num_threads (default: all usable "
                        "cores)")
    p.add_argument("--only", default=None,
                   help="run only cases whose name contains this string (e.g. conv, lrn, pool)")
    p.add_argument("--no-torch", action="store_true", help="do not time PyTorch")
    p.add_argument("--json", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                  "results", "ops_cpu.json"),
                   help="where to write the JSON results (default benchmarks/results/"
                        "ops_cpu.json)")
    return p.parse_args(argv)


def usable_cores():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def openblas_info(np):
    """(corename, threads) of the OpenBLAS NumPy links against, when it can be asked."""
    import ctypes
    import glob
    here = os.path.dirname(np.__file__)
    pats = [os.path.join(here, "..", "numpy.libs", "*openblas*"),
            os.path.join(here, "..", "scipy_openblas64", "lib", "*.so*"),
            os.path.join(here, ".dylibs", "*openblas*")]
    for lib in sorted(sum((glob.glob(p) for p in pats), [])):
        try:
            dll = ctypes.CDLL(lib)
        except OSError:
            continue
        for pre, suf in (("scipy_openblas_", "64_"), ("scipy_openblas_", ""),
                         ("openblas_", "64_"), ("openblas_", "")):
            core = getattr(dll, f"{pre}get_corename{suf}", None)
            nthr = getattr(dll, f"{pre}get_num_threads{suf}", None)
            if core is not None and nthr is not None:
                core.restype = ctypes.c_char_p
                return core().decode(), int(nthr())
    return None, None


def cases(batch, quick, cifar_batch=128):
    """(name, kind, shapes and parameters) on AlexNet's layers (input 227, one tower), then the
    CIFAR ResNets' (see :func:`cifar_cases`)."""
    n = batch
    if quick:
        return [
            ("conv2 g1", "conv", dict(x=(n, 8, 9, 9), w=(16, 8, 5, 5), stride=1, padding=2,
                                      groups=1)),
            ("conv3 g1", "conv", dict(x=(n, 16, 5, 5), w=(16, 16, 3, 3), stride=1, padding=1,
                                      groups=1)),
            ("conv4 g2", "conv", dict(x=(n, 16, 5, 5), w=(16, 8, 3, 3), stride=1, padding=1,
                                      groups=2)),
            ("lrn1", "lrn", dict(x=(n, 8, 9, 9), size=5)),
            ("pool1", "pool", dict(x=(n, 8, 9, 9), kernel=3, stride=2)),
            ("prelu3", "prelu", dict(x=(n, 16, 5, 5))),
            ("r8@6", "conv", dict(x=(n, 8, 6, 6), w=(8, 8, 3, 3), stride=1, padding=1,
                                  groups=1)),
            ("bn8@6", "bn", dict(x=(n, 8, 6, 6))),
            ("pool2x2", "pool", dict(x=(n, 4, 6, 6), kernel=2, stride=2)),
        ]
    return [
        ("conv1 g1", "conv", dict(x=(n, 3, 227, 227), w=(96, 3, 11, 11), stride=4, padding=0,
                                  groups=1)),
        ("conv2 g1", "conv", dict(x=(n, 96, 27, 27), w=(256, 96, 5, 5), stride=1, padding=2,
                                  groups=1)),
        ("conv3 g1", "conv", dict(x=(n, 256, 13, 13), w=(384, 256, 3, 3), stride=1, padding=1,
                                  groups=1)),
        ("conv4 g1", "conv", dict(x=(n, 384, 13, 13), w=(384, 384, 3, 3), stride=1, padding=1,
                                  groups=1)),
        ("conv5 g1", "conv", dict(x=(n, 384, 13, 13), w=(256, 384, 3, 3), stride=1, padding=1,
                                  groups=1)),
        ("conv2 g2", "conv", dict(x=(n, 96, 27, 27), w=(256, 48, 5, 5), stride=1, padding=2,
                                  groups=2)),
        ("conv4 g2", "conv", dict(x=(n, 384, 13, 13), w=(384, 192, 3, 3), stride=1, padding=1,
                                  groups=2)),
        ("conv5 g2", "conv", dict(x=(n, 384, 13, 13), w=(256, 192, 3, 3), stride=1, padding=1,
                                  groups=2)),
        ("lrn1", "lrn", dict(x=(n, 96, 55, 55), size=5)),
        ("pool1", "pool", dict(x=(n, 96, 55, 55), kernel=3, stride=2)),
        ("lrn2", "lrn", dict(x=(n, 256, 27, 27), size=5)),
        ("pool2", "pool", dict(x=(n, 256, 27, 27), kernel=3, stride=2)),
        ("pool5", "pool", dict(x=(n, 256, 13, 13), kernel=3, stride=2)),
        ("prelu3", "prelu", dict(x=(n, 384, 13, 13))),
    ] + cifar_cases(cifar_batch)


def cifar_cases(n):
    """The CIFAR ResNets' layers (3x3, stride 1, padding 1; 16-64 channels on 32x32..8x8 maps),
    their batch norm, and the 2x2 max pooling of the MNIST example, at batch ``n``."""
    convs = [(16, 32), (32, 16), (64, 8), (16, 8), (64, 32)]
    return ([(f"r{c}@{hw}", "conv", dict(x=(n, c, hw, hw), w=(c, c, 3, 3), stride=1, padding=1,
                                         groups=1)) for c, hw in convs]
            + [(f"bn{c}@{hw}", "bn", dict(x=(n, c, hw, hw))) for c, hw in convs[:3]]
            + [("pool2x2", "pool", dict(x=(n, 32, 24, 24), kernel=2, stride=2))])


def gflop(kind, spec, out_shape):
    if kind != "conv":
        return None
    o, cg, kh, kw = spec["w"]
    return 2.0 * math.prod(out_shape) * cg * kh * kw / 1e9


def time_interleaved(fns, repeats):
    """Run the callables alternately ``repeats`` times (after one warm-up each) and return, for
    each, (best, median) seconds. Alternating spreads the load of a shared machine evenly over
    minidl and torch; the best of several runs is the least disturbed estimate."""
    for fn in fns:
        fn()
    ts = [[] for _ in fns]
    for _ in range(repeats):
        for fn, t in zip(fns, ts):
            t0 = time.perf_counter()
            fn()
            t.append(time.perf_counter() - t0)
    return [(min(t), statistics.median(t)) for t in ts]


def main(argv=None):
    args = parse_args(argv)
    threads = args.threads or usable_cores()
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(threads)
    if "numpy" in sys.modules:
        print("note: NumPy was imported before the thread count was set", file=sys.stderr)

    import numpy as np
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import minidl
    import minidl.functional as F

    torch = None
    if not args.no_torch:
        try:
            import torch
            import torch.nn.functional as TF
            torch.set_num_threads(threads)
        except ImportError:
            torch = None
    batch = 2 if args.quick and args.batch == 16 else args.batch
    repeats = 1 if args.quick else args.repeats
    corename, blas_threads = openblas_info(np)
    env = {
        "python": platform.python_version(), "numpy": np.__version__,
        "torch": torch.__version__ if torch else None, "machine": platform.machine(),
        "processor": platform.processor(), "usable_cores": usable_cores(),
        "threads": threads, "numpy_blas_threads": blas_threads,
        "torch_threads": torch.get_num_threads() if torch else None,
        "openblas_corename": corename,
        "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE"),
        "batch": batch, "repeats": repeats, "dtype": "float32", "quick": args.quick,
    }
    print(f"minidl ops on the CPU: batch {batch}, float32, best of {repeats} (interleaved); {threads} "
          f"threads (NumPy BLAS reports {blas_threads}, OpenBLAS core {corename}, "
          f"OPENBLAS_CORETYPE={env['OPENBLAS_CORETYPE']}); torch "
          f"{env['torch'] or 'not timed'}" + (f" with {env['torch_threads']} threads"
                                              if torch else ""))

    rng = np.random.default_rng(0)
    rows = []
    for name, kind, spec in cases(batch, args.quick, args.cifar_batch):
        if args.only and args.only not in name:
            continue
        x = rng.standard_normal(spec["x"]).astype(np.float32)
        arrays = [x]
        if kind == "conv":
            w = (rng.standard_normal(spec["w"]) * 0.01).astype(np.float32)
            b = np.zeros(spec["w"][0], np.float32)
            arrays += [w, b]

            def ours(x, w, b, s=spec):
                return F.conv2d(x, w, b, s["stride"], s["padding"], 1, s["groups"])

            def theirs(x, w, b, s=spec):
                return TF.conv2d(x, w, b, s["stride"], s["padding"], 1, s["groups"])
        elif kind == "lrn":
            def ours(x, s=spec):
                return F.local_response_norm(x, s["size"], 1e-4, 0.75, 2.0)

            def theirs(x, s=spec):
                return TF.local_response_norm(x, s["size"], 1e-4 * s["size"], 0.75, 2.0)
        elif kind == "pool":
            def ours(x, s=spec):
                return F.max_pool2d(x, s["kernel"], s["stride"])

            def theirs(x, s=spec):
                return TF.max_pool2d(x, s["kernel"], s["stride"])
        elif kind == "bn":  # training mode: batch statistics, affine weight and bias
            c = spec["x"][1]
            arrays += [np.ones(c, np.float32), np.zeros(c, np.float32)]

            def ours(x, w, b):
                return F.batch_norm(x, None, None, w, b, training=True)

            def theirs(x, w, b):
                return TF.batch_norm(x, None, None, w, b, training=True)
        else:  # prelu, channel-wise slopes
            a = np.full(spec["x"][1], 0.25, np.float32)
            arrays.append(a)

            def ours(x, a):
                return F.prelu(x, a)

            def theirs(x, a):
                return TF.prelu(x, a)

        mt = [minidl.Tensor(a) for a in arrays]
        mg = [minidl.Tensor(a, requires_grad=True) for a in arrays]
        with minidl.no_grad():
            y0 = ours(*mt)
        gy = rng.standard_normal(y0.shape).astype(np.float32)
        del y0

        # default arguments bind this iteration's tensors (the timer calls these later)
        def m_fwd(ours=ours, mt=mt):
            with minidl.no_grad():
                ours(*mt)

        def m_fb(ours=ours, mg=mg, gy=gy):
            for t in mg:
                t.grad = None
            ours(*mg).backward(gy)

        row = {"name": name, "kind": kind, "input": list(spec["x"]),
               "params": {k: v for k, v in spec.items() if k != "x"}, "output": list(gy.shape)}
        fns = [m_fwd, m_fb]
        if torch is not None:
            tt = [torch.from_numpy(a) for a in arrays]
            tg = [torch.from_numpy(a.copy()).requires_grad_(True) for a in arrays]
            tgy = torch.from_numpy(gy)

            def t_fwd(theirs=theirs, tt=tt):
                with torch.no_grad():
                    theirs(*tt)

            def t_fb(theirs=theirs, tg=tg, tgy=tgy):
                for t in tg:
                    t.grad = None
                theirs(*tg).backward(tgy)

            fns += [t_fwd, t_fb]
        res = time_interleaved(fns, repeats)
        keys = ["minidl_fwd", "minidl_fwd_bwd", "torch_fwd", "torch_fwd_bwd"]
        for key, (best, med) in zip(keys, res):
            row[key + "_s"], row[key + "_median_s"] = best, med
        if torch is not None:
            row["ratio_fwd"] = row["minidl_fwd_s"] / row["torch_fwd_s"]
            row["ratio_fwd_bwd"] = row["minidl_fwd_bwd_s"] / row["torch_fwd_bwd_s"]
        g = gflop(kind, spec, gy.shape)
        if g is not None:
            row["gflop_fwd"] = g
            row["minidl_fwd_gflops"] = g / row["minidl_fwd_s"]
        rows.append(row)
        print_row(row, header=len(rows) == 1)

    summary = {}

    def geomean(rs):
        return math.exp(sum(math.log(r["ratio_fwd_bwd"]) for r in rs) / len(rs))

    groups = [
        ("conv2_5_g1", lambda r: r["name"].endswith("g1") and r["name"].split()[0]
         in ("conv2", "conv3", "conv4", "conv5"), 1.0),
        ("conv2_4_5_g2", lambda r: r["name"].endswith("g2"), 1.3),
        ("cifar_3x3", lambda r: r["name"].startswith("r") and "@" in r["name"], None),
    ]
    for key, pick, target in groups:
        rs = [r for r in rows if r["kind"] == "conv" and pick(r) and "ratio_fwd_bwd" in r]
        if not rs:
            continue
        gm = geomean(rs)
        summary[key] = {"fwd_bwd_geomean_ratio": gm, "target": target,
                        "cases": [r["name"] for r in rs]}
        print(f"conv2d forward+backward {', '.join(summary[key]['cases'])}: geometric mean "
              f"minidl/torch = {gm:.2f}x" + (f" (target <= {target}x)" if target else ""))
    out = {"environment": env, "results": rows, "summary": summary,
           "command": " ".join([os.path.basename(sys.executable)] + sys.argv)}
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(out, f, indent=2)
    print(f"wrote {args.json}")
    return out


def print_row(r, header=False):
    if header:
        print(f"\n{'case':<10} {'input':<20} {'fwd ms':>9} {'torch':>9} {'ratio':>6}   "
              f"{'fwd+bwd ms':>10} {'torch':>9} {'ratio':>6}")
    t = lambda v: f"{v * 1e3:9.2f}" if v is not None else f"{'-':>9}"  # noqa: E731
    q = lambda v: f"{v:6.2f}" if v is not None else f"{'-':>6}"         # noqa: E731
    print(f"{r['name']:<10} {'x'.join(map(str, r['input'])):<20} {t(r['minidl_fwd_s'])} "
          f"{t(r.get('torch_fwd_s'))} {q(r.get('ratio_fwd'))}   "
          f"{r['minidl_fwd_bwd_s'] * 1e3:10.2f} {t(r.get('torch_fwd_bwd_s'))} "
          f"{q(r.get('ratio_fwd_bwd'))}", flush=True)


if __name__ == "__main__":
    main()
