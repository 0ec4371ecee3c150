"""Xavier vs He initialization of deep plain ReLU nets (PReLU paper, section 2.2, Figures 2-3).

Paper claims: (Figure 2) a 22-layer ReLU net converges with both initializations, but the He
init ("0.5 n Var[w] = 1") starts reducing the error earlier than Xavier's ("n Var[w] = 1");
(Figure 3) a 30-layer ReLU net (27 conv + 3 fc, no batch norm) converges with the He init
and does not learn at all with Xavier's — its signal and gradients shrink by 1/2 per layer.

This script builds the 22-layer model B of Table 3 (``prelu_net_b``) and the 30-layer
extension of the 14-layer model (``prelu_net30``) with ReLU, each with both initializations,
and (1) measures at initialization, on one batch, the standard deviation of every layer's
response and the gradient norm of every layer's weights (the diminishing-gradient diagnosis),
(2) trains each for 1,200 iterations with the same SGD settings and records the training
error (the figures' curves), (3) decides the claim by a rule (``verdict``): the 30-layer net
trains with He's init and stalls with Xavier's; the 22-layer net trains with both, He first.

Scaled down for a CPU (announced at the start): channel widths x1/8 (32 channels in the last
stage; the depth — what the claim is about — is the paper's), 64x64 crops of 72x72 generated
shapes, 10 classes, SGD lr 0.003, momentum 0.9, batch 32. ``--paper`` uses the full widths and
224 crops (ImageNet-size compute).

Input (``--input``): by default the paper's range, raw 0-255 RGB values minus the mean image
(about [-128, 128]), with the He nets' fc layers drawn with the paper's footnote stds (0.01,
0.01, 0.001; ``fc_std`` of the models) so the softmax does not overflow, and the Xavier nets
Xavier everywhere. ``--input standardized`` (per-channel zero mean, unit variance) is the
modern alternative: there the 22-layer Xavier signal, 2^-11 of an input of std 1, is too weak
to train within the budget, so the 22-layer half of the claim fails.

Writes results.json (final training error per net and init, gradient-norm ratio first/last
layer, per-layer statistics), grad_norms.png, response_std.png, curves.png.
"""
import os
import time

import numpy as np

from _common import announce, input_normalization, make_parser, plot_lines, print_table, \
    setup, write_results
from _common import existing_dir, positive_float, positive_int, probability  # argparse types

import minidl
import minidl.functional as F
from minidl import data, models, optim
from minidl.data import transforms as T

PAPER_CLAIM = {"source": "He et al. 2015 (Delving Deep into Rectifiers), Figures 2-3",
               "claim": "22-layer: both inits converge, He earlier; 30-layer: He converges, "
                        "Xavier stalls completely"}

NETS = {"22-layer (model B)": models.prelu_net_b, "30-layer": models.prelu_net30}
CLAIM = ("30-layer ReLU net: He init trains (training error clearly below chance) while Xavier "
         "stalls within the same iterations; 22-layer net: both train, He sooner")
# the paper's footnote: fc stds for He-initialized nets on [-128, 128] pixels
PAPER_FC_STD = (0.01, 0.01, 0.001)
TRAINS_MARGIN = 0.15    # "trains": final running training error <= chance - 0.15
STALLS_MARGIN = 0.05    # "stalls": final running training error >= chance - 0.05


def first_below(errs, level, window):
    """First iteration (1-based) whose running mean over ``window`` iterations is <= level."""
    e = np.asarray(errs, float)
    if len(e) < window:
        return None
    r = np.convolve(e, np.ones(window) / window, mode="valid")
    hit = np.nonzero(r <= level)[0]
    return int(hit[0] + window) if len(hit) else None


def verdict(runs, chance, window):
    """The rule, from each run's final running training error and its first iteration below
    ``chance - TRAINS_MARGIN``: 30-layer He trains and Xavier stalls; 22-layer both train and
    He gets there first."""
    trains_at = chance - TRAINS_MARGIN
    out = {"trains_below": trains_at, "stalls_above": chance - STALLS_MARGIN}
    for label, r in runs.items():
        out[label] = {"final_train_error": r["final_train_error"],
                      "iterations_to_trains_level": first_below(r["train_errors"], trains_at,
                                                                window)}
    he30, xa30 = runs["30-layer, he"], runs["30-layer, xavier"]
    he22, xa22 = out["22-layer (model B), he"], out["22-layer (model B), xavier"]
    out["30_layer"] = bool(he30["final_train_error"] <= trains_at
                           and xa30["final_train_error"] >= chance - STALLS_MARGIN)
    n_he, n_xa = he22["iterations_to_trains_level"], xa22["iterations_to_trains_level"]
    both = (runs["22-layer (model B), he"]["final_train_error"] <= trains_at
            and runs["22-layer (model B), xavier"]["final_train_error"] <= trains_at)
    out["22_layer"] = bool(both and n_he is not None and n_xa is not None and n_he < n_xa)
    out["reproduced"] = out["30_layer"] and out["22_layer"]
    return out


