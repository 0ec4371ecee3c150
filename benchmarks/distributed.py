"""Data-parallel AlexNet: time per step and the share spent in all-reduce, at 1 and 2 ranks on
this machine (MPI), and on paper what a ring all-reduce over NCCL costs on 8 GPUs.

Measured part: for each world size W in ``--ranks`` (default 1 2) the script launches itself as
``mpiexec -n W python benchmarks/distributed.py --worker``. Each rank builds AlexNet (the paper's
61M-parameter net at 227x227 unless ``--width``/``--input-size`` say otherwise), wraps it in
``DistributedDataParallel`` (4 MB buckets) and times ``--steps`` SGD steps (forward, loss,
backward with the bucketed all-reduce of the gradients, update) at ``--batch`` images per rank
after one warm-up step; the global batch is W * batch (weak scaling, as data parallelism is
used). The all-reduce share is the time inside the gradient all-reduce calls over the step
time; the bucket copies are reported apart. Each rank runs its BLAS on cores / W threads so the
ranks do not fight over the cores.

On paper: a ring all-reduce of S bytes over N GPUs sends and receives 2 (N - 1) / N * S bytes
per GPU, at the link's bandwidth; the compute time per step is 3x the forward
multiply-accumulates (forward + backward) at the GPU's sustained rate. The forward MACs are
counted by running each model once at batch 1 with forward hooks on its conv and linear layers.
Bandwidths and GPU rate are arguments (defaults: NVLink 300 GB/s per direction per GPU as on
an A100 SXM, 100 Gb/s Ethernet = 12.5 GB/s, an A100's 19.5 TFLOP/s FP32 at 50% sustained).

Writes ``--out`` (default benchmarks/results/distributed_cpu.json) and prints two tables.
``--quick``: a scaled AlexNet (width 0.25, 67 px) for a seconds-long check.
"""
import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

