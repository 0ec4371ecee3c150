"""Training throughput and memory of the papers' models in minidl, beside PyTorch.

For AlexNet, the CIFAR ResNet-20, ResNet-50 and the PReLU paper's 14-layer model, at a few
batch sizes: images per second of one training step (forward, cross-entropy loss, backward;
no optimizer step), and the peak memory of that step — on the CPU measured with tracemalloc
(NumPy reports its buffers to it; PyTorch's CPU allocator does not, so PyTorch's CPU memory is
not reported), on a GPU the CuPy memory pool's bytes in use after the step (minidl) and
``torch.cuda.max_memory_allocated`` (PyTorch). PyTorch runs the same architecture, written
here with torch.nn (same layer shapes, checked by comparing parameter counts), when it is
importable; it is never a dependency of minidl.

Writes a JSON file (``--out``, default benchmarks/results/models.json) and prints a table.
``--quick`` uses small inputs and batches (seconds; for tests and smoke checks); the default
uses the papers' input sizes (227 for AlexNet, 224 for ResNet-50 and the PReLU-net, 32 for
ResNet-20) and takes minutes on a CPU.
"""
import argparse
import json
import os
import platform
import sys
import time
import tracemalloc

import numpy as np

try:
    import minidl  # noqa: F401
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import minidl
import minidl.functional as F
from minidl import backend, models

# name -> (minidl builder, input size, batch sizes); QUICK is the --quick table
FULL = {
    "alexnet": (lambda: models.alexnet(num_classes=1000), 227, (8, 32)),
    "resnet20": (lambda: models.resnet20(), 32, (32, 128)),
    "resnet50": (lambda: models.resnet50(num_classes=1000), 224, (4, 16)),
    "prelu_net14": (lambda: models.prelu_net14(activation="prelu", num_classes=1000), 224,
                    (4, 16)),
}
QUICK = {
    "alexnet": (lambda: models.alexnet(num_classes=10, width=0.25, input_size=95), 95, (2, 8)),
    "resnet20": (lambda: models.resnet20(), 32, (2, 8)),
    "resnet50": (lambda: models.resnet50(num_classes=10, width=0.25), 64, (2, 8)),
    "prelu_net14": (lambda: models.prelu_net14(activation="prelu", num_classes=10,
                                               width=0.125), 96, (2, 8)),
}
QUICK_KW = {"alexnet": dict(num_classes=10, width=0.25, input_size=95),
            "resnet20": dict(), "resnet50": dict(num_classes=10, width=0.25),
            "prelu_net14": dict(num_classes=10, width=0.125)}
FULL_KW = {"alexnet": dict(num_classes=1000, width=1.0, input_size=227),
           "resnet20": dict(), "resnet50": dict(num_classes=1000, width=1.0),
           "prelu_net14": dict(num_classes=1000, width=1.0)}


# --------------------------------------------------------------------------------------------
# the same architectures in PyTorch