def parse_args(argv=None):
    p = make_parser(__doc__, "runs/init_study")
    p.add_argument("--data", type=existing_dir, default=None,
                   help="ImageNet-style folder with train/ (default: generated shapes)")
    p.add_argument("--data-root", default=None, help="cache folder of the generated set")
    p.add_argument("--iters", type=positive_int, default=None, help="training iterations per run [1200]")
    p.add_argument("--batch-size", type=positive_int, default=32)
    p.add_argument("--lr", type=positive_float, default=None,
                   help="SGD learning rate (momentum 0.9) [0.003; paper 0.01]")
    p.add_argument("--dropout", type=probability, default=None,
                   help="drop probability in fc1/fc2 [0.5 with --paper, 0 on the CPU budget]")
    p.add_argument("--width", type=positive_float, default=None, help="channel multiplier [1/8: 32 channels in the last stage]")
    p.add_argument("--input-size", type=positive_int, default=None, help="crop side [64]")
    p.add_argument("--input", choices=("raw", "standardized"), default="raw",
                   help="raw: 0-255 values minus the mean image, the paper's range, with the "
                        "He nets' fc layers at std 0.01, 0.01, 0.001 (the paper's footnote; "
                        "default); standardized: per-channel zero mean, unit variance")
    return p.parse_args(argv)


def weight_layers(model):
    return model.weight_layers()


def diagnose(model, x, y):
    """Per weight layer: std of its output (the response) and the norm of its weight grad."""
    stds = {}
    handles = [m.register_forward_hook(
        lambda mod, inp, out, name=name: stds.__setitem__(name, float(out.numpy().std())))
        for name, m in weight_layers(model)]
    model.zero_grad()
    F.cross_entropy(model(x), y).backward()
    for h in handles:
        h.remove()
    names = [n for n, _ in weight_layers(model)]
    grads = [float(np.linalg.norm(m.weight.grad.numpy())) for _, m in weight_layers(model)]
    return names, [stds[n] for n in names], grads


