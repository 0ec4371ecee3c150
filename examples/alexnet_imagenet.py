"""Train AlexNet (Krizhevsky, Sutskever & Hinton 2012) with the paper's recipe.

Paper claim: the 8-layer CNN (5 conv + 3 fc, ReLU, LRN, overlapping pooling, two towers,
dropout, random crops + flips + fancy-PCA colour augmentation, SGD with momentum 0.9 and weight
decay 5e-4) reaches 40.7% / 18.2% top-1 / top-5 error on ILSVRC-2012 val (one CNN, 10-view test).

With no --data, this trains on minidl's built-in GeneratedShapes set (10 classes of drawn
shapes on cluttered backgrounds, generated on first use and cached): the README quick start.
A full AlexNet cannot learn that in minutes on a CPU, so the default is a SCALED AlexNet with
the same layer structure (LRN, overlapping pooling, grouped convs in two towers) at a quarter
of the channels on small inputs, He init, inputs scaled to [0, 1] and standardized per
channel, and dropout off (``--dropout 0.5`` restores it: the paper notes it roughly doubles
the iterations to converge, and on this budget it keeps the net at chance far longer); the
configuration is printed at the start. ``--paper`` gives the exact paper setup:
227x227 crops of 256x256 images, width 1, two towers, N(0, 0.01^2) init, raw 0-255 values minus
the mean image, SGD (paper form) lr 0.01, momentum 0.9, wd 5e-4, batch 128, learning rate /10
when the validation error stops improving, 90 epochs.

Evaluation: ten-crop (4 corners + centre and their mirror images, softmaxes averaged) top-1 and
top-5 error at the end; the centre crop after every epoch. A checkpoint is written after every
epoch (``--resume`` continues from it). The paper's ablations: ``--towers 1`` (the paper's
one-GPU net, ``models.alexnet_one_gpu``: half the kernels of conv1-conv4, conv5 and the
fully-connected layers whole), ``--no-fancy-pca``, ``--no-lrn``, ``--no-overlap``
(3x3/2 pooling -> 2x2/2).

--data DIR: an ImageNet-style folder: DIR/train/<class>/*.JPEG and DIR/val/<class>/*, or list
files DIR/train.txt and DIR/val.txt ("relative/path label" per line, paths relative to DIR).

--distributed: data-parallel training over the ranks of an MPI launch, one process per rank,
``mpiexec -n 2 python examples/alexnet_imagenet.py --distributed`` (backend "mpi"; with
``--device cuda`` backend "nccl", one GPU per rank). ``--batch-size`` stays the global batch
(each of the W ranks loads batch/W images of it, so W must divide it) and the learning rate is
unchanged: the run follows the single-process one, up to floating-point rounding and dropout
masks (each rank draws its own). Rank 0 prints, logs, plots and writes the checkpoint; the
metrics and the validation error are those of all ranks together; --resume resumes every rank.

Writes into --out: results.json (val_top1_error, val_top5_error as fractions, the paper's
figures, timings), log.jsonl, curves.png, checkpoint.npz.
"""
import os
import sys
import time

import numpy as np

from _common import Stopwatch, announce, make_parser, print_table, setup, write_results
from _common import existing_dir, nonnegative_int, positive_float, positive_int, probability  # argparse types

import minidl.functional as F
import minidl
import minidl.distributed as dist
from minidl import data, models, optim
from minidl.nn.parallel import DistributedDataParallel
from minidl.data import transforms as T
from minidl.train import (EpochLog, evaluate, load_checkpoint, plot_curves, save_checkpoint,
                          train_one_epoch)

PAPER_CLAIM = {"source": "Krizhevsky et al. 2012, ILSVRC-2012 val, one CNN, 10 views",
               "top1_error": 0.407, "top5_error": 0.182}

# The CPU default: measured on a 2-core CPU to finish in minutes (see examples/README.md).
CPU = dict(width=0.25, input_size=95, image_size=108, init="he", scale=1.0,
           mean="channel", std=True, dropout=0.0, lr=0.02, batch_size=32, epochs=20,
           n_per_class=260,
           val_per_class=50, patience=2, plateau_min_lr=1e-4)
