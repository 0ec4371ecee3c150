"""examples/pretrained.py end to end, with torchvision-layout checkpoints this test writes with
torch (small widths, no torchvision, no download): the architecture is found from the keys,
the top-5 equals the torch model's on the same image (preprocessed here independently with
Pillow and the ImageNet mean/std), and the conv1 kernels are drawn as one PNG.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import require

torch = require("torch")
Image = require("PIL.Image", "Pillow-based test module")
tnn = torch.nn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "examples", "pretrained.py")


def run(args, expect_ok=True):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    p = subprocess.run([sys.executable, SCRIPT] + [str(a) for a in args], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300, check=False)
    if expect_ok:
        assert p.returncode == 0, f"pretrained.py {args} failed:\n{p.stdout}\n{p.stderr}"
    return p


class Basic(tnn.Module):
    def __init__(self, cin, c, stride):
        super().__init__()
        self.conv1 = tnn.Conv2d(cin, c, 3, stride, 1, bias=False)
        self.bn1 = tnn.BatchNorm2d(c)
        self.relu = tnn.ReLU()
        self.conv2 = tnn.Conv2d(c, c, 3, 1, 1, bias=False)
        self.bn2 = tnn.BatchNorm2d(c)
        self.downsample = None
        if stride != 1 or cin != c:
            self.downsample = tnn.Sequential(tnn.Conv2d(cin, c, 1, stride, bias=False),
                                             tnn.BatchNorm2d(c))

    def forward(self, x):
        y = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        return self.relu(y + (x if self.downsample is None else self.downsample(x)))


class ResNet18(tnn.Module):
    """torchvision's resnet18 layout at 1/8 width."""

    def __init__(self, num_classes=12):
        super().__init__()
        base = [8, 16, 32, 64]
        self.conv1 = tnn.Conv2d(3, 8, 7, 2, 3, bias=False)
        self.bn1 = tnn.BatchNorm2d(8)
        self.relu = tnn.ReLU()
        self.maxpool = tnn.MaxPool2d(3, 2, 1)
        cin = 8
        for i, c in enumerate(base):
            blocks = [Basic(cin, c, 2 if i else 1), Basic(c, c, 1)]
            cin = c
            setattr(self, f"layer{i + 1}", tnn.Sequential(*blocks))
        self.avgpool = tnn.AdaptiveAvgPool2d(1)
        self.fc = tnn.Linear(64, num_classes)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _image(path, w, h, seed):
    rng = np.random.default_rng(seed)
    # smooth colour gradients plus noise, so different crops/rescalings give different inputs
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([xx * 255 / w, yy * 255 / h, (xx + yy) * 127 / (w + h)], -1)
    img = np.clip(img + rng.normal(0, 30, img.shape), 0, 255).astype(np.uint8)
    Image.fromarray(img).save(path)


def _preprocess(path):
    """ImageNet eval transform written out here: shorter side 256 (bilinear), centre 224."""
    im = Image.open(path).convert("RGB")
    w, h = im.size
    s = 256 / min(w, h)
    im = im.resize((round(w * s), round(h * s)), Image.BILINEAR)
    w, h = im.size
    left, top = (w - 224) // 2, (h - 224) // 2
    x = np.asarray(im.crop((left, top, left + 224, top + 224)), np.float32) / 255
    x = (x - np.array([0.485, 0.456, 0.406], np.float32)) / np.array([0.229, 0.224, 0.225],
                                                                     np.float32)
    return torch.from_numpy(x.transpose(2, 0, 1).copy())[None]


@pytest.mark.slow  # runs examples/pretrained.py in a subprocess
def test_without_weights_it_says_what_to_pass():
    p = run([], expect_ok=False)
    assert p.returncode != 0
    assert "--weights" in p.stderr and "state_dict" in p.stderr and "torch.save" in p.stderr


@pytest.mark.slow  # runs examples/pretrained.py in a subprocess
def test_help():
    p = run(["--help"])
    assert "--weights" in p.stdout and "--image" in p.stdout and "--labels" in p.stdout


