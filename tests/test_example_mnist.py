"""examples/mnist.py (the port of PyTorch's MNIST example): --help, argument validation, a
dry run on generated data, and the local-MNIST readers (IDX folder, gzipped IDX, .npz) on tiny
files written here."""
import gzip
import importlib.util
import os
import struct
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "examples", "mnist.py")


def _run(args, tmp_path, check=True):
    env = dict(os.environ, PYTHONPATH=ROOT, MINIDL_DATA=str(tmp_path / "data"))
    p = subprocess.run([sys.executable, SCRIPT] + args, cwd=tmp_path, env=env, timeout=600,
                       capture_output=True, text=True)
    if check:
        assert p.returncode == 0, f"{args}:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    return p


def _module():
    spec = importlib.util.spec_from_file_location("mnist_example", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow  # runs the example script in a subprocess
def test_help_and_argument_validation(tmp_path):
    out = _run(["--help"], tmp_path).stdout
    assert "--data" in out and "PyTorch" in out
    for bad in (["--epochs", "0"], ["--lr", "nan"], ["--seed", "-1"], ["--batch-size", "-3"]):
        p = _run(bad, tmp_path, check=False)
        assert p.returncode == 2 and bad[0] in p.stderr, (bad, p.stderr)


@pytest.mark.slow  # runs the example script in a subprocess
def test_dry_run_on_generated_shapes(tmp_path):
    p = _run(["--dry-run", "--epochs", "1", "--n-per-class", "5", "--test-batch-size", "20",
              "--save-model"], tmp_path)
    assert "Train Epoch: 1 [0/50 (0%)]" in p.stdout
    assert "Test set: Average loss:" in p.stdout and "/10 (" in p.stdout
    assert os.path.getsize(tmp_path / "mnist_cnn.pt") > 9216 * 128 * 4  # fc1's weights


def _idx_bytes(arr):
    """An IDX file of unsigned bytes, written by hand from the format's definition."""
    return bytes([0, 0, 0x08, arr.ndim]) + struct.pack(">" + "I" * arr.ndim, *arr.shape) \
        + arr.astype(np.uint8).tobytes()


def _fake_mnist(rng, n):
    return rng.integers(0, 256, (n, 28, 28)).astype(np.uint8), rng.integers(0, 10, n)


def test_idx_folder_gzipped_idx_and_npz_are_read_alike(tmp_path):
    mod = _module()
    rng = np.random.default_rng(0)
    (xtr, ytr), (xte, yte) = _fake_mnist(rng, 12), _fake_mnist(rng, 7)
    plain, gz = tmp_path / "raw", tmp_path / "rawgz"
    plain.mkdir()
    gz.mkdir()
    files = {"train-images-idx3-ubyte": xtr, "train-labels-idx1-ubyte": ytr,
             "t10k-images-idx3-ubyte": xte, "t10k-labels-idx1-ubyte": yte}
    for name, arr in files.items():
        (plain / name).write_bytes(_idx_bytes(arr))
        with gzip.open(gz / (name + ".gz"), "wb") as f:
            f.write(_idx_bytes(arr))
    np.savez(tmp_path / "mnist.npz", x_train=xtr, y_train=ytr, x_test=xte, y_test=yte)
    for path in (plain, gz, tmp_path / "mnist.npz"):
        train, test = mod.MNIST(str(path), train=True), mod.MNIST(str(path), train=False)
        assert len(train) == 12 and len(test) == 7
        np.testing.assert_array_equal(train.data, xtr)
        np.testing.assert_array_equal(test.targets, yte)
        img, label = test[3]
        np.testing.assert_array_equal(img, xte[3])
        assert label == int(yte[3])


def test_bad_mnist_files_are_named(tmp_path):
    mod = _module()
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte"):
        mod.MNIST(str(tmp_path), train=True)
    (tmp_path / "train-images-idx3-ubyte").write_bytes(b"\x00\x00\x0d\x03garbage")
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(_idx_bytes(np.zeros(2)))
    with pytest.raises(ValueError, match="train-images-idx3-ubyte.*not an IDX"):
        mod.MNIST(str(tmp_path), train=True)


@pytest.mark.slow  # runs the example script in a subprocess
def test_trains_on_a_local_mnist_folder(tmp_path):
    rng = np.random.default_rng(1)
    raw = tmp_path / "raw"
    raw.mkdir()
    (xtr, ytr), (xte, yte) = _fake_mnist(rng, 16), _fake_mnist(rng, 8)
    for name, arr in {"train-images-idx3-ubyte": xtr, "train-labels-idx1-ubyte": ytr,
                      "t10k-images-idx3-ubyte": xte, "t10k-labels-idx1-ubyte": yte}.items():
        (raw / name).write_bytes(_idx_bytes(arr))
    p = _run(["--data", str(raw), "--epochs", "2", "--batch-size", "8", "--log-interval", "1"],
             tmp_path)
    assert p.stdout.count("Test set: Average loss:") == 2 and "/8 (" in p.stdout
    assert "Train Epoch: 2 [8/16 (50%)]" in p.stdout
