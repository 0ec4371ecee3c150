"""ReLU vs PReLU (channel-shared and channel-wise) on the 14-layer model (PReLU paper, Tables 1-2).

Paper claims: replacing ReLU by PReLU in the 14-layer model of Table 1 lowers the 10-view
ImageNet error from 33.82/13.34 (ReLU) to 32.71/12.87 (channel-shared) and 32.64/12.75
(channel-wise) top-1/top-5, at a negligible number of extra parameters; and the learned slopes
follow a pattern (Table 1): conv1's are large (0.681 shared / 0.596 channel-wise mean), the
deeper conv layers' smaller, the fc layers' small (~0.03-0.07).

This script trains the 14-layer model (2x2 convs, SPP {6,3,2,1}) three times — activation
"relu", "prelu_shared", "prelu" — with the same seed, data and SGD settings (momentum 0.9,
weight decay 5e-4 on weights but NOT on the slopes, as the paper says; slopes start at 0.25),
and reports the validation errors and the learned slope of every layer beside Table 1.

Scaled down for a CPU (announced at the start): channel widths x1/8, 96x96 crops of 108-px
generated shapes (10 classes), a few epochs. ``--paper`` uses the full width and 224 crops.

Writes results.json (val_top1_error / val_top5_error per activation, slopes per layer,
Table 1's slopes), slopes.png (learned slope per layer, beside the paper's), curves.png.
"""
import copy
import os
import time

import numpy as np

from _common import announce, make_parser, plot_bars, plot_lines, print_table, setup, \
    write_results
from _common import existing_dir, positive_float, positive_int, probability  # argparse types

import minidl
import minidl.functional as F
from minidl import data, models, optim
from minidl.data import transforms as T
from minidl.train import evaluate, train_one_epoch

# Table 1: learned slopes, (channel-shared, channel-wise mean)
TABLE1 = {"conv1": (0.681, 0.596), "conv2_1": (0.103, 0.321), "conv2_2": (0.099, 0.204),
          "conv2_3": (0.228, 0.294), "conv2_4": (0.561, 0.464), "conv3_1": (0.126, 0.196),
          "conv3_2": (0.089, 0.152), "conv3_3": (0.124, 0.145), "conv3_4": (0.062, 0.124),
          "conv3_5": (0.008, 0.134), "conv3_6": (0.210, 0.198), "fc1": (0.063, 0.074),
          "fc2": (0.031, 0.075)}
PAPER_CLAIM = {"source": "He et al. 2015, Table 2 (14-layer model, ImageNet val, 10 views)",
               "top1_error": {"relu": 0.3382, "prelu_shared": 0.3271, "prelu": 0.3264},
               "top5_error": {"relu": 0.1334, "prelu_shared": 0.1287, "prelu": 0.1275},
               "table1_slopes_shared_channelwise": TABLE1}
ACTS = ("relu", "prelu_shared", "prelu")
CLAIM = ("channel-wise PReLU beats ReLU, channel-shared PReLU at least matches it, and the "
         "learned slopes follow Table 1: conv1's well above its 0.25 start and falling with "
         "depth")
CONV1_MIN = 0.35        # "well above 0.25": conv1's slope (shared, and channel-wise mean)


def _stage_mean(slopes, prefix):
    v = [m for name, (m, _) in slopes.items() if name.startswith(prefix)]
    return float(np.mean(v)) if v else float("nan")


def verdict(runs):
    """The rule: (1) channel-wise PReLU's final validation top-1 error < ReLU's; (2) shared
    PReLU's <= ReLU's; (3) conv1's learned slope >= CONV1_MIN in both PReLU nets; (4) in both,
    the slopes fall with depth: conv1 > mean of conv2_x > mean of conv3_x (Table 1's stage
    means: shared 0.681 > 0.248 > 0.103, channel-wise 0.596 > 0.321 > 0.158)."""
    e = {a: runs[a]["val_top1_error"] for a in ACTS}
    out = {"channelwise_beats_relu": bool(e["prelu"] < e["relu"]),
           "shared_at_least_relu": bool(e["prelu_shared"] <= e["relu"])}
    c1, falls = {}, {}
    for a in ("prelu_shared", "prelu"):
        sl = runs[a]["slopes"]
        conv1, s2, s3 = sl["conv1"][0], _stage_mean(sl, "conv2_"), _stage_mean(sl, "conv3_")
        c1[a] = conv1
        falls[a] = {"conv1": conv1, "conv2_mean": s2, "conv3_mean": s3,
                    "fc_mean": _stage_mean(sl, "fc"), "falls": bool(conv1 > s2 > s3)}
    out["conv1_slope"] = c1
    out["conv1_well_above_start"] = bool(all(v >= CONV1_MIN for v in c1.values()))
    out["stage_means"] = falls
    out["slopes_fall_with_depth"] = bool(all(f["falls"] for f in falls.values()))
    out["reproduced"] = bool(out["channelwise_beats_relu"] and out["shared_at_least_relu"]
                             and out["conv1_well_above_start"]
                             and out["slopes_fall_with_depth"])
    return out