PAPER = dict(width=1.0, input_size=227, image_size=256, init="paper", scale=255.0,
             mean="image", std=False, dropout=0.5, lr=0.01, batch_size=128, epochs=90,
             n_per_class=None,
             val_per_class=None, patience=5, plateau_min_lr=1e-5)
SMOKE = dict(CPU, width=0.125, input_size=67, image_size=76, epochs=2, batch_size=16,
             n_per_class=4, val_per_class=2)


def parse_args(argv=None):
    p = make_parser(__doc__, "runs/alexnet")
    p.add_argument("--data", type=existing_dir, default=None,
                   help="ImageNet-style folder (train/ and val/, or train.txt and val.txt); "
                        "default: the generated shapes set")
    p.add_argument("--data-root", default=None,
                   help="cache folder of the generated set [$MINIDL_DATA or ~/.cache/minidl]")
    p.add_argument("--epochs", type=positive_int, default=None)
    p.add_argument("--batch-size", type=positive_int, default=None)
    p.add_argument("--lr", type=positive_float, default=None, help="initial learning rate")
    p.add_argument("--width", type=positive_float, default=None, help="channel multiplier")
    p.add_argument("--input-size", type=positive_int, default=None, help="crop side fed to the net")
    p.add_argument("--image-size", type=positive_int, default=None,
                   help="images are resized/cropped to this square before random crops")
    p.add_argument("--init", choices=("paper", "he"), default=None)
    p.add_argument("--dropout", type=probability, default=None,
                   help="drop probability in fc6/fc7 [0.5 with --paper; see the CPU default]")
    p.add_argument("--n-per-class", type=positive_int, default=None,
                   help="generated training images per class")
    p.add_argument("--val-per-class", type=positive_int, default=None,
                   help="generated validation images per class")
    p.add_argument("--towers", type=int, choices=(1, 2), default=2,
                   help="2: the paper's two-GPU net; 1: its one-GPU net (half the kernels of "
                        "conv1-conv4, conv5 and the fc layers whole)")
    p.add_argument("--no-fancy-pca", action="store_true", help="ablation: no colour PCA")
    p.add_argument("--no-lrn", action="store_true", help="ablation: no local response norm")
    p.add_argument("--no-overlap", action="store_true",
                   help="ablation: 2x2 stride-2 pooling instead of overlapping 3x3 stride 2")
    p.add_argument("--no-ten-crop", action="store_true",
                   help="final evaluation on the centre crop only")
    p.add_argument("--workers", type=nonnegative_int, default=None,
                   help="data-loading processes [1 on CPU, 4 with --paper]")
    p.add_argument("--resume", nargs="?", const="", default=None,
                   help="continue from a checkpoint (default: OUT/checkpoint.npz)")
    p.add_argument("--distributed", action="store_true",
                   help="data-parallel over the ranks of an MPI launch (mpiexec -n W ...): "
                        "backend mpi, or nccl with --device cuda; --batch-size is the global "
                        "batch")
    args = p.parse_args(argv)
    if args.input_size and args.image_size and args.input_size > args.image_size:
        p.error(f"--input-size {args.input_size} is larger than --image-size {args.image_size} "
                "(the crops are taken from the resized image)")
    return args


def config_from(args):
    base = PAPER if args.paper else (SMOKE if args.smoke else CPU)
    cfg = dict(base)
    for k in ("epochs", "batch_size", "lr", "width", "input_size", "image_size", "init",
              "dropout", "n_per_class", "val_per_class"):
        v = getattr(args, k)
        if v is not None:
            cfg[k] = v
    cfg["towers"] = args.towers
    # the paper's one-GPU comparison net (footnote 2): halves conv1-conv4 only
    cfg["arch"] = "alexnet_one_gpu" if args.towers == 1 else "alexnet"
    cfg["model_width"] = cfg["width"]
    cfg["fancy_pca"] = not args.no_fancy_pca
    cfg["lrn"] = not args.no_lrn
    cfg["overlap_pool"] = not args.no_overlap
    cfg["workers"] = args.workers if args.workers is not None else (4 if args.paper else 1)
    return cfg