def main(argv=None):
    args = parse_args(argv)
    device = setup(args)
    dropout = args.dropout if args.dropout is not None else (0.5 if args.paper else 0.0)
    width = args.width or (1.0 if args.paper else (1 / 32 if args.smoke else 1 / 8))
    size = args.input_size or (224 if args.paper else 64)
    iters = args.iters or (3 if args.smoke else (20000 if args.paper else 1200))
    lr = args.lr if args.lr is not None else (0.01 if args.paper else 0.003)
    image = 256 if args.paper else size + size // 8
    if args.data:
        tr = data.ImageFolder(os.path.join(args.data, "train"))
        desc = f"{args.data}/train ({len(tr)} images)"
    else:
        tr = data.GeneratedShapes(args.data_root, "train", n_per_class=4 if args.smoke else 300,
                                  image_size=image, seed=args.seed)
        desc = f"GeneratedShapes {image} px, {len(tr)} images"
    num_classes = len(tr.classes)
    # the paper's range, 0-255 minus the mean image (default), or standardized input
    base, norm = input_normalization(tr, args.input, [T.Resize(image), T.CenterCrop(image)],
                                     n_mean=300, n_cov=300)
    tr.transform = T.Compose(base + [norm, T.RandomCrop(size), T.RandomHorizontalFlip()])
    bs = min(args.batch_size, len(tr))
    announce("Xavier vs He init, deep plain ReLU nets (PReLU paper Figs. 2-3)", {
        "data": desc, "width": width, "input": f"{size} px, {args.input}",
        "iterations": iters, "batch": bs,
        "lr": lr, "dropout": dropout, "device": device},
        None if args.paper else f"channel widths x{width:g} (depths as in the paper), "
                                f"{size}x{size} inputs, {iters} iterations per run, dropout "
                                f"{dropout:g} (paper 0.5); the default buys 4 x 1,200 "
                                f"iterations (a small fraction of one ImageNet epoch of "
                                f"Figures 2-3) in about 8 min on 2 CPU cores: enough for He's "
                                f"nets to leave chance")
    probe_loader = data.DataLoader(tr, batch_size=bs, shuffle=True, seed=args.seed + 1,
                                   device=device)
    xp, yp = next(iter(probe_loader))

    results = {"experiment": "init_study", "paper_claim": PAPER_CLAIM, "data": desc,
               "width": width, "input_size": size, "input": args.input, "iterations": iters,
               "dropout": dropout,
               "lr": lr, "runs": {}}
    grad_series, std_series, curve_series = {}, {}, {}
    rows = []
    for net_name, fn in NETS.items():
        for init in ("he", "xavier"):
            minidl.manual_seed(args.seed)
            fc_std = PAPER_FC_STD if args.input == "raw" and init == "he" else None
            model = fn(activation="relu", init=init, num_classes=num_classes,
                       width=width, dropout=dropout, fc_std=fc_std).to(device)
            names, stds, grads = diagnose(model, xp, yp)
            label = f"{net_name}, {init}"
            grad_series[label] = (range(1, len(grads) + 1), grads)
            std_series[label] = (range(1, len(stds) + 1), stds)
            opt = optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
            loader = data.DataLoader(tr, batch_size=bs, shuffle=True, drop_last=True,
                                     seed=args.seed, device=device)
            errs, t0 = [], time.perf_counter()
            model.train()
            while len(errs) < iters:
                for x, y in loader:
                    out = model(x)
                    loss = F.cross_entropy(out, y)
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                    errs.append(float((out.numpy().argmax(1) != y.numpy()).mean()))
                    if len(errs) >= iters:
                        break
            secs = time.perf_counter() - t0
            w = max(1, min(50, iters // 3))
            smooth = np.convolve(errs, np.ones(w) / w, mode="valid")
            curve_series[label] = (range(w, len(errs) + 1), smooth)
            final = float(np.mean(errs[-w:]))
            ratio = grads[0] / grads[-2] if grads[-2] > 0 else float("inf")
            results["runs"][label] = {
                "layers": names, "response_std": stds, "grad_norm": grads,
                "grad_norm_first_over_last_conv_or_fc": ratio,
                "final_train_error": final, "train_errors": errs, "seconds": secs}
            rows.append([net_name, init, f"{stds[0]:.3g} -> {stds[-1]:.3g}",
                         f"{grads[0]:.3g} / {grads[-2]:.3g}", final, secs])
            print(f"{label}: response std conv1 {stds[0]:.3g} -> last {stds[-1]:.3g}; grad "
                  f"norm conv1 {grads[0]:.3g}, fc2 {grads[-2]:.3g}; final train error "
                  f"{final:.3f} ({secs:.0f} s)")
    out = args.out
    plot_lines(os.path.join(out, "grad_norms.png"), grad_series, "weight layer (input -> output)",
               "||dE/dW|| at initialization", "Gradient norm per layer at init", logy=True)
    plot_lines(os.path.join(out, "response_std.png"), std_series, "weight layer",
               "std of the layer's response at init", "Forward signal at init", logy=True)
    plot_lines(os.path.join(out, "curves.png"), curve_series, "iteration",
               "training error (running mean)", "Training error, He vs Xavier",
               hline=1 - 1 / num_classes)
    results["chance_error"] = 1 - 1 / num_classes
    v = verdict(results["runs"], results["chance_error"], max(1, min(50, iters // 3)))
    results.update(claim=CLAIM, reproduced=bool(v["reproduced"]), verdict=v,
                   rule=f"30-layer: He's final running training error <= chance - "
                        f"{TRAINS_MARGIN} and Xavier's >= chance - {STALLS_MARGIN}; 22-layer: "
                        f"both <= chance - {TRAINS_MARGIN}, He's running error reaching that "
                        f"level in fewer iterations")
    write_results(out, results)
    print_table(["net", "init", "response std conv1 -> out", "grad norm conv1 / fc2",
                 "final train err", "seconds"], rows, title="\nsummary")
    print(f"claim: {CLAIM}\nreproduced: {v['reproduced']} (30-layer part {v['30_layer']}, "
          f"22-layer part {v['22_layer']})")
    return results


if __name__ == "__main__":
    main()