def parse_args(argv=None):
    p = make_parser(__doc__, "runs/prelu_study")
    p.add_argument("--data", type=existing_dir, default=None, help="ImageNet-style folder with train/ and val/")
    p.add_argument("--data-root", default=None, help="cache folder of the generated set")
    p.add_argument("--epochs", type=positive_int, default=None)
    p.add_argument("--batch-size", type=positive_int, default=None)
    p.add_argument("--lr", type=positive_float, default=0.01)
    p.add_argument("--dropout", type=probability, default=None,
                   help="drop probability in fc1/fc2 [0.5 with --paper, 0 on the CPU budget]")
    p.add_argument("--width", type=positive_float, default=None, help="channel multiplier [1/8]")
    p.add_argument("--input-size", type=positive_int, default=None, help="crop side [96]")
    p.add_argument("--n-per-class", type=positive_int, default=None)
    g = p.add_argument_group("the paper's recipe (all on with --paper)")
    g.add_argument("--scale-jitter", type=positive_int, nargs=2, metavar=("MIN", "MAX"), default=None,
                   help="training images resized to a shorter side drawn from [MIN, MAX] "
                        "before the random crop [paper: 256 512]")
    g.add_argument("--colour-aug", action="store_true",
                   help="random colour altering (fancy PCA of the RGB values)")
    g.add_argument("--pixel-mean", action="store_true",
                   help="subtract the per-pixel mean image (else per-channel standardization)")
    g.add_argument("--plateau", action="store_true",
                   help="lr /10 when the validation error plateaus, down to lr/100 "
                        "(1e-2 -> 1e-3 -> 1e-4)")
    g.add_argument("--test-scales", type=positive_int, nargs="+", default=None,
                   help="also evaluate with 10 views at each of these scales and densely "
                        "(fully convolutional, + flips) [paper: 256 384 480]")
    args = p.parse_args(argv)
    if args.paper:
        args.scale_jitter = args.scale_jitter or [256, 512]
        args.colour_aug = args.pixel_mean = args.plateau = True
        args.test_scales = args.test_scales or [256, 384, 480]
    if args.scale_jitter and not 0 < args.scale_jitter[0] <= args.scale_jitter[1]:
        p.error(f"--scale-jitter needs 0 < MIN <= MAX, got {args.scale_jitter}")
    return args


def make_data(args, size, image):
    """(train, val, description). Training: [scale jitter] -> random crop -> mirror ->
    [colour altering] -> per-pixel mean or per-channel standardization. Validation: shorter
    side ``image``, centre ``image`` square (the whole image the test-time methods resize),
    then the centre ``size`` crop for the per-epoch check."""
    if args.data:
        tr = data.ImageFolder(os.path.join(args.data, "train"))
        va = data.ImageFolder(os.path.join(args.data, "val"))
        desc = f"{args.data} ({len(tr)} train / {len(va)} val)"
    else:
        n = args.n_per_class or (4 if args.smoke else 260)
        tr = data.GeneratedShapes(args.data_root, "train", n_per_class=n, image_size=image,
                                  seed=args.seed)
        va = data.GeneratedShapes(args.data_root, "val", n_per_class=2 if args.smoke else 50,
                                  image_size=image, seed=args.seed)
        desc = f"GeneratedShapes {image} px, {len(tr)} train / {len(va)} val"
    base = [T.Resize(image), T.CenterCrop(image), T.ToArray()]
    mean, cov = T.rgb_covariance(tr, transform=T.Compose(base), n=500)
    if args.pixel_mean:   # the per-pixel mean of the training crops (size x size)
        norm = T.SubtractMean(T.compute_mean_image(
            tr, transform=T.Compose(base + [T.CenterCrop(size)]), n=2000))
    else:
        norm = T.Normalize(mean, np.sqrt(np.diag(cov)))
    if args.scale_jitter:
        lo, hi = args.scale_jitter
        if lo < size:
            raise SystemExit(f"error: --scale-jitter {lo} {hi}: the shorter side must be at "
                             f"least the crop ({size})")
        train_tf = [T.ScaleJitter(lo, hi), T.RandomCrop(size), T.ToArray()]
    else:
        train_tf = base + [T.RandomCrop(size)]
    train_tf.append(T.RandomHorizontalFlip())
    if args.colour_aug:
        eigvals, eigvecs = np.linalg.eigh(cov)
        train_tf.append(T.FancyPCA(np.clip(eigvals[::-1], 0, None), eigvecs[:, ::-1]))
    tr.transform = T.Compose(train_tf + [norm])
    va.transform = T.Compose(base + [T.CenterCrop(size), norm])
    whole = None
    if args.test_scales:   # the same validation images, whole, for the test-time methods
        whole = copy.copy(va)
        whole.transform = T.Compose(base + [norm])   # the mean image resized to the image
    return tr, va, whole, desc


