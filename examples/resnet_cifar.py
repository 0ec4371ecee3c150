"""Plain vs residual nets on CIFAR-10 (ResNet paper, section 4.2, Figures 6-7, Table 6).

Paper claims: (Figure 6) deeper PLAIN nets have HIGHER training error (the degradation problem:
plain-56 trains worse than plain-20, plain-110 stays above 60%), while deeper RESIDUAL nets
have lower error (ResNet-20/32/44/56/110: 8.75/7.51/7.17/6.97/6.43% test error, Table 6);
(Figure 7) the standard deviation of the layer responses (3x3 conv -> BN, before the addition
and ReLU) is smaller in ResNets than in their plain twins; ResNet-110 needs a warm-up at
lr 0.01 until the training error is below 80% (~400 iterations), then 0.1.

This script trains the CIFAR nets of depth 6n+2 (``minidl.models.cifar_resnet``; option-A
shortcuts, so plain and residual twins have identical parameters) at ``--depths``, each as a
plain net and as a ResNet, with the paper's recipe (SGD momentum 0.9, wd 1e-4, lr 0.1 /10 at
50% and 75% of the iterations, batch 128, pad-4 random crops + flips, per-pixel mean
subtracted), records the training-error curves, measures the layer-response std on a
validation batch at the end, and evaluates the validation error. A depth >= 110 gets the
warm-up (lr 0.01 until the batch training error < 0.8, then 0.1).

Data: CIFAR-10 with ``--data DIR`` (the cifar-10-batches-py folder; 45k/5k train/val split
as the paper), else minidl's GeneratedShapes at 32x32. The default CPU budget (printed at the
start) trains depths 8 and 32 for 400 iterations at batch 32, lr 0.025 (the paper's 0.1 at
batch 128, scaled linearly with the batch): enough to see the training curves separate both
ways, far from the paper's 64k iterations. ``--paper`` runs depths
20, 32, 44, 56, 110 for 64k iterations at batch 128.

Writes results.json (per net: val_top1_error, val_top5_error, final training error, the
response std per layer), train_error.png (Figure 6), response_std.png (Figure 7).
"""
import argparse
import os
import time

import numpy as np

from _common import announce, make_parser, plot_lines, print_table, setup, write_results
from _common import existing_dir, positive_float, positive_int  # argparse types

import minidl
import minidl.functional as F
from minidl import data, models, optim
from minidl.data import transforms as T
from minidl.train import NonFiniteLossError, evaluate, train_one_epoch

PAPER_CLAIM = {"source": "He et al. 2015 (Deep Residual Learning), Table 6 and Figures 6-7",
               "test_error": {"resnet20": 0.0875, "resnet32": 0.0751, "resnet44": 0.0717,
                              "resnet56": 0.0697, "resnet110": 0.0643},
               "claim": "deeper plain nets have higher training error; deeper ResNets lower; "
                        "ResNet responses have smaller std than plain ones"}


def resnet_depth(text):
    """argparse type: a CIFAR ResNet depth 6n + 2 with n >= 1 (20, 32, 44, 56, 110, ...)."""
    d = positive_int(text)
    if (d - 2) % 6 or d < 8:
        raise argparse.ArgumentTypeError(f"must be a depth 6n + 2 (20, 32, 44, 56, 110, ...), "
                                         f"got {text!r}")
    return d


CLAIM = ("the deeper plain net trains worse than the shallower one AND the deeper ResNet trains "
         "better than the shallower ResNet; layer responses have smaller std with shortcuts")


def verdict(runs, depths):
    """The rule, between the shallowest and the deepest depth run: (1) plain-deep's final
    training error (running mean of the last iterations) > plain-shallow's; (2) ResNet-deep's
    < ResNet-shallow's; (3) at every depth the ResNet's mean response std < the plain twin's.
    Parts that lack their nets (``--no-plain``, one depth) are None and the claim is not
    reproduced."""
    lo, hi = min(depths), max(depths)
    err = {n: r["final_train_error"] for n, r in runs.items()}
    std = {n: float(np.mean(r["response_std"])) for n, r in runs.items()}

    def cmp(a, b):
        return bool(err[a] > err[b]) if a in err and b in err and lo != hi else None

    out = {"shallow": lo, "deep": hi,
           "plain_deeper_worse": cmp(f"plain-{hi}", f"plain-{lo}"),
           "resnet_deeper_better": cmp(f"resnet-{lo}", f"resnet-{hi}")}
    pairs = [d for d in depths if f"plain-{d}" in std and f"resnet-{d}" in std]
    out["smaller_std_with_shortcuts"] = (
        bool(all(std[f"resnet-{d}"] < std[f"plain-{d}"] for d in pairs)) if pairs else None)
    out["reproduced"] = bool(out["plain_deeper_worse"] and out["resnet_deeper_better"]
                             and out["smaller_std_with_shortcuts"])
    return out