try:
    import minidl  # noqa: F401
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import minidl
import minidl.functional as F
from minidl import models

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ranks", type=int, nargs="+", default=[1, 2],
                   help="world sizes to measure [1 2]")
    p.add_argument("--batch", type=int, default=4, help="images per rank per step [4]")
    p.add_argument("--steps", type=int, default=3, help="timed steps after a warm-up [3]")
    p.add_argument("--width", type=float, default=1.0, help="AlexNet channel multiplier [1]")
    p.add_argument("--input-size", type=int, default=227, help="input side [227]")
    p.add_argument("--bucket-mb", type=float, default=4.0, help="DDP bucket size [4]")
    p.add_argument("--quick", action="store_true",
                   help="width 0.25, 67 px, batch 2, 2 steps, no paper-estimate forward passes")
    p.add_argument("--nvlink-gbs", type=float, default=300.0,
                   help="NVLink bandwidth per GPU and direction, GB/s [300]")
    p.add_argument("--ethernet-gbit", type=float, default=100.0,
                   help="Ethernet bandwidth, Gbit/s [100]")
    p.add_argument("--gpu-tflops", type=float, default=19.5,
                   help="GPU peak FP32 rate, TFLOP/s [19.5, an A100]")
    p.add_argument("--efficiency", type=float, default=0.5,
                   help="sustained fraction of the peak during training [0.5]")
    p.add_argument("--gpus", type=int, default=8, help="GPUs in the on-paper ring [8]")
    p.add_argument("--out", default=os.path.join(HERE, "results", "distributed_cpu.json"))
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--worker-out", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.width, args.input_size, args.batch, args.steps = 0.25, 67, 2, 2
    for name in ("batch", "steps"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be at least 1")
    if any(r < 1 for r in args.ranks):
        p.error("--ranks must be positive")
    return args


# ----------------------------------------------------------------------------------------------
# measured: one rank of an mpiexec launch


def worker(args):
    import minidl.distributed as dist
    from minidl.nn.parallel import DistributedDataParallel as DDP
    dist.init_process_group("mpi")
    rank, world = dist.get_rank(), dist.get_world_size()
    minidl.manual_seed(rank)
    model = models.alexnet(num_classes=1000, width=args.width, input_size=args.input_size)
    ddp = DDP(model, bucket_cap_mb=args.bucket_mb)
    opt = minidl.optim.SGD(ddp.parameters(), lr=0.001, momentum=0.9)
    rng = np.random.default_rng(rank)
    x = minidl.Tensor(rng.standard_normal((args.batch, 3, args.input_size, args.input_size))
                      .astype(np.float32))
    y = minidl.Tensor(rng.integers(0, 1000, args.batch))
    times, reduce_s, copy_s = [], [], []
    for step in range(args.steps + 1):
        dist.barrier()
        ddp.reset_stats()
        t0 = time.perf_counter()
        loss = F.cross_entropy(ddp(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        t = time.perf_counter() - t0
        if step:  # the first step is a warm-up
            times.append(t)
            reduce_s.append(ddp.stats["allreduce_seconds"])
            copy_s.append(ddp.stats["copy_seconds"])
    stats = dict(ddp.stats)
    per_rank = dist.all_gather_object({"step": times, "allreduce": reduce_s, "copy": copy_s})
    if rank == 0:
        # a step lasts as long as its slowest rank; medians over the steps
        step = [max(r["step"][i] for r in per_rank) for i in range(args.steps)]
        red = [max(r["allreduce"][i] for r in per_rank) for i in range(args.steps)]
        cp = [max(r["copy"][i] for r in per_rank) for i in range(args.steps)]
        out = {"world_size": world, "batch_per_rank": args.batch, "global_batch":
               world * args.batch, "parameters": model.num_parameters(),
               "buckets": len(ddp.bucket_sizes), "allreduce_calls_per_step":
               stats["allreduce_calls"], "allreduce_bytes_per_step": stats["allreduce_bytes"],
               "seconds_per_step": float(np.median(step)),
               "allreduce_seconds_per_step": float(np.median(red)),
               "copy_seconds_per_step": float(np.median(cp)),
               "images_per_second": world * args.batch / float(np.median(step)),
               "step_seconds_all": step, "blas_threads": os.environ.get("OMP_NUM_THREADS")}
        out["allreduce_share"] = out["allreduce_seconds_per_step"] / out["seconds_per_step"]
        with open(args.worker_out, "w") as f:
            json.dump(out, f)
    dist.destroy_process_group()


def _mpiexec():
    for name in ("mpiexec", "mpirun"):
        here = os.path.join(os.path.dirname(sys.executable), name)
        if os.path.isfile(here) and os.access(here, os.X_OK):
            return here
    exe = shutil.which("mpiexec") or shutil.which("mpirun")
    if exe is None:
        sys.exit("error: no mpiexec found beside this Python or on PATH; pip install "
                 "\"minidl[mpi]\"")
    return exe


def measure(args, world):
    cpus = os.cpu_count() or 1
    threads = str(max(1, cpus // world))
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS=threads, OPENBLAS_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "rank0.json")
        cmd = [_mpiexec(), "-n", str(world), sys.executable, os.path.abspath(__file__),
               "--worker", "--worker-out", out, "--batch", str(args.batch), "--steps",
               str(args.steps), "--width", str(args.width), "--input-size",
               str(args.input_size), "--bucket-mb", str(args.bucket_mb)]
        p = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if p.returncode != 0:
            sys.exit(f"error: {' '.join(cmd)} failed ({p.returncode}):\n{p.stderr[-3000:]}")
        with open(out) as f:
            return json.load(f)


# ----------------------------------------------------------------------------------------------
# on paper


def forward_macs(model, input_size):
    """Multiply-accumulates of one forward pass at batch 1 in the conv and linear layers."""
    from minidl import nn
    total = [0]

    def hook(m, inputs, out):
        w = m.weight
        # every output element of a conv needs (in/groups * kh * kw) MACs; of a linear, in
        per_out = int(np.prod(w.shape[1:]))
        total[0] += int(out.data.size) * per_out

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (nn.Conv2d, nn.Linear))]
    model.eval()
    with minidl.no_grad():
        model(minidl.Tensor(np.zeros((1, 3, input_size, input_size), np.float32)))
    for h in handles:
        h.remove()
    return total[0]


PAPER_MODELS = {
    # name: (builder, input size, per-GPU batch of the paper's multi-GPU runs, known GMACs)
    "alexnet": (lambda: models.alexnet(num_classes=1000), 227, 128),
    "resnet50": (lambda: models.resnet50(num_classes=1000), 224, 32),
}


def on_paper(args):
    rows = []
    n = args.gpus
    links = {"NVLink": args.nvlink_gbs * 1e9,
             f"{args.ethernet_gbit:g} Gb/s Ethernet": args.ethernet_gbit * 1e9 / 8}
    rate = args.gpu_tflops * 1e12 * args.efficiency
    for name, (build, size, batch) in PAPER_MODELS.items():
        model = build()
        params = model.num_parameters()
        macs = forward_macs(model, size)
        del model
        grad_bytes = 4 * params
        ring_bytes = 2 * (n - 1) / n * grad_bytes
        compute = 3 * 2 * macs * batch / rate
        for link, bw in links.items():
            comm = ring_bytes / bw
            rows.append({"model": name, "parameters": params, "forward_gmacs": macs / 1e9,
                         "batch_per_gpu": batch, "gpus": n, "link": link,
                         "bandwidth_bytes_per_s": bw, "gradient_bytes": grad_bytes,
                         "ring_bytes_per_gpu": ring_bytes, "allreduce_seconds": comm,
                         "compute_seconds": compute, "comm_over_compute": comm / compute})
    return rows


def _table(headers, rows):
    w = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    print("  ".join(h.ljust(x) for h, x in zip(headers, w)))
    print("  ".join("-" * x for x in w))
    for r in rows:
        print("  ".join(c.ljust(x) for c, x in zip(r, w)))


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        return worker(args)
    measured = []
    for world in args.ranks:
        print(f"measuring {world} rank(s) ...", flush=True)
        measured.append(measure(args, world))
    print(f"\nAlexNet (width {args.width:g}, {args.input_size} px), {args.batch} images per rank, "
          f"DDP buckets of {args.bucket_mb:g} MB, MPI on this machine ({os.cpu_count()} CPUs)")
    _table(["ranks", "global batch", "s/step", "img/s", "all-reduce s", "share", "copies s",
            "calls", "MB reduced"],
           [[str(m["world_size"]), str(m["global_batch"]), f"{m['seconds_per_step']:.3f}",
             f"{m['images_per_second']:.2f}", f"{m['allreduce_seconds_per_step']:.3f}",
             f"{100 * m['allreduce_share']:.1f}%", f"{m['copy_seconds_per_step']:.3f}",
             str(m["allreduce_calls_per_step"]), f"{m['allreduce_bytes_per_step'] / 2**20:.0f}"]
            for m in measured])
    paper = [] if args.quick else on_paper(args)
    if paper:
        print(f"\non paper: ring all-reduce of the fp32 gradients over {args.gpus} GPUs, against "
              f"compute at {args.gpu_tflops:g} TFLOP/s x {args.efficiency:g}")
        _table(["model", "params", "GMACs", "batch/GPU", "link", "bytes/GPU", "all-reduce",
                "compute", "ratio"],
               [[r["model"], f"{r['parameters'] / 1e6:.1f}M", f"{r['forward_gmacs']:.2f}",
                 str(r["batch_per_gpu"]), r["link"], f"{r['ring_bytes_per_gpu'] / 1e6:.0f} MB",
                 f"{1e3 * r['allreduce_seconds']:.1f} ms", f"{1e3 * r['compute_seconds']:.1f} ms",
                 f"{r['comm_over_compute']:.2f}"] for r in paper])
    result = {"benchmark": "distributed", "quick": args.quick,
              "config": {k: v for k, v in vars(args).items() if not k.startswith("worker")},
              "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                          "python": platform.python_version(), "numpy": np.__version__},
              "measured": measured, "on_paper": paper}
    d = os.path.dirname(os.path.abspath(args.out))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=d, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(result, f, indent=1)
    os.replace(tmp, args.out)
    print(f"\nwrote {args.out}")
    return result


if __name__ == "__main__":
    main()