def recipe_of(args):
    """The parts of the paper's recipe this run uses (printed and in results.json)."""
    return {"scale_jitter": args.scale_jitter, "colour_aug": bool(args.colour_aug),
            "pixel_mean": bool(args.pixel_mean), "plateau_lr": bool(args.plateau),
            "test_scales": args.test_scales}


def slopes_of(model):
    """{layer: (mean slope, all slopes)} for the PReLU layers (empty for ReLU)."""
    out = {}
    for layer, act in model.activations():
        w = getattr(act, "weight", None)
        if w is not None:
            v = minidl.backend.to_numpy(w.data).astype(float).ravel()
            out[layer] = (float(v.mean()), v.tolist())
    return out


def main(argv=None):
    args = parse_args(argv)
    device = setup(args)
    dropout = args.dropout if args.dropout is not None else (0.5 if args.paper else 0.0)
    width = args.width or (1.0 if args.paper else (1 / 16 if args.smoke else 1 / 8))
    size = args.input_size or (224 if args.paper else (72 if args.smoke else 96))
    image = 256 if args.paper else size + size // 8
    epochs = args.epochs or (1 if args.smoke else (80 if args.paper else 6))
    bs = args.batch_size or (128 if args.paper else (8 if args.smoke else 32))
    tr, va, whole, desc = make_data(args, size, image)
    num_classes = len(tr.classes)
    announce("ReLU vs PReLU, 14-layer model (PReLU paper Tables 1-2)", {
        "data": desc, "width": width, "input": size, "epochs": epochs, "batch": bs,
        "lr": args.lr, "dropout": dropout, "device": device,
        "recipe": recipe_of(args)},
        None if args.paper else f"channel widths x{width:g}, {size}x{size} inputs, {epochs} "
                                f"epochs on the generated set, dropout {dropout:g} (paper 0.5); "
                                f"the default buys the early part of training, where PReLU's "
                                f"faster start shows, in about 2 min on 2 CPU cores")
    loader = data.DataLoader(tr, batch_size=bs, shuffle=True, drop_last=True, seed=args.seed,
                             device=device)
    val_loader = data.DataLoader(va, batch_size=2 * bs, device=device)
    runs = {}
    for act in ACTS:
        minidl.manual_seed(args.seed)
        model = models.prelu_net14(activation=act, num_classes=num_classes,
                                   width=width, dropout=dropout).to(device)
        # weight decay on the weights, none on the PReLU slopes (the paper's rule)
        opt = optim.SGD(optim.decay_groups(model, 5e-4, no_decay=("prelu",)), lr=args.lr,
                        momentum=0.9)
        # the paper: 1e-2 -> 1e-3 -> 1e-4 when the error plateaus
        plateau = optim.lr_scheduler.ReduceLROnPlateau(
            opt, factor=0.1, patience=2, min_lr=args.lr / 100) if args.plateau else None
        loader.set_epoch(0)
        hist, t0, step = [], time.perf_counter(), 0
        for epoch in range(epochs):
            r = train_one_epoch(model, loader, opt, F.cross_entropy, device, epoch=epoch,
                                start_step=step, progress=False)
            step = r["step"]
            v = evaluate(model, val_loader, device)
            if plateau is not None:
                plateau.step(v["top1"])
            hist.append({"epoch": epoch + 1, "train_top1": r["top1"], "val_top1": v["top1"],
                         "val_top5": v["top5"], "train_loss": r["loss"], "lr": r["lr"]})
            print(f"{act:13s} epoch {epoch + 1}/{epochs}: train err {r['top1']:.3f}, val err "
                  f"{v['top1']:.3f} / {v['top5']:.3f} ({time.perf_counter() - t0:.0f} s)")
        runs[act] = {"history": hist, "val_top1_error": hist[-1]["val_top1"],
                     "val_top5_error": hist[-1]["val_top5"],
                     "parameters": model.num_parameters(), "slopes": slopes_of(model),
                     "seconds": time.perf_counter() - t0}
        if whole is not None:   # the paper's test: 10 views at several scales; dense + flips
            wl = data.DataLoader(whole, batch_size=bs, device=device)
            scales = tuple(args.test_scales)
            mv = evaluate(model, wl, device, ten_crop_scales=scales, crop_size=size)
            de = evaluate(model, wl, device, dense_scales=scales, flip=True)
            runs[act]["test_time"] = {
                "scales": list(scales), "ten_view_top1_error": mv["top1"],
                "ten_view_top5_error": mv["top5"], "dense_top1_error": de["top1"],
                "dense_top5_error": de["top5"]}
            print(f"{act:13s} 10 views at scales {list(scales)}: top-1/top-5 error "
                  f"{mv['top1']:.3f} / {mv['top5']:.3f}; dense + flips: {de['top1']:.3f} / "
                  f"{de['top5']:.3f}")
    layers = list(TABLE1)
    plot_lines(os.path.join(args.out, "curves.png"),
               {f"{a} val": ([h["epoch"] for h in runs[a]["history"]],
                             [h["val_top1"] for h in runs[a]["history"]]) for a in ACTS}
               | {f"{a} train": ([h["epoch"] for h in runs[a]["history"]],
                                 [h["train_top1"] for h in runs[a]["history"]]) for a in ACTS},
               "epoch", "top-1 error", "ReLU vs PReLU, 14-layer model")
    groups = {}
    for a, col in (("prelu_shared", 0), ("prelu", 1)):
        groups[f"{a} (this run)"] = (layers, [runs[a]["slopes"].get(n, (np.nan,))[0]
                                             for n in layers])
        groups[f"{a} (paper, Table 1)"] = (layers, [TABLE1[n][col] for n in layers])
    plot_bars(os.path.join(args.out, "slopes.png"), groups, "learned slope a (mean per layer)",
              "PReLU slopes per layer (init 0.25)")
    results = {"experiment": "prelu_study", "paper_claim": PAPER_CLAIM, "data": desc,
               "width": width, "input_size": size, "epochs": epochs, "dropout": dropout,
               "recipe": recipe_of(args),
               "val_top1_error": {a: runs[a]["val_top1_error"] for a in ACTS},
               "val_top5_error": {a: runs[a]["val_top5_error"] for a in ACTS},
               "runs": runs}
    v = verdict(runs)
    results.update(claim=CLAIM, reproduced=v["reproduced"], verdict=v,
                   rule="channel-wise val top-1 < ReLU's; shared <= ReLU's; conv1 slope >= "
                        f"{CONV1_MIN} in both PReLU nets; conv1 > mean conv2_x > mean conv3_x "
                        "slopes in both")
    write_results(args.out, results)
    print_table(["activation", "params", "val top-1 err", "val top-5 err", "paper top-1",
                 "seconds"],
                [[a, runs[a]["parameters"], runs[a]["val_top1_error"],
                  runs[a]["val_top5_error"], PAPER_CLAIM["top1_error"][a], runs[a]["seconds"]]
                 for a in ACTS], title="\nsummary")
    print_table(["layer", "shared (run)", "shared (paper)", "channel-wise mean (run)",
                 "channel-wise (paper)"],
                [[n, runs["prelu_shared"]["slopes"].get(n, (float("nan"),))[0], TABLE1[n][0],
                  runs["prelu"]["slopes"].get(n, (float("nan"),))[0], TABLE1[n][1]]
                 for n in layers], title="\nlearned slopes (Table 1)")
    print(f"claim: {CLAIM}\nreproduced: {v['reproduced']} "
          + ", ".join(f"{k} {v[k]}" for k in ("channelwise_beats_relu", "shared_at_least_relu",
                                                "conv1_well_above_start",
                                                "slopes_fall_with_depth")))
    return results


if __name__ == "__main__":
    main()
