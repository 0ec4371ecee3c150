"""Where one training step's time goes: a profile of minidl's NumPy path, by part.

Runs ``--steps`` training steps (forward, cross-entropy, backward; no optimizer step, as
``benchmarks/models.py`` times them) of one of the papers' models under ``cProfile`` after a
warm-up step, and sums each Python function's own time ("tottime") into parts:

* ``conv: im2col copies``     the column buffers (``_cols_cn``: a strided view and one copy);
* ``conv: col2im``            the column gradient summed back (``_col2im_cn``);
* ``conv: GEMMs + layout``    the rest of conv2d forward/backward: the BLAS matrix products and
  the layout copies around them (NCHW <-> channel-major, the bias add);
* ``batch norm``, ``pooling``, ``LRN``, ``activations`` (functional/activation.py: PReLU,
  tanh ...), ``loss``, ``linear, ReLU, elementwise`` (functional/linear.py and the ops module:
  matmul, ReLU, add, reshape ...), ``engine`` (the autograd graph: Tensor, Function, backward
  traversal, gradient accumulation), ``nn modules`` (Module calls, hooks), ``other``.

NumPy's C functions (``ascontiguousarray``, ``copyto``, reductions ...) are charged to the
minidl function that called them, so each part includes the NumPy work it asked for; ufuncs
(``np.matmul``, ``np.add`` ...) are not seen by cProfile at all and land in their caller's own
time, which is what we want. cProfile adds a fixed cost per Python call, so the "engine" share
is an upper bound (the step under the profiler is reported beside the unprofiled one).

``python benchmarks/profile_step.py --model resnet20 --batch-size 128`` prints the table and
writes JSON (``--out``, default benchmarks/results/profile_<model>_b<batch>.json).
"""
import argparse
import cProfile
import functools
import json
import os
import platform
import pstats
import sys
import time

import numpy as np

try:
    import minidl  # noqa: F401
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import minidl
import minidl.functional as F
from minidl import models

MODELS = {
    "alexnet": (lambda: models.alexnet(num_classes=1000), 227, 1000),
    "resnet20": (lambda: models.resnet20(), 32, 10),
    "resnet50": (lambda: models.resnet50(num_classes=1000), 224, 1000),
    "prelu_net14": (lambda: models.prelu_net14(activation="prelu", num_classes=1000), 224, 1000),
}

# (part, predicate on (file, function name)), first match wins; file is relative to minidl/
_CONV_FILE = os.path.join("functional", "conv.py")
PARTS = [
    ("conv: im2col copies", lambda f, n: f == _CONV_FILE
     and n[0] in ("_cols_cn", "_window_view", "_pad_hw")),
    ("conv: col2im", lambda f, n: f == _CONV_FILE and n[0] == "_col2im_cn"),
    ("conv: GEMMs + layout", lambda f, n: f == _CONV_FILE),
    ("LRN", lambda f, n: f == os.path.join("functional", "norm.py") and n in _lrn_code()),
    ("batch norm", lambda f, n: f == os.path.join("functional", "norm.py")),
    ("pooling", lambda f, n: f == os.path.join("functional", "pooling.py")),
    ("activations", lambda f, n: f == os.path.join("functional", "activation.py")),
    ("loss", lambda f, n: f == os.path.join("functional", "loss.py")),
    ("linear, ReLU, elementwise", lambda f, n: f.startswith("functional") or f == "ops.py"),
    ("engine", lambda f, n: f in ("tensor.py", "autograd.py", "_grad_mode.py", "backend.py")),
    ("nn modules", lambda f, n: f.startswith("nn") or f.startswith("models")),
]


@functools.lru_cache(maxsize=None)
def _lrn_code():
    """(name, first line) of norm.py's LRN code: its functions and the methods of its Function
    (cProfile names a method by its bare name, so the line tells LRN's ``forward`` from batch
    norm's)."""
    from minidl.functional import norm
    fns = [norm._window_sum, norm.local_response_norm]
    fns += [v for v in vars(norm.LocalResponseNormFunction).values() if callable(v)]
    return {(f.__code__.co_name, f.__code__.co_firstlineno) for f in fns if hasattr(f, "__code__")}