def torch_models():
    """{name: builder(**kw)} of torch.nn versions of the four models, or None."""
    try:
        import torch
        import torch.nn as tnn
        import torch.nn.functional as tF
    except Exception:
        return None

    def ch(n, width, g=1):
        return max(g, int(round(n * width / g)) * g)

    class TowerLRN(tnn.Module):
        def __init__(self, towers):
            super().__init__()
            self.towers = towers

        def forward(self, x):
            c = x.shape[1] // self.towers
            # minidl/paper alpha = 1e-4 with a plain sum == torch alpha 1e-4 * n
            return torch.cat([tF.local_response_norm(x[:, i * c:(i + 1) * c], 5, alpha=5e-4,
                                                     beta=0.75, k=2.0)
                              for i in range(self.towers)], 1)

    def alexnet(num_classes, width, input_size):
        c = [ch(n, width, 2) for n in (96, 256, 384, 384, 256, 4096)]
        n = (input_size - 11) // 4 + 1
        for _ in range(3):
            n = (n - 3) // 2 + 1
        return tnn.Sequential(
            tnn.Conv2d(3, c[0], 11, 4), tnn.ReLU(), TowerLRN(2), tnn.MaxPool2d(3, 2),
            tnn.Conv2d(c[0], c[1], 5, padding=2, groups=2), tnn.ReLU(), TowerLRN(2),
            tnn.MaxPool2d(3, 2), tnn.Conv2d(c[1], c[2], 3, padding=1), tnn.ReLU(),
            tnn.Conv2d(c[2], c[3], 3, padding=1, groups=2), tnn.ReLU(),
            tnn.Conv2d(c[3], c[4], 3, padding=1, groups=2), tnn.ReLU(), tnn.MaxPool2d(3, 2),
            tnn.Flatten(), tnn.Linear(c[4] * n * n, c[5]), tnn.ReLU(), tnn.Dropout(0.5),
            tnn.Linear(c[5], c[5]), tnn.ReLU(), tnn.Dropout(0.5), tnn.Linear(c[5], num_classes))

    class Basic(tnn.Module):
        def __init__(self, cin, c, stride):
            super().__init__()
            self.c1 = tnn.Conv2d(cin, c, 3, stride, 1, bias=False)
            self.b1 = tnn.BatchNorm2d(c)
            self.c2 = tnn.Conv2d(c, c, 3, 1, 1, bias=False)
            self.b2 = tnn.BatchNorm2d(c)
            self.stride, self.extra = stride, c - cin

        def forward(self, x):
            y = self.b2(self.c2(tF.relu(self.b1(self.c1(x)))))
            s = x[:, :, ::self.stride, ::self.stride]
            if self.extra:
                s = tF.pad(s, (0, 0, 0, 0, 0, self.extra))  # option A
            return tF.relu(y + s)

    class CifarResNet(tnn.Module):
        def __init__(self, depth=20):
            super().__init__()
            n = (depth - 2) // 6
            self.stem = tnn.Sequential(tnn.Conv2d(3, 16, 3, padding=1, bias=False),
                                       tnn.BatchNorm2d(16), tnn.ReLU())
            blocks, cin = [], 16
            for i, c in enumerate((16, 32, 64)):
                for j in range(n):
                    blocks.append(Basic(cin, c, 2 if i and not j else 1))
                    cin = c
            self.blocks = tnn.Sequential(*blocks)
            self.fc = tnn.Linear(64, 10)

        def forward(self, x):
            return self.fc(self.blocks(self.stem(x)).mean((2, 3)))

    class Bottleneck(tnn.Module):
        def __init__(self, cin, c, stride):
            super().__init__()
            out = 4 * c
            self.body = tnn.Sequential(
                tnn.Conv2d(cin, c, 1, stride, bias=False), tnn.BatchNorm2d(c), tnn.ReLU(),
                tnn.Conv2d(c, c, 3, 1, 1, bias=False), tnn.BatchNorm2d(c), tnn.ReLU(),
                tnn.Conv2d(c, out, 1, bias=False), tnn.BatchNorm2d(out))
            self.proj = None
            if stride != 1 or cin != out:  # option B
                self.proj = tnn.Sequential(tnn.Conv2d(cin, out, 1, stride, bias=False),
                                           tnn.BatchNorm2d(out))

        def forward(self, x):
            return tF.relu(self.body(x) + (x if self.proj is None else self.proj(x)))

    def resnet50(num_classes, width):
        base = [ch(c, width) for c in (64, 128, 256, 512)]
        layers = [tnn.Conv2d(3, base[0], 7, 2, 3, bias=False), tnn.BatchNorm2d(base[0]),
                  tnn.ReLU(), tnn.MaxPool2d(3, 2, 1)]
        cin = base[0]
        for i, (n, c) in enumerate(zip((3, 4, 6, 3), base)):
            for j in range(n):
                layers.append(Bottleneck(cin, c, 2 if i and not j else 1))
                cin = 4 * c
        layers += [tnn.AdaptiveAvgPool2d(1), tnn.Flatten(), tnn.Linear(cin, num_classes)]
        return tnn.Sequential(*layers)

    class Conv2x2(tnn.Module):
        def __init__(self, cin, c, br):
            super().__init__()
            self.conv, self.pad = tnn.Conv2d(cin, c, 2), (0, 1, 0, 1) if br else (1, 0, 1, 0)

        def forward(self, x):
            return self.conv(tF.pad(x, self.pad))

    class SPP(tnn.Module):
        def forward(self, x):
            return torch.cat([tF.adaptive_max_pool2d(x, lv).flatten(1) for lv in (6, 3, 2, 1)],
                             1)

    def prelu_net14(num_classes, width):
        c0 = ch(64, width)
        layers = [tnn.Conv2d(3, c0, 7, 2), tnn.PReLU(c0, 0.25), tnn.MaxPool2d(3, 3)]
        cin = c0
        for _pool, n, c in (((3, 3), 4, 128), ((2, 2), 6, 256)):
            if c == 256:
                layers.append(tnn.MaxPool2d(2, 2))
            c = ch(c, width)
            for i in range(1, n + 1):
                layers += [Conv2x2(cin, c, i % 2 == 1), tnn.PReLU(c, 0.25)]
                cin = c
        f = ch(4096, width)
        layers += [SPP(), tnn.Linear(cin * 50, f), tnn.PReLU(f, 0.25), tnn.Dropout(0.5),
                   tnn.Linear(f, f), tnn.PReLU(f, 0.25), tnn.Dropout(0.5),
                   tnn.Linear(f, num_classes)]
        return tnn.Sequential(*layers)

    return {"alexnet": alexnet, "resnet20": lambda: CifarResNet(20), "resnet50": resnet50,
            "prelu_net14": prelu_net14}


# --------------------------------------------------------------------------------------------
# timing

def _sync(device):
    if device == "cuda":
        backend.synchronize()


def bench_minidl(model, x_np, y_np, device, repeat):
    x = minidl.Tensor(x_np, device=device)
    y = minidl.Tensor(y_np, device=device)
    model.train()

    def step():
        model.zero_grad()
        F.cross_entropy(model(x), y).backward()
        _sync(device)

    step()  # warm-up (kernel compilation, caches)
    peak = None
    if device == "cpu":
        tracemalloc.start()
        tracemalloc.reset_peak()
        step()
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    else:
        step()
        try:
            import cupy
            peak = int(cupy.get_default_memory_pool().total_bytes())
        except Exception:
            peak = None
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), peak


