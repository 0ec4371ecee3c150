"""Classify images with a torchvision ResNet or AlexNet checkpoint you have on disk, and draw its
first-layer kernels as one image, like Figure 3 of the AlexNet paper.

    python examples/pretrained.py --weights resnet50.pth --image cat.jpg dog.jpg \\
        --labels imagenet_classes.txt

--weights: a checkpoint holding a torchvision model's state_dict, in any format minidl.load
reads (.pth/.pt as written by torch.save, .safetensors, .npz). For example, where torchvision
is installed and its weights are downloaded:
    torch.save(torchvision.models.resnet50(weights="IMAGENET1K_V2").state_dict(), "resnet50.pth")
The .pth is read without torch and without executing anything from its pickle. Nothing is ever
downloaded here.

The architecture is found from the checkpoint's keys (``--arch`` overrides it): ResNet-18/34
(basic blocks) and 50/101/152 (bottlenecks) by the number of blocks per stage, or torchvision's
AlexNet (``features.*`` / ``classifier.*``); the width and the number of classes come from the
tensor shapes. torchvision's bottleneck ResNets put the stride in the 3x3 conv ("v1.5", the
default here); pass ``--stride-in-1x1`` for weights converted from the paper's Caffe models.

Each image: shorter side resized to 256 (bilinear), centre crop 224, scaled to [0, 1] and
normalized with ImageNet's per-channel mean (0.485, 0.456, 0.406) and std (0.229, 0.224, 0.225),
as torchvision's weights expect. The top-5 classes are printed with their softmax
probabilities, as names when ``--labels`` gives a file with one class name per line (in class
index order), else as indices.

Writes into --out: ``conv1_kernels.png`` (every conv1 kernel, each scaled to its own
min..max, in a grid; RGB kernels as colour patches) and ``results.json`` (the architecture and
the top-5 of every image).
"""
import argparse
import json
import os
import re
import sys
import tempfile

import numpy as np

try:  # running from a checkout without `pip install -e .`
    import minidl
except ImportError:  # pragma: no cover - depends on the environment
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import minidl

from minidl import models
from minidl.models.resnet import BasicBlock, Bottleneck, ResNet

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
RESNETS = {("basic", (2, 2, 2, 2)): "resnet18", ("basic", (3, 4, 6, 3)): "resnet34",
           ("bottleneck", (3, 4, 6, 3)): "resnet50", ("bottleneck", (3, 4, 23, 3)): "resnet101",
           ("bottleneck", (3, 8, 36, 3)): "resnet152"}
ARCHS = ("auto", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "alexnet_owt")

NO_WEIGHTS = """pretrained.py: no --weights given. Pass the path of a torchvision ResNet or AlexNet
checkpoint on this disk, e.g.

    python examples/pretrained.py --weights resnet50.pth --image photo.jpg

A checkpoint is the model's state_dict saved with torch.save (.pth/.pt), or a .safetensors /
.npz file with the same keys; where torchvision is installed one way to make it is
    torch.save(torchvision.models.resnet50(weights="IMAGENET1K_V2").state_dict(), "resnet50.pth")
minidl itself never downloads anything. See --help."""


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", metavar="PATH",
                   help="a torchvision ResNet/AlexNet state_dict (.pth/.pt/.safetensors/.npz)")
    p.add_argument("--image", metavar="FILE", nargs="+", default=[],
                   help="image files to classify (any format Pillow reads)")
    p.add_argument("--arch", choices=ARCHS, default="auto",
                   help="the architecture; auto: found from the checkpoint's keys [auto]")
    p.add_argument("--stride-in-1x1", action="store_true",
                   help="bottleneck stride in the first 1x1 conv (Caffe/paper weights) instead "
                        "of the 3x3 (torchvision v1.5)")
    p.add_argument("--labels", metavar="FILE",
                   help="class names, one per line in class-index order (else indices)")
    p.add_argument("--topk", type=int, default=5, help="how many classes to show [5]")
    p.add_argument("--resize", type=int, default=256, help="shorter side before the crop [256]")
    p.add_argument("--crop", type=int, default=224, help="centre crop size [224]")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="[cpu]")
    p.add_argument("--out", default="runs/pretrained",
                   help="folder for conv1_kernels.png and results.json [runs/pretrained]")
    args = p.parse_args(argv)
    if args.weights is None:
        print(NO_WEIGHTS, file=sys.stderr)
        sys.exit(2)
    if args.topk < 1:
        p.error(f"--topk must be at least 1, got {args.topk}")
    if args.crop < 1 or args.resize < args.crop:
        p.error(f"--resize ({args.resize}) must be at least --crop ({args.crop}), and --crop "
                f"positive")
    if not os.path.isfile(args.weights):
        p.error(f"--weights {args.weights!r}: no such file")
    for f in args.image:
        if not os.path.isfile(f):
            p.error(f"--image {f!r}: no such file")
    if args.labels is not None and not os.path.isfile(args.labels):
        p.error(f"--labels {args.labels!r}: no such file")
    return args