def datasets(args, cfg):
    """(train set, val set) with transforms still unset, and a description."""
    if args.data:
        d = args.data
        if os.path.isdir(os.path.join(d, "train")) and os.path.isdir(os.path.join(d, "val")):
            tr, va = data.ImageFolder(os.path.join(d, "train")), \
                data.ImageFolder(os.path.join(d, "val"))
        elif os.path.isfile(os.path.join(d, "train.txt")) and \
                os.path.isfile(os.path.join(d, "val.txt")):
            tr = data.ImageList(os.path.join(d, "train.txt"), d)
            va = data.ImageList(os.path.join(d, "val.txt"), d)
        else:
            sys.exit(f"error: --data {d!r} holds neither train/ and val/ folders nor train.txt "
                     f"and val.txt list files")
        return tr, va, f"{d} ({len(tr)} train / {len(va)} val images)"
    n_tr = cfg["n_per_class"] or 300
    n_va = cfg["val_per_class"] or 50
    tr = data.GeneratedShapes(args.data_root, "train", n_per_class=n_tr,
                              image_size=cfg["image_size"], seed=args.seed)
    va = data.GeneratedShapes(args.data_root, "val", n_per_class=n_va,
                              image_size=cfg["image_size"], seed=args.seed)
    return tr, va, (f"GeneratedShapes, {len(tr.classes)} classes, {len(tr)} train / {len(va)} "
                    f"val images of {cfg['image_size']} px (cache {tr.dataset_root})")


def build_transforms(train_set, cfg, out):
    """The paper's pipeline: square image -> values (0-255 or [0, 1]) -> fancy PCA (training)
    -> minus the mean image (paper) or per-channel standardization (CPU default) -> random crop
    + mirror for training; the centre crop or ten crops for testing."""
    S, s = cfg["image_size"], cfg["input_size"]
    base = [T.Resize(S), T.CenterCrop(S), T.ToArray(cfg["scale"])]
    tag = f"{S}_{cfg['scale']:g}"
    rgb_mean, cov = T.rgb_covariance(train_set, transform=T.Compose(base), n=1000)
    if cfg["mean"] == "image":
        norm = T.SubtractMean(T.compute_mean_image(
            train_set, transform=T.Compose(base), n=2000,
            cache=os.path.join(out, f"mean_image_{tag}.npy")))
    else:  # per-channel mean (and, with "std", unit variance) of the training pixels
        norm = T.Normalize(rgb_mean, np.sqrt(np.diag(cov)) if cfg["std"] else np.ones(3))
    train_tf = list(base)
    if cfg["fancy_pca"]:  # eigen-decomposition of the RGB covariance, largest first
        eigvals, eigvecs = np.linalg.eigh(cov)
        train_tf.append(T.FancyPCA(np.clip(eigvals[::-1], 0, None), eigvecs[:, ::-1]))
    train_tf += [norm, T.RandomCrop(s), T.RandomHorizontalFlip()]
    centre = T.Compose(base + [norm, T.CenterCrop(s)])
    ten = T.Compose(base + [norm, T.TenCrop(s)])
    return T.Compose(train_tf), centre, ten


