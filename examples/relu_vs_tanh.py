"""ReLU vs tanh in a small CNN (AlexNet paper, section 3.1 and Figure 1).

Paper claim: "A four-layer convolutional neural network with ReLUs reaches a 25% training error
rate on CIFAR-10 six times faster than an equivalent network with tanh neurons." The paper
gives no details of that net and tuned the learning rate per activation ("the learning rates
for each network were chosen independently to make training as fast as possible").

This script trains the same 4-layer CNN twice, once with ReLU and once with tanh: three 5x5
conv layers (32, 32, 64 filters, each followed by the activation and 3x3 stride-2 max pooling)
and one fully connected layer, SGD with momentum 0.9, and reports the number of iterations
each needs to bring the training error (a running average over the last ``--window``
iterations) below ``--target``, and the ratio tanh / ReLU — the paper's "six times".

Data: CIFAR-10 with ``--data DIR`` (the cifar-10-batches-py folder), otherwise minidl's
GeneratedShapes at 32x32 (the default; the target error is then relative to that set, and the
scaled budget is printed at the start). Each activation gets its own learning rate
(``--lr-relu``, ``--lr-tanh``); ``--lrs`` runs a small sweep per activation and keeps the
fastest, as the paper did.

Input and initialization follow the AlexNet paper (the defaults): raw RGB values (0-255) minus
the training set's mean image, no other scaling ("we did not pre-process the images in any
other way"), and every weight drawn from N(0, 0.01^2), biases 0, in both nets. That is where
the paper's difference comes from: with inputs of a few tens and weights of 0.01, the first
layer's pre-activations are of order 1-10, where tanh saturates and ReLU does not.
``--input standardized --init he`` is the modern setup (per-channel standardized input, He
init with each activation's gain), under which the two train at about the same speed.

Writes results.json (iterations to target per activation, their ratio, final training and
validation errors), curves.png (training error vs iteration, the paper's Figure 1).
"""
import os
import time

import numpy as np

from _common import announce, input_normalization, make_parser, plot_lines, print_table, \
    setup, write_results
from _common import existing_dir, open_fraction, positive_float, positive_int  # argparse types

import minidl
import minidl.functional as F
from minidl import data, nn, optim
from minidl.data import transforms as T
from minidl.train import NonFiniteLossError, evaluate, train_one_epoch

PAPER_CLAIM = {"source": "Krizhevsky et al. 2012, Figure 1 (CIFAR-10, 4-layer CNN)",
               "target_train_error": 0.25, "tanh_over_relu_iterations": 6.0}


class FourLayerCNN(nn.Module):
    """conv5x5(32)-act-pool3/2, conv5x5(32)-act-pool3/2, conv5x5(64)-act-pool3/2, fc."""

    def __init__(self, activation="relu", num_classes=10, size=32, init="gaussian"):
        super().__init__()
        if init not in ("gaussian", "he"):
            raise ValueError(f"init must be 'gaussian' or 'he', got {init!r}")
        act = nn.ReLU if activation == "relu" else nn.Tanh
        layers = []
        c = 3
        for out in (32, 32, 64):
            layers += [nn.Conv2d(c, out, 5, padding=2), act(), nn.MaxPool2d(3, stride=2)]
            c = out
            size = (size - 3) // 2 + 1
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(c * size * size, num_classes)
        gain = "relu" if activation == "relu" else "tanh"
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                if init == "gaussian":   # the AlexNet paper's N(0, 0.01^2)
                    nn.init.normal_(m.weight, 0.0, 0.01)
                else:                    # He, with each activation's gain
                    nn.init.kaiming_normal_(m.weight, nonlinearity=gain if m is not self.fc
                                            else "linear")
                nn.init.zeros_(m.bias)

    def forward(self, x):
        return self.fc(self.features(x).flatten(1))


GRID = (0.001, 0.003, 0.01)         # the default learning-rate grid (per activation)
MIN_RATIO = 3.0                     # the rule: tanh needs >= 3x ReLU's iterations (paper: 6x)
CLAIM = ("ReLU reaches 25% training error at least 3x sooner than tanh (paper: 6x), each at its "
         "best learning rate from a small grid")