def parse_args(argv=None):
    p = make_parser(__doc__, "runs/resnet_cifar")
    p.add_argument("--data", type=existing_dir, default=None, help="CIFAR-10 folder (cifar-10-batches-py)")
    p.add_argument("--data-root", default=None, help="cache folder of the generated set")
    p.add_argument("--depths", type=resnet_depth, nargs="+", default=None,
                   help="depths 6n+2 to train [8 32; paper: 20 32 44 56 110; Table 6 also "
                        "has 1202 (19.4M parameters): --paper --depths 1202]")
    p.add_argument("--iters", type=positive_int, default=None, help="iterations per net [400; paper 64000]")
    p.add_argument("--batch-size", type=positive_int, default=None,
                   help="batch size [32; paper 128]")
    p.add_argument("--lr", type=positive_float, default=None,
                   help="initial learning rate [0.1 x batch / 128: the paper's 0.1 at batch "
                        "128, scaled linearly with the batch]")
    p.add_argument("--n-per-class", type=positive_int, default=None,
                   help="generated training images per class [500]")
    p.add_argument("--no-plain", action="store_true", help="train only the residual nets")
    p.add_argument("--warmup", choices=("auto", "on", "off"), default="auto",
                   help="lr/10 until the training error < 80%% (auto: for depth >= 110)")
    return p.parse_args(argv)


def _has_test_batch(root):
    return any(os.path.isfile(os.path.join(d, "test_batch"))
               for d in (root, os.path.join(root, "cifar-10-batches-py")))


def make_data(args):
    """(train, val, test or None, description): CIFAR-10 (45k/5k split; the 10k test set when
    ``--data`` holds ``test_batch``) or the generated shapes (no test set)."""
    test = None
    if args.data:
        full = data.CIFAR10(args.data, train=True)
        order = np.random.default_rng(args.seed).permutation(len(full))
        n_val = len(full) // 10               # the paper's 45k/5k split of the 50k
        tr, va = data.Subset(full, order[:-n_val]), data.Subset(full, order[-n_val:])
        tr_base, va_base = full, full
        desc = f"CIFAR-10 from {args.data}, {len(tr)} train / {len(va)} val split"
        stats_src = _Split(tr, T.ToArray())   # arrays of the training split only
        if _has_test_batch(args.data):
            test = data.CIFAR10(args.data, train=False)
            desc += f", {len(test)} test images"
    else:
        n = args.n_per_class or (4 if args.smoke else 500)
        tr = data.GeneratedShapes(args.data_root, "train", n_per_class=n, image_size=32,
                                  seed=args.seed)
        va = data.GeneratedShapes(args.data_root, "val", n_per_class=2 if args.smoke else 50,
                                  image_size=32, seed=args.seed)
        tr_base, va_base = tr, va
        desc = f"GeneratedShapes 32x32, {len(tr)} train / {len(va)} val"
        stats_src = tr
    mean_image = T.compute_mean_image(stats_src, transform=T.ToArray(), n=2000)
    sub = T.SubtractMean(mean_image)  # per-pixel mean, as the paper
    train_tf = T.Compose([T.ToArray(), sub, T.RandomCrop(32, padding=4),
                          T.RandomHorizontalFlip()])
    val_tf = T.Compose([T.ToArray(), sub])
    if args.data:  # one underlying dataset: transform chosen per split through a wrapper
        tr, va = _Split(tr, train_tf), _Split(va, val_tf)
        if test is not None:
            test.transform = val_tf           # the training set's mean image, no augmentation
    else:
        tr_base.transform, va_base.transform = train_tf, val_tf
    return tr, va, test, desc