def main(argv=None):
    args = parse_args(argv)
    world, rank = 1, 0
    if args.distributed:
        # before setup: the nccl backend picks this rank's GPU
        dist.init_process_group("nccl" if args.device == "cuda" else "mpi")
        world, rank = dist.get_world_size(), dist.get_rank()
        if rank != 0:  # progress, tables and notes come from rank 0
            sys.stdout = open(os.devnull, "w")
    device = setup(args)
    cfg = config_from(args)
    if cfg["batch_size"] % world:
        sys.exit(f"error: --distributed with {world} ranks needs a batch size divisible by "
                 f"{world}, got {cfg['batch_size']}")
    per_rank = cfg["batch_size"] // world
    t_start = time.perf_counter()

    with Stopwatch() as t_data:
        if rank != 0:
            dist.barrier()  # rank 0 generates and caches the data (and the mean image) first
        train_set, val_set, data_desc = datasets(args, cfg)
        train_tf, centre_tf, ten_tf = build_transforms(train_set, cfg, args.out)
        if args.distributed and rank == 0:
            dist.barrier()
    num_classes = len(train_set.classes) if hasattr(train_set, "classes") else \
        int(max(train_set.targets)) + 1
    scaled = None
    if not args.paper:
        scaled = (f"AlexNet at width {cfg['model_width']:g} (channels x{cfg['model_width']:g}), "
                  f"{cfg['input_size']} px crops of {cfg['image_size']} px images, "
                  f"{cfg['init']} init, inputs in [0, 1] standardized per channel, dropout "
                  f"{cfg['dropout']:g} (the paper: 0.5, which doubles the iterations needed), lr "
                  f"{cfg['lr']:g}, batch {cfg['batch_size']}, {cfg['epochs']} epochs"
                  + ("" if args.data else ", on the generated shapes set; the default buys "
                                          "a net that learns (val error well below chance) in "
                                          "about 2 min on 2 CPU cores"))
    announce("AlexNet (Krizhevsky et al. 2012)",
             dict(cfg, data=data_desc, device=device, seed=args.seed,
                  data_prep_seconds=round(t_data.seconds, 1),
                  **({"ranks": f"{world} ({dist.get_backend()}), batch {per_rank} per rank"}
                     if args.distributed else {})), scaled)

    train_set.transform = train_tf
    # in a process group the loaders shard every batch across the ranks (num_replicas, rank)
    loader = data.DataLoader(train_set, batch_size=per_rank, shuffle=True,
                             num_workers=cfg["workers"], drop_last=True, seed=args.seed,
                             device=device)
    val_set.transform = centre_tf
    val_loader = data.DataLoader(val_set, batch_size=per_rank * 2,
                                 num_workers=cfg["workers"], seed=args.seed, device=device)

    arch_kw = dict(width=cfg["model_width"], input_size=cfg["input_size"], init=cfg["init"],
                   lrn=cfg["lrn"], overlap_pool=cfg["overlap_pool"], dropout=cfg["dropout"])
    if cfg["arch"] == "alexnet_one_gpu":
        model = models.alexnet_one_gpu(num_classes=num_classes, **arch_kw)
    else:
        model = models.alexnet(num_classes=num_classes, towers=cfg["towers"], **arch_kw)
    model.to(device)
    # the model that trains: DDP broadcasts rank 0's weights now and averages the gradients;
    # `model` itself is what checkpoints hold (the same keys as a single-process run)
    net = DistributedDataParallel(model) if args.distributed else model
    if rank:  # each rank its own dropout masks
        minidl.manual_seed(int(np.random.SeedSequence([args.seed, rank]).generate_state(1)[0]))
    print(f"model: {model.num_parameters():,} parameters, feature map "
          f"{model.feature_size}x{model.feature_size} at fc6")
    opt = optim.SGD(model.parameters(), lr=cfg["lr"], momentum=0.9, weight_decay=5e-4,
                    style="paper")
    sched = optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min", factor=0.1,
                                                 patience=cfg["patience"],
                                                 min_lr=cfg["plateau_min_lr"])
    ckpt = os.path.join(args.out, "checkpoint.npz")
    log_path = os.path.join(args.out, "log.jsonl")
    start_epoch, step, train_seconds = 0, 0, 0.0
    if args.resume is not None:
        path = args.resume or ckpt
        extra = load_checkpoint(path, model, opt, sched, loader)
        states = extra.get("rank_random_states")
        if args.distributed and states and len(states) == world:
            minidl.random.set_state(states[rank])  # every rank continues its own stream
        start_epoch, step = int(extra["epoch"]), int(extra["step"])
        train_seconds = float(extra.get("train_seconds", 0.0))
        print(f"resumed from {path} at epoch {start_epoch} (step {step})")
    elif os.path.exists(log_path) and rank == 0:
        os.remove(log_path)  # a fresh run starts a fresh log
    log = EpochLog(log_path)

    batch_times = []

    def on_step(info):
        batch_times.append(time.perf_counter())

    val = None
    for epoch in range(start_epoch, cfg["epochs"]):
        batch_times.clear()
        batch_times.append(time.perf_counter())
        tr = train_one_epoch(net, loader, opt, F.cross_entropy, device, epoch=epoch,
                             start_step=step, on_step=on_step, progress=True)
        step = tr["step"]
        train_seconds += tr["time"]
        val = evaluate(net, val_loader, device)
        sched.step(val["top1"])
        per_batch = float(np.median(np.diff(batch_times))) if len(batch_times) > 1 else None
        if rank == 0:
            log.append(epoch=epoch + 1, step=step, lr=tr["lr"], train_loss=tr["loss"],
                       train_top1=tr["top1"], train_top5=tr["top5"], val_loss=val["loss"],
                       val_top1=val["top1"], val_top5=val["top5"], epoch_seconds=tr["time"],
                       seconds_per_batch=per_batch)
        print(f"epoch {epoch + 1:3d}/{cfg['epochs']}  lr {tr['lr']:.4g}  train loss "
              f"{tr['loss']:.3f} top-1 err {tr['top1']:.3f}  |  val (centre crop) loss "
              f"{val['loss']:.3f} top-1 err {val['top1']:.3f} top-5 err {val['top5']:.3f}  |  "
              f"{tr['time']:.0f} s, {per_batch or float('nan'):.3f} s/batch "
              f"(elapsed {time.perf_counter() - t_start:.0f} s)")
        sys.stdout.flush()
        # every rank's dropout stream (a collective: all ranks call it); rank 0 writes
        states = dist.all_gather_object(minidl.random.get_state()) if args.distributed \
            else None
        if rank == 0:
            save_checkpoint(ckpt, model, opt, sched, loader, epoch=epoch + 1, step=step,
                            train_seconds=train_seconds, rank_random_states=states)

    png = None
    if rank == 0:
        png = plot_curves(log_path, os.path.join(args.out, "curves.png"),
                          title="AlexNet" + (" (paper configuration)" if args.paper else
                                             " (scaled, CPU)"))
    if val is None:  # resumed a finished run: evaluate the loaded weights
        val = evaluate(net, val_loader, device)
    centre = val
    with Stopwatch() as t_eval:
        if args.no_ten_crop:
            final = centre
        else:
            val_set.transform = ten_tf
            ten_loader = data.DataLoader(val_set, batch_size=max(1, per_rank // 4),
                                         num_workers=cfg["workers"], seed=args.seed,
                                         device=device)
            final = evaluate(net, ten_loader, device, ten_crop=True)
    total = time.perf_counter() - t_start
    records = log.records()
    per_batch = [r["seconds_per_batch"] for r in records if r.get("seconds_per_batch")]
    results = {
        "experiment": "alexnet_imagenet",
        "paper_claim": PAPER_CLAIM,
        "config": cfg, "paper_config": bool(args.paper), "data": data_desc,
        "val_top1_error": final["top1"], "val_top5_error": final["top5"],
        "val_eval": "centre crop" if args.no_ten_crop else "ten-crop",
        "val_centre_top1_error": centre["top1"], "val_centre_top5_error": centre["top5"],
        "train_top1_error": records[-1]["train_top1"] if records else None,
        "chance_top1_error": 1.0 - 1.0 / num_classes,
        "epochs": cfg["epochs"], "steps": step, "parameters": model.num_parameters(),
        "seconds_total": total, "seconds_data_prep": t_data.seconds,
        "seconds_training": train_seconds, "seconds_final_eval": t_eval.seconds,
        "seconds_per_batch_median": float(np.median(per_batch)) if per_batch else None,
        "curves_png": png,
        "distributed": ({"world_size": world, "backend": dist.get_backend(),
                         "batch_per_rank": per_rank} if args.distributed else None),
    }
    if args.distributed:
        dist.destroy_process_group()
    if rank != 0:
        return results
    write_results(args.out, results)
    print_table(["", "top-1 error", "top-5 error"], [
        ["this run, val (" + results["val_eval"] + ")", final["top1"], final["top5"]],
        ["this run, val (centre crop)", centre["top1"], centre["top5"]],
        ["chance", 1.0 - 1.0 / num_classes, max(0.0, 1.0 - 5.0 / num_classes)],
        ["paper, ILSVRC-2012 val", PAPER_CLAIM["top1_error"], PAPER_CLAIM["top5_error"]],
    ], title=f"\nsummary ({'paper configuration' if args.paper else 'scaled configuration'}; "
             f"{total:.0f} s total, {t_data.seconds:.0f} s data preparation, "
             f"{results['seconds_per_batch_median'] or float('nan'):.3f} s per training batch)")
    return results


if __name__ == "__main__":
    main()