def parse_args(argv=None):
    p = make_parser(__doc__, "runs/relu_vs_tanh")
    p.add_argument("--data", type=existing_dir, default=None, help="CIFAR-10 folder (cifar-10-batches-py)")
    p.add_argument("--data-root", default=None, help="cache folder of the generated set")
    p.add_argument("--iters", type=positive_int, default=None,
                   help="the budget: iterations per run [800; paper 4000]")
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.add_argument("--target", type=open_fraction, default=None,
                   help="training-error target [0.25, the paper's]")
    p.add_argument("--window", type=positive_int, default=50,
                   help="iterations in the running average of the training error")
    p.add_argument("--lr-relu", type=positive_float, default=0.003)
    p.add_argument("--lr-tanh", type=positive_float, default=0.01)
    p.add_argument("--lrs", type=positive_float, nargs="*", default=None,
                   help="the learning-rate grid tried per activation; the fastest to the "
                        f"target is kept, as the paper chose them [{' '.join(map(str, GRID))}; "
                        "pass --lrs with no value to use --lr-relu / --lr-tanh only]")
    p.add_argument("--full-curves", action="store_true",
                   help="train every run for --iters iterations instead of stopping a run "
                        "once its running training error reaches the target (or once it has "
                        "used as many iterations as the fastest run of its activation so far)")
    p.add_argument("--n-per-class", type=positive_int, default=None,
                   help="generated training images per class [600]")
    p.add_argument("--input", choices=("raw", "standardized"), default="raw",
                   help="raw: 0-255 RGB values minus the mean image, as the AlexNet paper "
                        "(default); standardized: per-channel zero mean, unit variance")
    p.add_argument("--init", choices=("gaussian", "he"), default="gaussian",
                   help="gaussian: N(0, 0.01^2), as the AlexNet paper (default); he: He init "
                        "with each activation's gain")
    return p.parse_args(argv)


def make_data(args):
    aug = [T.RandomCrop(32, padding=2), T.RandomHorizontalFlip()]
    if args.data:
        tr = data.CIFAR10(args.data, train=True)
        va = data.CIFAR10(args.data, train=False)
        desc = f"CIFAR-10 from {args.data}"
    else:
        n = args.n_per_class or (6 if args.smoke else 600)
        tr = data.GeneratedShapes(args.data_root, "train", n_per_class=n, image_size=32,
                                  seed=args.seed)
        va = data.GeneratedShapes(args.data_root, "val", n_per_class=2 if args.smoke else 50,
                                  image_size=32, seed=args.seed)
        desc = f"GeneratedShapes 32x32, {len(tr)} train / {len(va)} val images"
    # the paper: raw RGB values minus the mean image (default), or standardized
    steps, norm = input_normalization(tr, args.input, n_mean=2000, n_cov=500)
    tr.transform = T.Compose(steps + [norm] + aug)
    va.transform = T.Compose(steps + [norm])
    return tr, va, desc


def train(activation, lr, args, tr, va, device, iters, stop_at=None):
    """Train for ``iters`` iterations (or until the running training error over ``window``
    iterations is <= ``target``, with ``stop_at=(target, window)``); returns per-iteration
    errors and the final val error."""
    minidl.manual_seed(args.seed)
    model = FourLayerCNN(activation, init=args.init).to(device)
    opt = optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    loader = data.DataLoader(tr, batch_size=min(args.batch_size, len(tr)), shuffle=True,
                             drop_last=True, seed=args.seed, device=device)
    errs, losses = [], []
    t0 = time.perf_counter()

    target, window = stop_at if stop_at else (None, None)

    def on_step(info):  # Figure 1's per-iteration curve; stop at the budget (or the target)
        errs.append(info["top1"])
        losses.append(info["loss"])
        if target is not None and len(errs) >= window and \
                sum(errs[-window:]) / window <= target:
            return True
        return len(errs) >= iters

    while len(errs) < iters:
        try:
            r = train_one_epoch(model, loader, opt, F.cross_entropy, device, progress=False,
                                on_step=on_step, start_step=len(errs))
            if r["stopped"] and len(errs) < iters:   # reached the target
                break
        except NonFiniteLossError as e:  # this learning rate diverged: no further progress
            losses.append(float(e.value))
            break
    seconds = time.perf_counter() - t0
    val = evaluate(model, data.DataLoader(va, batch_size=256, device=device), device)
    return {"errors": errs, "losses": losses, "seconds": seconds, "val_top1": val["top1"],
            "val_top5": val["top5"], "lr": lr}


def running(errs, window):
    c = np.cumsum(np.insert(np.asarray(errs, float), 0, 0.0))
    idx = np.arange(1, len(errs) + 1)
    lo = np.maximum(0, idx - window)
    return (c[idx] - c[lo]) / (idx - lo)


def iters_to(errs, target, window):
    """First iteration (1-based) whose running-average training error is <= target."""
    r = running(errs, window)
    hit = np.nonzero(r[window - 1:] <= target)[0] if len(r) >= window else []
    return int(hit[0] + window) if len(hit) else None


