"""Images per second of minidl's DataLoader with 0, 1 and 2 worker processes.

Reads GeneratedShapes JPEGs (drawn once into the cache), decodes them and applies the AlexNet
training augmentation (resize, random crop, flip, ToArray, fancy PCA), collating batches as a
training loop would receive them. Prints a table and writes JSON::

    python benchmarks/data_loading.py [--image-size 144] [--crop 127] [--batch-size 64]
        [--workers 0 1 2] [--epochs 2] [--root DIR] [--out runs/data_loading.json]

Every worker count yields the same batches (checked here): only the speed differs. "main CPU
ms/batch" is what loading costs the training process itself: with workers, decoding and
augmentation run beside the training step and only the copy out of shared memory remains.
"""
import argparse
import json
import os
import platform
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from minidl.data import DataLoader, GeneratedShapes  # noqa: E402
from minidl.data import transforms as T  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--image-size", type=int, default=144)
    p.add_argument("--crop", type=int, default=127)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--n-per-class", type=int, default=100)
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--root", default=None, help="GeneratedShapes cache root")
    p.add_argument("--out", default=os.path.join("runs", "data_loading.json"))
    args = p.parse_args(argv)

    t0 = time.perf_counter()
    plain = GeneratedShapes(root=args.root, n_per_class=args.n_per_class,
                            image_size=args.image_size)
    gen_s = time.perf_counter() - t0
    pca = T.FancyPCA.from_dataset(plain, n=200)
    ds = GeneratedShapes(root=args.root, n_per_class=args.n_per_class,
                         image_size=args.image_size,
                         transform=T.Compose([T.Resize(args.image_size), T.RandomCrop(args.crop),
                                              T.RandomHorizontalFlip(), T.ToArray(), pca]))
    rows, reference = [], None
    for w in args.workers:
        loader = DataLoader(ds, batch_size=args.batch_size, shuffle=True, num_workers=w, seed=0)
        times, cpus, first = [], [], None
        for _ in range(args.epochs):
            t, c = time.perf_counter(), time.process_time()
            n, checksum = 0, 0.0
            for x, y in loader:
                n += len(y)
                checksum += float(x.data[:, :, ::17, ::17].sum()) + float(y.data.sum())
            times.append(time.perf_counter() - t)
            cpus.append(time.process_time() - c)
            first = checksum if first is None else first
        if reference is None:
            reference = first
        same = bool(np.isclose(first, reference, rtol=1e-6))
        best = min(times)
        rows.append({"workers": w, "images": n, "seconds": best, "images_per_s": n / best,
                     "main_process_cpu_ms_per_batch": 1e3 * min(cpus) / len(loader),
                     "same_batches_as_first": same})
    print(f"GeneratedShapes {args.image_size}px -> {args.crop}px crops, batch {args.batch_size}, "
          f"{len(ds)} images (generation/cache: {gen_s:.1f} s), {os.cpu_count()} CPUs")
    print(f"{'workers':>8} {'images/s':>10} {'s/epoch':>9} {'main CPU ms/batch':>18}  "
          f"same batches")
    for r in rows:
        print(f"{r['workers']:>8} {r['images_per_s']:>10.0f} {r['seconds']:>9.2f} "
              f"{r['main_process_cpu_ms_per_batch']:>18.1f}  {r['same_batches_as_first']}")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"benchmark": "data_loading", "args": vars(args), "cpus": os.cpu_count(),
                   "python": platform.python_version(), "results": rows}, f, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
