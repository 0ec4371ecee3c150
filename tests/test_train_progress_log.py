"""Progress bar (quiet off a terminal, plain fallback without tqdm), the JSONL epoch log and the
learning-curve PNG (and its graceful absence without matplotlib)."""
import io
import json
import sys
import types

import pytest

import minidl
import minidl.functional as F
from minidl.data import DataLoader
from minidl.optim import SGD
from minidl.train import EpochLog, Progress, plot_curves, read_jsonl, train_one_epoch
from minidl.train import log as train_log
from minidl.train import progress as progress_mod

from train_helpers import ArrayDataset, blobs, nn_mlp


class FakeTTY(io.StringIO):
    def isatty(self):
        return True


def test_quiet_when_not_a_terminal_or_when_asked():
    buf = io.StringIO()
    with Progress(100, desc="x", file=buf) as bar:
        bar.update(10, loss=1.0, lr=0.1)
    assert buf.getvalue() == "" and bar.quiet
    tty = FakeTTY()
    with Progress(100, file=tty, quiet=True) as bar:
        bar.update(10)
    assert tty.getvalue() == ""


def test_plain_fallback_shows_rate_eta_loss_lr(monkeypatch):
    monkeypatch.setattr(progress_mod, "_tqdm", None)
    tty = FakeTTY()
    with Progress(100, desc="epoch 1", file=tty, min_interval=0.0) as bar:
        assert bar._bar is None and not bar.quiet
        bar.update(40, loss=2.5, lr=0.01)
        bar.update(10, loss=2.25, lr=0.01)
    out = tty.getvalue()
    last = out.rstrip("\n").split("\r")[-1]
    assert last.startswith("epoch 1: 50/100 [")
    assert "img/s" in last and "loss=2.25" in last and "lr=0.01" in last
    assert "<" in last  # elapsed<ETA
    assert bar.n == 50 and bar.eta is not None and bar.eta >= 0


def test_tqdm_bar_when_installed_and_forced():
    pytest.importorskip("tqdm")
    buf = io.StringIO()
    with Progress(64, desc="train", file=buf, quiet=False) as bar:
        bar.update(32, loss=0.5, lr=0.1)
        bar.update(32, loss=0.25, lr=0.1)
    out = buf.getvalue()
    assert "64/64" in out and "img" in out and "loss=0.25" in out and "lr=0.1" in out


def test_train_one_epoch_drives_a_given_bar():
    minidl.manual_seed(0)
    model = nn_mlp()
    x, y = blobs(n_per_class=8)
    loader = DataLoader(ArrayDataset(x, y), batch_size=8)
    bar = Progress(len(x), file=io.StringIO(), quiet=True)
    train_one_epoch(model, loader, SGD(model.parameters(), lr=0.1), F.cross_entropy,
                    progress=bar)
    assert bar.n == 32 and "loss" in bar.postfix and bar.postfix["lr"] == "0.1"


def test_epoch_log_round_trip_and_truncated_last_line(tmp_path):
    path = tmp_path / "logs" / "run.jsonl"
    log = EpochLog(path)
    log.append(epoch=0, train_loss=2.0, train_top1=0.9, train_top5=0.5, val_loss=2.1,
               val_top1=0.92, val_top5=0.55, lr=0.1)
    import numpy as np
    log.append({"epoch": 1, "train_loss": np.float32(1.5)}, lr=0.1)
    with open(path, "a") as f:
        f.write('{"epoch": 2, "train_lo')  # a crash mid-line
    recs = read_jsonl(path)
    assert [r["epoch"] for r in recs] == [0, 1]
    assert recs[1]["train_loss"] == 1.5 and isinstance(recs[1]["train_loss"], float)
    assert log.records() == recs
    assert json.loads(path.read_text().splitlines()[0])["val_top5"] == 0.55


def _write_log(path):
    log = EpochLog(path)
    for e in range(5):
        log.append(epoch=e, train_loss=2.0 / (e + 1), val_loss=2.2 / (e + 1),
                   train_top1=0.9 - 0.1 * e, train_top5=0.5 - 0.05 * e,
                   val_top1=0.95 - 0.1 * e, val_top5=0.6 - 0.05 * e)
    log.append(epoch=4, train_loss=0.1, val_loss=float("nan"))  # a resumed epoch, logged again


def test_plot_curves_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    _write_log(tmp_path / "run.jsonl")
    out = plot_curves(tmp_path / "run.jsonl", tmp_path / "plots" / "curves.png", title="t")
    assert out == tmp_path / "plots" / "curves.png"
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def _hide_matplotlib(monkeypatch, replacement=None):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", replacement)  # None: import -> ImportError
    monkeypatch.setattr(train_log, "_matplotlib_notice_shown", False)


def test_plot_curves_without_matplotlib_prints_one_line_once(tmp_path, monkeypatch, capsys):
    _write_log(tmp_path / "run.jsonl")
    _hide_matplotlib(monkeypatch)
    assert plot_curves(tmp_path / "run.jsonl", tmp_path / "c.png") is None
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "matplotlib" in err
    assert not (tmp_path / "c.png").exists()
    assert plot_curves(tmp_path / "run.jsonl", tmp_path / "c.png") is None
    assert train_log.new_figure((2, 2)) is None
    assert capsys.readouterr().err == ""  # said once per process


def test_a_broken_matplotlib_is_not_taken_for_a_missing_one(monkeypatch):
    class Broken(types.ModuleType):
        def __getattr__(self, name):
            raise RuntimeError("broken matplotlib install")

    _hide_matplotlib(monkeypatch, Broken("matplotlib"))
    monkeypatch.setitem(sys.modules, "matplotlib.figure", Broken("matplotlib.figure"))
    monkeypatch.setitem(sys.modules, "matplotlib.backends", Broken("matplotlib.backends"))
    monkeypatch.setitem(sys.modules, "matplotlib.backends.backend_agg",
                        Broken("matplotlib.backends.backend_agg"))
    with pytest.raises(RuntimeError, match="broken matplotlib install"):
        train_log.new_figure((2, 2))


def test_last_record_per_epoch_wins():
    from minidl.train.log import _by_epoch
    recs = _by_epoch([{"epoch": 1, "a": 1}, {"epoch": 0, "a": 0}, {"epoch": 1, "a": 2},
                      {"note": "no epoch"}])
    assert recs == [{"epoch": 0, "a": 0}, {"epoch": 1, "a": 2}]