def main(argv=None):
    args = parse_args(argv)
    device = setup(args)
    iters = args.iters or (6 if args.smoke else (4000 if args.paper else 800))
    target = args.target if args.target is not None else 0.25
    window = min(args.window, max(1, iters // 3))
    tr, va, desc = make_data(args)
    if args.lrs is None:
        sweep = [0.005] if args.smoke else list(GRID)
    else:
        sweep = args.lrs or None          # `--lrs` alone: the two fixed rates
    announce("ReLU vs tanh, 4-layer CNN (AlexNet Figure 1)", {
        "data": desc, "iterations": iters, "batch": args.batch_size,
        "target train error": target, "running window": window, "input": args.input,
        "init": args.init,
        "lr": f"sweep {sweep}" if sweep else f"relu {args.lr_relu}, tanh {args.lr_tanh}",
        "device": device},
        None if args.paper or args.data else
        f"at most {iters} iterations per run on the 32x32 generated shapes set instead of "
        f"CIFAR-10 (pass --data DIR for CIFAR-10); the default buys the first ~8 epochs "
        f"of Figure 1's curves for 3 rates per activation in about 8 min on 2 CPU cores")
    runs, grid_log = {}, []
    for act in ("relu", "tanh"):
        lrs = sweep or [args.lr_relu if act == "relu" else args.lr_tanh]
        best = None
        for lr in lrs:
            # a run cannot be the fastest once it has used the fastest run's iterations, so
            # (unless --full-curves) it stops there: the choice is the same, the time is not
            n_best = best[1]["iters_to_target"] if best is not None else None
            cap = iters if args.full_curves or n_best is None else min(iters, n_best)
            r = train(act, lr, args, tr, va, device, cap,
                      stop_at=None if args.full_curves else (target, window))
            r["iters_to_target"] = iters_to(r["errors"], target, window)
            print(f"{act:5s} lr {lr:<7g} iterations to {target:.0%} training error: "
                  f"{r['iters_to_target']}  (final running error "
                  f"{running(r['errors'], window)[-1]:.3f}, val error {r['val_top1']:.3f}, "
                  f"{r['seconds']:.0f} s)")
            grid_log.append({"activation": act, "lr": lr, "iters_to_target":
                             r["iters_to_target"], "iterations_run": len(r["errors"]),
                             "seconds": r["seconds"]})
            key = (r["iters_to_target"] is None, r["iters_to_target"] or 0,
                   running(r["errors"], window)[-1])
            if best is None or key < best[0]:
                best = (key, r)
        runs[act] = best[1]
    n_relu, n_tanh = runs["relu"]["iters_to_target"], runs["tanh"]["iters_to_target"]
    if n_relu and n_tanh:
        ratio, note = n_tanh / n_relu, "exact"
    elif n_relu:
        ratio, note = iters / n_relu, "lower bound (tanh did not reach the target)"
    else:
        ratio, note = None, "ReLU did not reach the target: raise --iters or --target"
    # the rule: ReLU reached the target, and tanh needed at least MIN_RATIO times its
    # iterations (a lower bound counts when tanh never reached the target in the budget)
    reproduced = ratio is not None and ratio >= MIN_RATIO
    plot_lines(os.path.join(args.out, "curves.png"),
               {f"{a} (lr {runs[a]['lr']:g})": (range(1, len(runs[a]["errors"]) + 1),
                                                 running(runs[a]["errors"], window))
                for a in runs},
               "iteration", f"training error (running mean of {window})",
               title="ReLU vs tanh, 4-layer CNN (AlexNet Fig. 1)", hline=target)
    results = {
        "experiment": "relu_vs_tanh", "claim": CLAIM, "reproduced": bool(reproduced),
        "rule": f"ReLU reaches the target and tanh's iterations to it / ReLU's >= {MIN_RATIO:g} "
                "(tanh not reaching it within the budget gives the lower bound budget / ReLU's)",
        "lr_grid": sweep or [args.lr_relu, args.lr_tanh],
        "input": args.input, "init": args.init,
        "stopped_at_target": not args.full_curves,
        "grid_runs": grid_log,
        "paper_claim": PAPER_CLAIM, "data": desc,
        "target_train_error": target, "window": window, "iterations": iters,
        "iters_to_target": {a: runs[a]["iters_to_target"] for a in runs},
        "tanh_over_relu_iterations": ratio, "ratio_note": note,
        "lr": {a: runs[a]["lr"] for a in runs},
        "final_running_train_error": {a: float(running(runs[a]["errors"], window)[-1])
                                      for a in runs},
        "val_top1_error": {a: runs[a]["val_top1"] for a in runs},
        "val_top5_error": {a: runs[a]["val_top5"] for a in runs},
        "seconds": {a: runs[a]["seconds"] for a in runs},
        # the same ratio at other targets: how robust the comparison is to the choice
        "iters_to_targets": {f"{t:g}": {a: iters_to(runs[a]["errors"], t, window)
                                        for a in runs} for t in (0.8, 0.7, 0.6, 0.5, 0.4,
                                                                  0.3, 0.25)},
    }
    write_results(args.out, results)
    print_table(["activation", "lr", f"iters to {target:.0%}", "final train err",
                 "val top-1 err", "seconds"],
                [[a, runs[a]["lr"], runs[a]["iters_to_target"],
                  results["final_running_train_error"][a], runs[a]["val_top1"],
                  runs[a]["seconds"]] for a in runs], title="\nsummary")
    print(f"tanh / ReLU iterations to {target:.0%} training error: "
          f"{'n/a' if ratio is None else f'{ratio:.2f}'} ({note}); paper: 6 (CIFAR-10)")
    print(f"claim: {CLAIM}\nreproduced: {reproduced}")
    return results


if __name__ == "__main__":
    main()