def classify(filename, name, line=None):
    """The part a function (minidl source file relative to the package, name, first line)
    belongs to."""
    key = (name, line)
    for part, pred in PARTS:
        if pred(filename, key):
            return part
    return "other"


def _minidl_rel(path):
    root = os.path.dirname(os.path.abspath(minidl.__file__))
    path = os.path.abspath(path)
    return os.path.relpath(path, root) if path.startswith(root + os.sep) else None


def breakdown(stats):
    """{part: seconds} from a pstats.Stats: each minidl function's own time, and each C
    function's time charged to its minidl callers (in proportion to what each caller spent)."""
    parts = {}
    outside = 0.0
    for (file, line, name), (_cc, _nc, tt, _ct, callers) in stats.stats.items():
        rel = _minidl_rel(file) if file not in ("~", "") else None
        if rel is not None:
            part = classify(rel, name, line)
            parts[part] = parts.get(part, 0.0) + tt
            continue
        # a C function or a function outside minidl: charge it to its minidl callers
        charged = 0.0
        for (cfile, cline, cname), (_c1, _c2, ctt, _cct) in callers.items():
            crel = _minidl_rel(cfile) if cfile not in ("~", "") else None
            if crel is not None:
                part = classify(crel, cname, cline)
                parts[part] = parts.get(part, 0.0) + ctt
                charged += ctt
        outside += max(0.0, tt - charged)
    parts["outside minidl (NumPy internals, profiler)"] = outside
    return parts


def step(model, x, y):
    model.zero_grad()
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    return loss


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=sorted(MODELS), default="resnet20")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=3, help="profiled steps (after one warm-up)")
    p.add_argument("--threads", type=int, default=None,
                   help="BLAS threads (needs threadpoolctl; default: as the environment has it)")
    p.add_argument("--input-size", type=int, default=None, help="override the model's input side")
    p.add_argument("--out", default=None, help="JSON path [benchmarks/results/profile_<model>_"
                                               "b<batch>.json]")
    args = p.parse_args(argv)
    if args.batch_size < 1 or args.steps < 1:
        p.error("--batch-size and --steps must be positive")
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.threads is not None:
        try:
            from threadpoolctl import threadpool_limits
            threadpool_limits(args.threads)
        except ImportError:
            print("note: threadpoolctl not installed; --threads ignored (set "
                  "OPENBLAS_NUM_THREADS instead)")
    build, size, classes = MODELS[args.model]
    size = args.input_size or size
    minidl.manual_seed(0)
    model = build()
    rng = np.random.default_rng(0)
    x = minidl.Tensor(rng.standard_normal((args.batch_size, 3, size, size)).astype(np.float32))
    y = minidl.Tensor(rng.integers(0, classes, args.batch_size))
    step(model, x, y)                                     # warm-up
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step(model, x, y)
    plain = (time.perf_counter() - t0) / args.steps
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.enable()
    for _ in range(args.steps):
        step(model, x, y)
    prof.disable()
    profiled = (time.perf_counter() - t0) / args.steps
    parts = breakdown(pstats.Stats(prof))
    total = sum(parts.values())
    rows = sorted(parts.items(), key=lambda kv: -kv[1])
    print(f"{args.model}, batch {args.batch_size}, input {size}: {plain:.3f} s per step "
          f"({profiled:.3f} s under cProfile), {args.steps} steps")
    print(f"{'part':44s} {'s/step':>8s} {'share':>7s}")
    for part, sec in rows:
        print(f"{part:44s} {sec / args.steps:8.3f} {100 * sec / total:6.1f}%")
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                   f"profile_{args.model}_b{args.batch_size}.json")
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    record = {"model": args.model, "batch_size": args.batch_size, "input_size": size,
              "steps": args.steps, "seconds_per_step": plain,
              "seconds_per_step_profiled": profiled,
              "parts_seconds_per_step": {k: v / args.steps for k, v in rows},
              "parts_share": {k: v / total for k, v in rows},
              "machine": platform.processor() or platform.machine(),
              "numpy": np.__version__, "python": platform.python_version()}
    tmp = out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(record, f, indent=1)
    os.replace(tmp, out)
    print(f"wrote {out}")
    return record


if __name__ == "__main__":
    main()