@pytest.mark.slow  # runs examples/pretrained.py in a subprocess
def test_resnet_checkpoint_classifies_like_torch_and_draws_kernels(tmp_path):
    torch.manual_seed(0)
    tm = ResNet18().eval()
    with torch.no_grad():               # non-trivial BN statistics
        for m in tm.modules():
            if isinstance(m, tnn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
        tm.fc.weight.mul_(20)           # spread the class scores so the top-5 is well separated
    torch.save(tm.state_dict(), tmp_path / "r18.pth")
    images = [tmp_path / "a.png", tmp_path / "b.jpg"]
    _image(images[0], 300, 260, 0)
    _image(images[1], 240, 320, 1)
    labels = tmp_path / "labels.txt"
    labels.write_text("".join(f"class-{i}\n" for i in range(12)))
    out = tmp_path / "out"
    p = run(["--weights", tmp_path / "r18.pth", "--image", *images, "--labels", labels,
             "--out", out])
    assert "resnet18" in p.stdout
    res = json.loads((out / "results.json").read_text())
    assert res["arch"] == "resnet18" and res["num_classes"] == 12
    for img, pred in zip(images, res["predictions"]):
        with torch.no_grad():
            prob = torch.softmax(tm(_preprocess(img)).double(), 1)[0].numpy()
        want = np.argsort(-prob)[:5]
        assert [r["class"] for r in pred["top"]] == list(want)
        np.testing.assert_allclose([r["probability"] for r in pred["top"]], prob[want],
                                   rtol=1e-4, atol=1e-6)
        assert [r["label"] for r in pred["top"]] == [f"class-{i}" for i in want]
        assert f"class-{want[0]}" in p.stdout
    # 8 kernels of 7x7x3 at 4x in a 3x3 grid with 1-pixel gaps: 3*(28+1)+1 = 88 square, RGB
    png = Image.open(out / "conv1_kernels.png")
    assert png.size == (88, 88) and png.mode == "RGB"
    a = np.asarray(png)
    k0 = a[1:29, 1:29]                  # the first kernel, scaled to its own min..max
    w0 = tm.conv1.weight[0].detach().numpy().transpose(1, 2, 0)
    want0 = np.round((w0 - w0.min()) / (w0.max() - w0.min()) * 255).astype(np.uint8)
    np.testing.assert_array_equal(k0[::4, ::4], want0)
    assert (a[0] == 255).all() and (a[:, 29] == 255).all()      # the gaps are white


@pytest.mark.slow  # runs examples/pretrained.py in a subprocess
def test_alexnet_checkpoint_is_recognized_and_indices_shown_without_labels(tmp_path):
    torch.manual_seed(0)
    c = (4, 12, 24, 16, 16, 256)            # torchvision AlexNet at 1/16 width
    features = tnn.Sequential(
        tnn.Conv2d(3, c[0], 11, 4, 2), tnn.ReLU(), tnn.MaxPool2d(3, 2),
        tnn.Conv2d(c[0], c[1], 5, padding=2), tnn.ReLU(), tnn.MaxPool2d(3, 2),
        tnn.Conv2d(c[1], c[2], 3, padding=1), tnn.ReLU(),
        tnn.Conv2d(c[2], c[3], 3, padding=1), tnn.ReLU(),
        tnn.Conv2d(c[3], c[4], 3, padding=1), tnn.ReLU(), tnn.MaxPool2d(3, 2))
    classifier = tnn.Sequential(tnn.Dropout(), tnn.Linear(c[4] * 36, c[5]), tnn.ReLU(),
                                tnn.Dropout(), tnn.Linear(c[5], c[5]), tnn.ReLU(),
                                tnn.Linear(c[5], 7))
    sd = {f"features.{k}": v for k, v in features.state_dict().items()}
    sd.update({f"classifier.{k}": v for k, v in classifier.state_dict().items()})
    torch.save(sd, tmp_path / "alex.pth")
    _image(tmp_path / "x.png", 256, 256, 2)
    out = tmp_path / "out"
    p = run(["--weights", tmp_path / "alex.pth", "--image", tmp_path / "x.png", "--out", out,
             "--topk", "3"])
    res = json.loads((out / "results.json").read_text())
    assert res["arch"] == "alexnet_owt"
    x = _preprocess(tmp_path / "x.png")
    with torch.no_grad():
        logits = classifier.eval()(torch.flatten(
            tnn.functional.adaptive_avg_pool2d(features(x), 6), 1))[0].double()
    want = np.argsort(-torch.softmax(logits, 0).numpy())[:3]
    top = res["predictions"][0]["top"]
    assert [r["class"] for r in top] == list(want)
    assert [r["label"] for r in top] == [str(i) for i in want]
    # 4 kernels of 11x11: a 2x2 grid of 44-pixel tiles
    assert Image.open(out / "conv1_kernels.png").size == (2 * 45 + 1, 2 * 45 + 1)
    assert "alexnet_owt" in p.stdout


@pytest.mark.slow  # runs examples/pretrained.py in a subprocess
def test_bad_checkpoint_keys_are_reported(tmp_path):
    torch.save({"foo.weight": torch.zeros(2)}, tmp_path / "odd.pth")
    p = run(["--weights", tmp_path / "odd.pth"], expect_ok=False)
    assert p.returncode != 0 and "cannot tell the architecture" in p.stderr
    p = run(["--weights", tmp_path / "missing.pth"], expect_ok=False)
    assert p.returncode != 0 and "no such file" in p.stderr