class _Split(data.Dataset):
    """A subset of a dataset with its own transform (CIFAR-10's 45k/5k split)."""

    def __init__(self, subset, transform):
        self.subset, self.transform = subset, transform

    def __len__(self):
        return len(self.subset)

    def getitem(self, index, rng=None):
        full = self.subset.dataset
        img, label = full.load(int(self.subset.indices[index]))
        return self.transform(img, rng=rng), label

    def __getitem__(self, index):
        return self.getitem(index)


def response_stds(model, x):
    """Std of each 3x3 conv's BN output (Figure 7's responses) on the batch ``x``."""
    stds = []
    handles = [m.register_forward_hook(
        lambda mod, inp, out: stds.append(float(minidl.backend.to_numpy(out.data).std())))
        for m in model.response_modules()]
    model.eval()
    with minidl.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return stds


def train_net(depth, plain, args, tr, va, device, iters, bs, test=None):
    """Train one net for ``iters`` iterations with :func:`minidl.train.train_one_epoch` (the
    multi-step schedule, and the warm-up for deep nets, stepped per iteration); evaluate it on
    the validation split (and on ``test``, CIFAR-10's test set, when given)."""
    minidl.manual_seed(args.seed)
    model = models.cifar_resnet(depth, plain=plain).to(device)
    opt = optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=1e-4)
    main_sched = optim.lr_scheduler.MultiStepLR(opt, [iters // 2, (3 * iters) // 4], 0.1)
    sched = main_sched
    warmup = args.warmup == "on" or (args.warmup == "auto" and depth >= 110)
    if warmup:  # the paper's warm-up for ResNet-110: 0.01 until train error < 80%
        sched = optim.lr_scheduler.Warmup(opt, factor=0.1,
                                          until=lambda err: err is not None and err < 0.8,
                                          after=main_sched)
    loader = data.DataLoader(tr, batch_size=bs, shuffle=True, drop_last=True, seed=args.seed,
                             device=device)
    errs, lrs, t0 = [], [], time.perf_counter()

    def on_step(info):  # the per-iteration curve of Figure 6; stop at the budget
        errs.append(info["top1"])
        lrs.append(info["lr"])
        return len(errs) >= iters

    while len(errs) < iters:
        try:
            train_one_epoch(model, loader, opt, F.cross_entropy, device, scheduler=sched,
                            scheduler_per="iter", progress=False, on_step=on_step,
                            start_step=len(errs))
        except NonFiniteLossError as e:
            raise SystemExit(f"error: depth {depth} plain={plain}: {e}") from None
    secs = time.perf_counter() - t0
    v = evaluate(model, data.DataLoader(va, batch_size=256, device=device), device)
    xv, _ = next(iter(data.DataLoader(va, batch_size=min(128, len(va)), device=device)))
    stds = response_stds(model, xv)
    warm = getattr(sched, "finished_at", None) if warmup else None
    r = {"train_errors": errs, "lrs": lrs, "seconds": secs, "val_top1_error": v["top1"],
         "val_top5_error": v["top5"], "response_std": stds, "warmup_finished_at": warm,
         "parameters": model.num_parameters()}
    if test is not None:  # Table 6's number: the single original 32x32 test image
        t = evaluate(model, data.DataLoader(test, batch_size=256, device=device), device)
        r.update(test_top1_error=t["top1"], test_top5_error=t["top5"], test_samples=t["samples"])
    return r


def choose_depths(args):
    """The depths to train: ``--depths`` (any 6n+2, Table 6's 1202 included), else the
    paper's 20-110 with ``--paper``, else the CPU default."""
    depths = args.depths or ([20, 32, 44, 56, 110] if args.paper else ([8, 14] if args.smoke
                                                                         else [8, 32]))
    for d in depths:
        if d < 8 or (d - 2) % 6:
            raise SystemExit(f"error: depth {d} is not 6n+2 with n >= 1 (20, 32, 44, 56, 110, "
                             f"1202, ...)")
    return list(depths)


def main(argv=None):
    args = parse_args(argv)
    device = setup(args)
    depths = choose_depths(args)
    iters = args.iters or (64000 if args.paper else (3 if args.smoke else 400))
    bs = args.batch_size or (128 if args.paper else (8 if args.smoke else 32))
    if args.lr is None:
        args.lr = 0.1 * bs / 128
    tr, va, test, desc = make_data(args)
    announce("Plain vs residual CIFAR nets (ResNet paper, section 4.2)", {
        "data": desc, "depths": depths, "iterations per net": iters, "batch": bs,
        "lr": f"{args.lr} (/10 at 50% and 75% of the iterations)", "device": device},
        None if args.paper else f"depths {depths}, {iters} iterations per net at batch {bs} "
                                f"(the paper: 64k iterations at batch 128); the default "
                                f"buys the start of Figure 6 in about 6 min on 2 CPU cores: "
                                f"curves that separate, far from converged")
    runs = {}
    for d in depths:
        for plain in ((False,) if args.no_plain else (True, False)):
            name = f"{'plain' if plain else 'resnet'}-{d}"
            r = train_net(d, plain, args, tr, va, device, iters, bs, test)
            runs[name] = r
            w = max(1, min(50, iters // 4))
            r["final_train_error"] = float(np.mean(r["train_errors"][-w:]))
            print(f"{name:11s} train err (last {w}) {r['final_train_error']:.3f}, val err "
                  f"{r['val_top1_error']:.3f}, mean response std "
                  f"{np.mean(r['response_std']):.3f}"
                  + (f", warm-up ended at iteration {r['warmup_finished_at']}"
                     if r["warmup_finished_at"] is not None else "")
                  + (f", test error {r['test_top1_error']:.4f} on {r['test_samples']} images"
                     if "test_top1_error" in r else "")
                  + f" ({r['seconds']:.0f} s)")
    w = max(1, min(50, iters // 4))
    plot_lines(os.path.join(args.out, "train_error.png"),
               {n: (range(w, len(r["train_errors"]) + 1),
                    np.convolve(r["train_errors"], np.ones(w) / w, mode="valid"))
                for n, r in runs.items()},
               "iteration", f"training error (running mean of {w})",
               "Plain vs residual (ResNet Fig. 6)")
    plot_lines(os.path.join(args.out, "response_std.png"),
               {n: (range(1, len(r["response_std"]) + 1), r["response_std"])
                for n, r in runs.items()},
               "layer index (3x3 conv, after BN)", "std of the response",
               "Layer responses (ResNet Fig. 7)")
    results = {"experiment": "resnet_cifar", "paper_claim": PAPER_CLAIM, "data": desc,
               "depths": depths, "iterations": iters, "batch_size": bs, "lr": args.lr,
               "warmup": {n: r["warmup_finished_at"] for n, r in runs.items()},
               "val_top1_error": {n: r["val_top1_error"] for n, r in runs.items()},
               "val_top5_error": {n: r["val_top5_error"] for n, r in runs.items()},
               "final_train_error": {n: r["final_train_error"] for n, r in runs.items()},
               **({"test_top1_error": {n: r["test_top1_error"] for n, r in runs.items()},
                   "test_top5_error": {n: r["test_top5_error"] for n, r in runs.items()}}
                  if test is not None else {}),
               "mean_response_std": {n: float(np.mean(r["response_std"]))
                                     for n, r in runs.items()},
               "runs": runs}
    v = verdict(runs, depths)
    results.update(claim=CLAIM, reproduced=v["reproduced"], verdict=v,
                   rule="shallowest vs deepest depth: plain-deep final training error > "
                        "plain-shallow's, ResNet-deep's < ResNet-shallow's, and at every depth "
                        "the ResNet's mean response std < the plain net's")
    write_results(args.out, results)
    print_table(["net", "params", "final train err", "val top-1 err", "mean response std",
                 "seconds"],
                [[n, r["parameters"], r["final_train_error"], r["val_top1_error"],
                  float(np.mean(r["response_std"])), r["seconds"]] for n, r in runs.items()],
                title="\nsummary")
    print(f"claim: {CLAIM}\nreproduced: {v['reproduced']} (plain deeper worse "
          f"{v['plain_deeper_worse']}, ResNet deeper better {v['resnet_deeper_better']}, "
          f"smaller std with shortcuts {v['smaller_std_with_shortcuts']})")
    return results


if __name__ == "__main__":
    main()