# ----------------------------------------------------------------------------------------------
# the architecture from the keys


def infer_arch(state):
    """(factory name, keyword arguments) for a torchvision state dict; ValueError otherwise."""
    keys = set(state)
    if "features.0.weight" in keys and "classifier.6.weight" in keys:
        width = state["features.0.weight"].shape[0] / 64
        return "alexnet_owt", {"num_classes": state["classifier.6.weight"].shape[0],
                               "width": width}
    if "conv1.weight" in keys and "fc.weight" in keys and "layer1.0.conv1.weight" in keys:
        kind = "bottleneck" if "layer1.0.conv3.weight" in keys else "basic"
        layers = []
        for stage in range(1, 5):
            idx = {int(m.group(1)) for k in keys
                   for m in [re.match(rf"layer{stage}\.(\d+)\.", k)] if m}
            layers.append(max(idx) + 1 if idx else 0)
        kw = {"num_classes": state["fc.weight"].shape[0],
              "width": state["conv1.weight"].shape[0] / 64}
        name = RESNETS.get((kind, tuple(layers)))
        if name is None:
            return "resnet", dict(kw, block=kind, layers=tuple(layers))
        return name, kw
    sample = sorted(keys)[:6]
    raise ValueError(f"cannot tell the architecture from the checkpoint's keys (first: "
                     f"{sample}); expected torchvision's ResNet (conv1, layer1..4, fc) or "
                     f"AlexNet (features, classifier) names, or pass --arch")


def build(name, kw, stride_in_1x1):
    if name == "alexnet_owt":
        return models.alexnet_owt(**kw)
    kw = dict(kw, stride_in_1x1=stride_in_1x1)
    if name == "resnet":
        block = Bottleneck if kw.pop("block") == "bottleneck" else BasicBlock
        layers = kw.pop("layers")
        return ResNet(block, layers, **kw)
    return getattr(models, name)(**kw)


# ----------------------------------------------------------------------------------------------
# images in, kernels out


def preprocess(path, resize=256, crop=224):
    """(3, crop, crop) float32: shorter side to ``resize`` (bilinear), centre crop, [0, 1],
    ImageNet mean/std normalization."""
    from PIL import Image
    with Image.open(path) as im:
        im = im.convert("RGB")
        w, h = im.size
        s = resize / min(w, h)
        im = im.resize((max(crop, round(w * s)), max(crop, round(h * s))), Image.BILINEAR)
        w, h = im.size
        left, top = (w - crop) // 2, (h - crop) // 2
        im = im.crop((left, top, left + crop, top + crop))
        x = np.asarray(im, dtype=np.float32) / 255.0
    return ((x - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1)


def kernel_grid(weight, scale=4, pad=1, columns=None):
    """conv1 kernels (C_out, C_in, k, k) as one uint8 image: each kernel scaled to its own
    min..max (a constant kernel is mid-grey), enlarged ``scale`` times (nearest), in a grid of
    ``columns`` (default ceil(sqrt(C_out))) with ``pad`` white pixels between kernels. Three
    input channels give RGB, any other count shows the channel mean in grey."""
    w = np.asarray(weight, dtype=np.float64)
    if w.shape[1] != 3:
        w = w.mean(axis=1, keepdims=True)
    n, c, kh, kw = w.shape
    lo = w.reshape(n, -1).min(axis=1)[:, None, None, None]
    hi = w.reshape(n, -1).max(axis=1)[:, None, None, None]
    span = np.where(hi > lo, hi - lo, 1.0)
    w = np.where(hi > lo, (w - lo) / span, 0.5)
    w = w.repeat(scale, axis=2).repeat(scale, axis=3)
    cols = columns or int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    th, tw = kh * scale, kw * scale
    img = np.ones((rows * (th + pad) + pad, cols * (tw + pad) + pad, c))
    for i in range(n):
        r, q = divmod(i, cols)
        y, x = pad + r * (th + pad), pad + q * (tw + pad)
        img[y:y + th, x:x + tw] = w[i].transpose(1, 2, 0)
    img = (img * 255).round().astype(np.uint8)
    return img[..., 0] if c == 1 else img


def _atomic(path, write):
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=os.path.splitext(path)[1], dir=folder)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save_png(array, path):
    from PIL import Image
    _atomic(path, lambda tmp: Image.fromarray(array).save(tmp, format="PNG"))