def bench_torch(model, x_np, y_np, device, repeat):
    import torch
    dev = "cuda" if device == "cuda" else "cpu"
    model = model.to(dev).train()
    x = torch.from_numpy(x_np).to(dev)
    y = torch.from_numpy(y_np).to(dev)

    def step():
        model.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        if dev == "cuda":
            torch.cuda.synchronize()

    step()
    peak = None
    if dev == "cuda":
        torch.cuda.reset_peak_memory_stats()
        step()
        peak = int(torch.cuda.max_memory_allocated())
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), peak


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--quick", action="store_true", help="small inputs and batches (seconds)")
    p.add_argument("--models", nargs="+", default=list(FULL), choices=list(FULL))
    p.add_argument("--batch-sizes", type=int, nargs="+", default=None,
                   help="override every model's batch sizes")
    p.add_argument("--repeat", type=int, default=None, help="timed steps per setting [3; 1]")
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch comparison")
    p.add_argument("--threads", type=int, default=None,
                   help="torch.set_num_threads (default: torch's own choice)")
    p.add_argument("--tf32", choices=("off", "on"), default="off",
                   help="--device cuda: allow TF32 in float32 GEMMs/convolutions on BOTH sides "
                        "(minidl.cuda.set_tf32; torch matmul and cuDNN allow_tf32) [off]")
    p.add_argument("--out", default=os.path.join("benchmarks", "results", "models.json"))
    args = p.parse_args(argv)
    if args.device == "cuda" and not backend.is_available():
        sys.exit("error: --device cuda needs CuPy and a GPU")
    if args.device == "cuda":
        from minidl import cuda as minidl_cuda
        minidl_cuda.set_tf32(args.tf32 == "on")
    table = QUICK if args.quick else FULL
    kws = QUICK_KW if args.quick else FULL_KW
    repeat = args.repeat or (1 if args.quick else 3)
    tm = None if args.no_torch else torch_models()
    if tm is not None and args.threads:
        import torch
        torch.set_num_threads(args.threads)
    if tm is not None and args.device == "cuda":
        import torch  # PyTorch's defaults differ (cuDNN TF32 on): set both switches explicitly
        torch.backends.cuda.matmul.allow_tf32 = args.tf32 == "on"
        torch.backends.cudnn.allow_tf32 = args.tf32 == "on"
    rows, records = [], []
    for name in args.models:
        build, size, batches = table[name]
        if args.batch_sizes:
            batches = args.batch_sizes
        minidl.manual_seed(0)
        model = build().to(args.device)
        nparams = model.num_parameters()
        tmodel = None
        if tm is not None:
            import torch
            torch.manual_seed(0)
            tmodel = tm[name](**kws[name])
            tparams = sum(p.numel() for p in tmodel.parameters())
            if tparams != nparams:
                print(f"warning: {name}: the PyTorch twin has {tparams:,} parameters, minidl "
                      f"{nparams:,}; skipping the comparison")
                tmodel = None
        for bs in batches:
            rng = np.random.default_rng(0)
            x = rng.standard_normal((bs, 3, size, size)).astype(np.float32)
            y = rng.integers(0, 10, bs).astype(np.int64)
            sec, peak = bench_minidl(model, x, y, args.device, repeat)
            rec = {"model": name, "input": size, "batch": bs, "parameters": nparams,
                   "minidl_seconds_per_step": sec, "minidl_images_per_second": bs / sec,
                   "minidl_peak_bytes": peak}
            if tmodel is not None:
                tsec, tpeak = bench_torch(tmodel, x, y, args.device, repeat)
                rec.update(torch_seconds_per_step=tsec, torch_images_per_second=bs / tsec,
                           torch_peak_bytes=tpeak, minidl_over_torch_time=sec / tsec)
            records.append(rec)
            rows.append([name, size, bs, f"{bs / sec:.1f}",
                         f"{peak / 2**20:.0f}" if peak else "-",
                         f"{rec['torch_images_per_second']:.1f}" if "torch_seconds_per_step"
                         in rec else "-",
                         f"{rec['minidl_over_torch_time']:.1f}x" if "minidl_over_torch_time"
                         in rec else "-"])
            print(f"{name} {size}px batch {bs}: minidl {bs / sec:.1f} img/s"
                  + (f", torch {rec['torch_images_per_second']:.1f} img/s"
                     if "torch_seconds_per_step" in rec else ""), flush=True)
    out = {"device": args.device, "quick": args.quick, "repeat": repeat, "tf32": args.tf32,
           "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                       "python": platform.python_version(), "numpy": np.__version__},
           "results": records}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)
    headers = ["model", "input", "batch", "minidl img/s", "minidl peak MiB", "torch img/s",
               "minidl/torch time"]
    widths = [max(len(h), *(len(str(r[i])) for r in rows)) for i, h in enumerate(headers)]
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths)))
    for r in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)))
    print(f"wrote {args.out}")
    return out


if __name__ == "__main__":
    main()
