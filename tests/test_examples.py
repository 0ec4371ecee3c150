"""Every example and the model benchmark run end to end in their --smoke / --quick mode (tiny
data, a few iterations) in a subprocess, and write results.json and their plots.

These check the plumbing (data -> model -> training -> evaluation -> files), not the papers'
claims: the claims need the default budgets, whose measured results are in examples/README.md.
Every test that starts a script is marked ``slow`` (``pytest -m "not slow"`` skips them).
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import import_example

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, "examples")

HAVE_MPL = True
try:
    import matplotlib  # noqa: F401
except ImportError:  # pragma: no cover
    HAVE_MPL = False


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    """One generated-data cache for the whole module (the smoke sets are tiny)."""
    return str(tmp_path_factory.mktemp("minidl_data"))


def run(script, args, data_root, timeout=300):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
               MINIDL_DATA=data_root, MPLBACKEND="Agg")
    p = subprocess.run([sys.executable, script] + args, cwd=ROOT, env=env, timeout=timeout,
                       capture_output=True, text=True)
    assert p.returncode == 0, f"{script} {args} failed:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    return p.stdout


def results(out):
    with open(os.path.join(out, "results.json")) as f:
        return json.load(f)


def assert_pngs(out, names):
    if not HAVE_MPL:
        return
    for n in names:
        path = os.path.join(out, n)
        assert os.path.getsize(path) > 1000, path
        with open(path, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def assert_verdict(r):
    """Every paper-claim example states its claim and a boolean verdict from its rule."""
    assert isinstance(r["claim"], str) and len(r["claim"]) > 20
    assert isinstance(r["reproduced"], bool)
    assert isinstance(r["rule"], str) and r["rule"]


@pytest.mark.slow  # runs the script in a subprocess
@pytest.mark.parametrize("script, claim", [
    ("alexnet_imagenet.py", "40.7%"), ("relu_vs_tanh.py", "six times faster"),
    ("init_study.py", "30-layer"), ("prelu_study.py", "Table 1"),
    ("resnet_cifar.py", "degradation"), ("alexnet_ablations.py", "1.4%")])
def test_help_names_the_paper_claim(script, claim, data_root):
    out = run(os.path.join(EXAMPLES, script), ["--help"], data_root)
    assert claim in out
    for flag in ("--device", "--seed", "--out", "--paper", "--smoke"):
        assert flag in out


@pytest.mark.slow  # runs the script in a subprocess
def test_alexnet_quickstart_smoke_and_resume(tmp_path, data_root):
    out = str(tmp_path / "alex")
    script = os.path.join(EXAMPLES, "alexnet_imagenet.py")
    text = run(script, ["--smoke", "--epochs", "1", "--out", out], data_root)
    assert "scaled-down configuration" in text
    r = results(out)
    for k in ("val_top1_error", "val_top5_error"):
        assert 0.0 <= r[k] <= 1.0
    assert r["val_eval"] == "ten-crop"
    assert r["epochs"] == 1 and r["paper_claim"]["top1_error"] == 0.407
    assert os.path.exists(os.path.join(out, "checkpoint.npz"))
    assert_pngs(out, ["curves.png"])
    # resume: continue the same run for a second epoch
    text = run(script, ["--smoke", "--epochs", "2", "--out", out, "--resume"], data_root)
    assert "resumed from" in text and "epoch   2/2" in text and "epoch   1/2" not in text
    r2 = results(out)
    assert r2["steps"] == 2 * r["steps"]
    with open(os.path.join(out, "log.jsonl")) as f:
        assert [json.loads(line)["epoch"] for line in f if line.strip()] == [1, 2]


@pytest.mark.slow  # runs the script in a subprocess
def test_alexnet_ablation_flags(tmp_path, data_root):
    out = str(tmp_path / "abl")
    run(os.path.join(EXAMPLES, "alexnet_imagenet.py"),
        ["--smoke", "--epochs", "1", "--out", out, "--towers", "1", "--no-lrn", "--no-overlap",
         "--no-fancy-pca", "--no-ten-crop"], data_root)
    r = results(out)
    c = r["config"]
    assert (c["towers"], c["lrn"], c["overlap_pool"], c["fancy_pca"]) == (1, False, False, False)
    assert c["arch"] == "alexnet_one_gpu"   # the paper's one-GPU net (footnote 2)
    assert r["val_eval"] == "centre crop"


@pytest.mark.slow  # runs the script in a subprocess
def test_alexnet_reads_an_imagenet_style_folder(tmp_path, data_root):
    """--data with train/ and val/ class folders (here: a copy of a few generated images)."""
    from PIL import Image
    import numpy as np
    d = tmp_path / "imnet"
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in ("n01", "n02"):
            (d / split / c).mkdir(parents=True)
            for i in range(4):
                a = rng.integers(0, 255, (90, 100, 3), dtype=np.uint8)
                a[:, :, 0] = 255 if c == "n01" else 0
                Image.fromarray(a).save(d / split / c / f"{i}.JPEG")
    out = str(tmp_path / "alex_folder")
    run(os.path.join(EXAMPLES, "alexnet_imagenet.py"),
        ["--smoke", "--epochs", "1", "--out", out, "--data", str(d)], data_root)
    r = results(out)
    assert "imnet" in r["data"] and r["chance_top1_error"] == 0.5


@pytest.mark.slow  # runs the script in a subprocess
def test_relu_vs_tanh_smoke(tmp_path, data_root):
    out = str(tmp_path / "rvt")
    run(os.path.join(EXAMPLES, "relu_vs_tanh.py"), ["--smoke", "--out", out], data_root)
    r = results(out)
    assert_verdict(r)
    assert set(r["iters_to_target"]) == {"relu", "tanh"}
    assert set(r["val_top1_error"]) == {"relu", "tanh"}
    assert "tanh_over_relu_iterations" in r and r["paper_claim"]["tanh_over_relu_iterations"] == 6
    assert (r["input"], r["init"]) == ("raw", "gaussian")   # the AlexNet paper's, by default
    assert_pngs(out, ["curves.png"])


@pytest.mark.slow  # runs the script in a subprocess
def test_relu_vs_tanh_modern_setup_smoke(tmp_path, data_root):
    out = str(tmp_path / "rvt")
    run(os.path.join(EXAMPLES, "relu_vs_tanh.py"),
        ["--smoke", "--out", out, "--input", "standardized", "--init", "he"], data_root)
    r = results(out)
    assert_verdict(r)
    assert (r["input"], r["init"]) == ("standardized", "he")


def test_relu_vs_tanh_init_is_the_papers_gaussian():
    m = import_example("relu_vs_tanh")
    import minidl
    minidl.manual_seed(0)
    for act in ("relu", "tanh"):
        net = m.FourLayerCNN(act)
        ws = [p.numpy() for n, p in net.named_parameters() if n.endswith("weight")]
        assert all(abs(w.std() - 0.01) < 0.001 for w in ws)
    he = m.FourLayerCNN("relu", init="he")
    w = he.features[0].weight.numpy()
    assert abs(w.std() - np.sqrt(2 / 75)) < 0.02
    with pytest.raises(ValueError, match="init"):
        m.FourLayerCNN("relu", init="xavier")


def test_relu_vs_tanh_iteration_counting():
    m = import_example("relu_vs_tanh")
    errs = [1.0] * 10 + [0.0] * 10
    # window 4: the running mean first reaches <= 0.25 when 3 of the last 4 are 0 (iteration 13)
    assert m.iters_to(errs, 0.25, 4) == 13
    assert m.iters_to([1.0] * 20, 0.25, 4) is None


def test_write_results_keeps_nan_and_says_where(tmp_path, capsys):
    _common = import_example("_common")
    path = _common.write_results(str(tmp_path), {"loss": float("nan"), "err": [0.5, float("inf")],
                                                 "ok": 1.0})
    r = results(str(tmp_path))
    assert path == os.path.join(str(tmp_path), "results.json")
    assert r["loss"] != r["loss"] and r["err"] == [0.5, float("inf")] and r["ok"] == 1.0
    out = capsys.readouterr().out
    assert "NaN/Infinity at loss, err[1]" in out
    assert [f for f in os.listdir(tmp_path) if f != "results.json"] == []  # no temporaries


@pytest.mark.slow  # runs the script in a subprocess
def test_init_study_smoke(tmp_path, data_root):
    out = str(tmp_path / "init")
    run(os.path.join(EXAMPLES, "init_study.py"), ["--smoke", "--out", out], data_root)
    r = results(out)
    assert_verdict(r)
    runs = r["runs"]
    assert len(runs) == 4
    for label, v in runs.items():
        n_layers = 22 if label.startswith("22") else 30
        assert len(v["grad_norm"]) == len(v["response_std"]) == n_layers
    # the claim's mechanism, visible even at init and at a tiny width: Xavier's forward signal
    # in the 30-layer net ends, at the last conv layer (before the fc layers, whose init
    # differs: the paper's small fc stds for He on raw input), far below He's
    he, xa = runs["30-layer, he"], runs["30-layer, xavier"]
    assert xa["response_std"][-4] < 1e-2 * he["response_std"][-4]
    # the paper's raw 0-255 input range by default: the first response is of order 10-100
    assert r["input"] == "raw" and he["response_std"][0] > 5
    assert_pngs(out, ["grad_norms.png", "response_std.png", "curves.png"])


@pytest.mark.slow  # runs the script in a subprocess
def test_init_study_standardized_input_smoke(tmp_path, data_root):
    out = str(tmp_path / "init")
    run(os.path.join(EXAMPLES, "init_study.py"),
        ["--smoke", "--out", out, "--input", "standardized"], data_root)
    r = results(out)
    assert_verdict(r)
    assert r["input"] == "standardized"
    assert r["runs"]["30-layer, he"]["response_std"][0] < 5


@pytest.mark.slow  # runs the script in a subprocess
def test_prelu_study_smoke(tmp_path, data_root):
    out = str(tmp_path / "prelu")
    run(os.path.join(EXAMPLES, "prelu_study.py"), ["--smoke", "--out", out], data_root)
    r = results(out)
    assert_verdict(r)
    assert set(r["val_top1_error"]) == {"relu", "prelu_shared", "prelu"}
    slopes = r["runs"]["prelu"]["slopes"]
    assert list(slopes) == ["conv1", "conv2_1", "conv2_2", "conv2_3", "conv2_4", "conv3_1",
                            "conv3_2", "conv3_3", "conv3_4", "conv3_5", "conv3_6", "fc1", "fc2"]
    assert r["runs"]["relu"]["slopes"] == {}
    assert all(len(v[1]) == 1 for v in r["runs"]["prelu_shared"]["slopes"].values())
    assert_pngs(out, ["slopes.png", "curves.png"])


@pytest.mark.slow  # runs the script in a subprocess
def test_resnet_cifar_smoke_with_warmup(tmp_path, data_root):
    out = str(tmp_path / "res")
    run(os.path.join(EXAMPLES, "resnet_cifar.py"),
        ["--smoke", "--out", out, "--warmup", "on"], data_root)
    r = results(out)
    assert_verdict(r)
    assert set(r["val_top1_error"]) == {"plain-8", "resnet-8", "plain-14", "resnet-14"}
    run_ = r["runs"]["resnet-14"]
    assert len(run_["response_std"]) == 1 + 2 * 2 * 3   # stem BN + two per block, n = 2
    # the default lr is the paper's 0.1 at batch 128 scaled linearly to the smoke batch of 8;
    # the warm-up trains at lr/10 while the batch error is >= 0.8
    assert r["lr"] == pytest.approx(0.1 * 8 / 128)
    assert run_["lrs"][0] == pytest.approx(0.1 * 8 / 128 / 10)
    assert_pngs(out, ["train_error.png", "response_std.png"])


def _write_fake_cifar(folder, n_train_batch=8, n_test=12, seed=0):
    """A tiny CIFAR-10 in the official pickle layout: 5 training batches and test_batch."""
    import pickle
    import numpy as np
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        n = n_test if name == "test_batch" else n_train_batch
        d = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
             b"labels": [int(v) for v in rng.integers(0, 10, n)]}
        with open(folder / name, "wb") as f:
            pickle.dump(d, f)


@pytest.mark.slow  # runs the script in a subprocess
def test_resnet_cifar_reports_the_test_set(tmp_path, data_root):
    d = tmp_path / "cifar-10-batches-py"
    _write_fake_cifar(d)
    out = str(tmp_path / "res_test")
    text = run(os.path.join(EXAMPLES, "resnet_cifar.py"),
               ["--smoke", "--out", out, "--data", str(d), "--depths", "8", "--no-plain"],
               data_root)
    r = results(out)
    assert "36 train / 4 val split, 12 test images" in r["data"]   # 40 images: 10% held out
    run_ = r["runs"]["resnet-8"]
    assert run_["test_samples"] == 12
    assert 0.0 <= run_["test_top1_error"] <= 1.0
    assert r["test_top1_error"] == {"resnet-8": run_["test_top1_error"]}
    assert "test error" in text


def test_resnet_cifar_paper_depths_accept_1202():
    m = import_example("resnet_cifar")
    args = m.parse_args(["--paper", "--depths", "110", "1202"])
    assert m.choose_depths(args) == [110, 1202]
    assert m.choose_depths(m.parse_args(["--paper"])) == [20, 32, 44, 56, 110]
    with pytest.raises(SystemExit):
        m.choose_depths(m.parse_args(["--depths", "21"]))


@pytest.mark.slow  # runs the script in a subprocess
def test_prelu_study_paper_recipe_smoke(tmp_path, data_root):
    """The --paper pipeline's parts at smoke size: scale jitter, colour altering, per-pixel
    mean, the plateau schedule, and the test-time methods (10 views at 2 scales; dense)."""
    out = str(tmp_path / "prelu_recipe")
    run(os.path.join(EXAMPLES, "prelu_study.py"),
        ["--smoke", "--out", out, "--scale-jitter", "81", "96", "--colour-aug", "--pixel-mean",
         "--plateau", "--test-scales", "72", "88"], data_root)
    r = results(out)
    assert r["recipe"] == {"scale_jitter": [81, 96], "colour_aug": True, "pixel_mean": True,
                           "plateau_lr": True, "test_scales": [72, 88]}
    for act in ("relu", "prelu_shared", "prelu"):
        tt = r["runs"][act]["test_time"]
        assert tt["scales"] == [72, 88]
        for k in ("ten_view_top1_error", "dense_top1_error", "dense_top5_error"):
            assert 0.0 <= tt[k] <= 1.0


@pytest.mark.slow  # runs the script in a subprocess
def test_benchmark_quick(tmp_path, data_root):
    out = str(tmp_path / "bench.json")
    text = run(os.path.join(ROOT, "benchmarks", "models.py"),
               ["--quick", "--models", "resnet20", "alexnet", "--batch-sizes", "2", "--repeat",
                "1", "--out", out], data_root)
    assert "img/s" in text
    with open(out) as f:
        b = json.load(f)
    assert [(r["model"], r["batch"]) for r in b["results"]] == [("resnet20", 2), ("alexnet", 2)]
    for r in b["results"]:
        assert r["minidl_images_per_second"] > 0 and r["minidl_peak_bytes"] > 0


@pytest.mark.slow  # runs the script in a subprocess
def test_alexnet_ablations_smoke(tmp_path, data_root):
    out = str(tmp_path / "abl_seeds")
    text = run(os.path.join(EXAMPLES, "alexnet_ablations.py"),
               ["--smoke", "--out", out, "--seeds", "2"], data_root)
    assert "scaled-down configuration" in text
    r = results(out)
    assert_verdict(r)
    assert r["seeds"] == [0, 1]
    assert set(r["val_top1_error"]) == {"paper", "no_lrn", "no_overlap"}
    assert all(len(v) == 2 for v in r["val_top1_error"].values())
    assert r["verdict"]["no_lrn"]["delta_per_seed"] == pytest.approx(
        [a - b for a, b in zip(r["val_top1_error"]["no_lrn"], r["val_top1_error"]["paper"])])
    assert_pngs(out, ["ablations.png"])


def test_alexnet_ablations_rule():
    m = import_example("alexnet_ablations")
    v = m.verdict({"paper": [0.30, 0.40], "no_lrn": [0.33, 0.41], "no_overlap": [0.29, 0.40]})
    assert v["no_lrn"]["mean_delta"] == pytest.approx(0.02)
    assert v["no_lrn"]["sign_reproduced"] and not v["no_overlap"]["sign_reproduced"]
    assert v["reproduced"] is False
    v = m.verdict({"paper": [0.3], "no_lrn": [0.31], "no_overlap": [0.32]})
    assert v["reproduced"] is True and v["no_lrn"]["sem_delta"] is None


def test_prelu_study_rule():
    m = import_example("prelu_study")

    def slopes(conv1, c2, c3):
        d = {"conv1": (conv1, [conv1])}
        d.update({f"conv2_{i}": (c2, [c2]) for i in range(1, 5)})
        d.update({f"conv3_{i}": (c3, [c3]) for i in range(1, 7)})
        d.update({"fc1": (0.05, [0.05]), "fc2": (0.05, [0.05])})
        return d

    runs = {"relu": {"val_top1_error": 0.40, "slopes": {}},
            "prelu_shared": {"val_top1_error": 0.40, "slopes": slopes(0.68, 0.25, 0.10)},
            "prelu": {"val_top1_error": 0.35, "slopes": slopes(0.60, 0.32, 0.16)}}
    assert m.verdict(runs)["reproduced"] is True
    runs["prelu"]["slopes"] = slopes(0.30, 0.32, 0.16)      # conv1 not well above 0.25
    v = m.verdict(runs)
    assert not v["conv1_well_above_start"] and not v["slopes_fall_with_depth"]
    assert v["reproduced"] is False
    runs["prelu"]["slopes"] = slopes(0.60, 0.32, 0.16)
    runs["prelu_shared"]["val_top1_error"] = 0.41             # shared behind ReLU
    assert m.verdict(runs)["reproduced"] is False


def test_resnet_cifar_rule():
    m = import_example("resnet_cifar")

    def run_(err, std):
        return {"final_train_error": err, "response_std": [std, std]}

    runs = {"plain-20": run_(0.10, 1.0), "resnet-20": run_(0.08, 0.9),
            "plain-56": run_(0.30, 1.2), "resnet-56": run_(0.05, 0.8)}
    v = m.verdict(runs, [20, 56])
    assert v["plain_deeper_worse"] and v["resnet_deeper_better"]
    assert v["smaller_std_with_shortcuts"] and v["reproduced"] is True
    runs["resnet-56"] = run_(0.09, 0.8)                      # deeper ResNet not better yet
    assert m.verdict(runs, [20, 56])["reproduced"] is False
    only_res = {k: v for k, v in runs.items() if k.startswith("resnet")}
    v = m.verdict(only_res, [20, 56])
    assert v["plain_deeper_worse"] is None and v["reproduced"] is False


def test_init_study_rule():
    m = import_example("init_study")
    chance = 0.9

    def run_(errs):
        return {"train_errors": errs, "final_train_error": float(np.mean(errs[-4:]))}

    fast, slow, stall = [0.9] * 4 + [0.2] * 16, [0.9] * 10 + [0.3] * 10, [0.9] * 20
    runs = {"22-layer (model B), he": run_(fast), "22-layer (model B), xavier": run_(slow),
            "30-layer, he": run_(fast), "30-layer, xavier": run_(stall)}
    v = m.verdict(runs, chance, 4)
    assert v["30_layer"] and v["22_layer"] and v["reproduced"] is True
    # iteration 5: the window (0.9, 0.9, 0.9, 0.2) averages 0.725 <= 0.75
    assert v["22-layer (model B), he"]["iterations_to_trains_level"] == 5
    runs["30-layer, xavier"] = run_(slow)                     # Xavier trains too: no stall
    assert m.verdict(runs, chance, 4)["reproduced"] is False