# ----------------------------------------------------------------------------------------------


def main(argv=None):
    args = parse_args(argv)
    try:
        state = minidl.load(args.weights)
    except (ValueError, TypeError, OSError) as e:       # names the file and the problem
        sys.exit(f"pretrained.py: {e}")
    if not isinstance(state, dict):
        sys.exit(f"pretrained.py: {args.weights} holds a {type(state).__name__}, not a "
                 f"state_dict")
    try:
        name, kw = infer_arch(state)
    except ValueError as e:
        sys.exit(f"pretrained.py: {args.weights}: {e}")
    if args.arch != "auto" and args.arch != name:
        if name == "alexnet_owt" or args.arch == "alexnet_owt":
            sys.exit(f"pretrained.py: --arch {args.arch}, but the checkpoint's keys are "
                     f"those of {name}")
        name = args.arch
    model = build(name, kw, args.stride_in_1x1)
    model.load_state_dict(state, strict=True)
    model.to(args.device).eval()
    bottleneck = "layer1.0.conv3.weight" in state
    stride_note = "" if not bottleneck else (
        ", stride in the 1x1 (paper/Caffe)" if args.stride_in_1x1 else
        ", stride in the 3x3 (torchvision v1.5)")
    print(f"{args.weights}: {name} ({model.num_parameters():,} parameters, "
          f"{kw['num_classes']} classes, width {kw['width']:g}{stride_note})")

    labels = None
    if args.labels:
        with open(args.labels, encoding="utf-8") as f:
            labels = [line.strip() for line in f if line.strip()]
        if len(labels) != kw["num_classes"]:
            print(f"warning: {args.labels} has {len(labels)} names for {kw['num_classes']} "
                  f"classes; indices past the list are shown as numbers", file=sys.stderr)

    os.makedirs(args.out, exist_ok=True)
    conv1 = state["features.0.weight"] if name == "alexnet_owt" else state["conv1.weight"]
    png = os.path.join(args.out, "conv1_kernels.png")
    save_png(kernel_grid(conv1.numpy()), png)
    print(f"wrote {png} ({conv1.shape[0]} kernels of {conv1.shape[2]}x{conv1.shape[3]}x"
          f"{conv1.shape[1]})")

    predictions = []
    k = min(args.topk, kw["num_classes"])
    for path in args.image:
        x = minidl.Tensor(preprocess(path, args.resize, args.crop)[None], device=args.device)
        with minidl.no_grad():
            logits = model(x).numpy()[0].astype(np.float64)
        p = np.exp(logits - logits.max())
        p /= p.sum()
        top = np.argsort(-p, kind="stable")[:k]
        print(f"{path}:")
        rows = []
        for rank, i in enumerate(top, 1):
            label = labels[i] if labels is not None and i < len(labels) else str(int(i))
            print(f"  {rank}. {p[i]:7.2%}  {label}" + (f"  (class {i})" if labels else ""))
            rows.append({"class": int(i), "label": label, "probability": float(p[i])})
        predictions.append({"image": path, "top": rows})

    results = {"weights": args.weights, "arch": name, "num_classes": int(kw["num_classes"]),
               "stride_in_1x1": bool(args.stride_in_1x1), "kernels_png": png,
               "predictions": predictions}
    out = os.path.join(args.out, "results.json")

    def write(tmp):
        with open(tmp, "w") as f:
            json.dump(results, f, indent=1)
    _atomic(out, write)
    print(f"wrote {out}")
    return results


if __name__ == "__main__":
    main()
