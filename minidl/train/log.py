"""A JSONL log of every epoch's metrics, and the learning-curve plot drawn from it.

Each line of the log is one JSON object, e.g.::

    {"epoch": 3, "train_loss": 1.82, "train_top1": 0.61, "train_top5": 0.27,
     "val_loss": 1.95, "val_top1": 0.63, "val_top5": 0.29, "lr": 0.01, "time": 41.2}

(``*_top1`` / ``*_top5`` are error rates in [0, 1].) Lines are appended and flushed one at a
time, so a crashed run keeps what it logged; after a resume, an epoch logged twice is read as its
last line. :func:`plot_curves` draws the loss and the top-1/top-5 train/val errors against the
epoch into a PNG with matplotlib when it is installed; without it, it returns None.

:func:`new_figure` is the one place matplotlib is imported (for the examples' plots too): a
Figure on its own Agg canvas, or None and a one-line notice, printed once per process, when
matplotlib (an optional extra) is not installed.
"""
import json
import math
import os
import sys


def append_jsonl(path, record):
    """Append ``record`` (a dict of JSON-able values) as one line to ``path`` and flush it."""
    path = os.fspath(path)
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    clean = {k: _plain(v) for k, v in record.items()}
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(clean, allow_nan=True) + "\n")
        f.flush()


def _plain(v):
    n = v.numel() if callable(getattr(v, "numel", None)) else getattr(v, "size", 1)
    if hasattr(v, "item") and callable(v.item) and n == 1:
        return v.item()
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    return v


def read_jsonl(path):
    """All records of a JSONL log, in order (a truncated last line, from a crash, is skipped)."""
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out


class EpochLog:
    """``EpochLog(path)``: ``log.append(epoch=3, train_loss=..., ...)`` writes one line;
    ``log.records()`` reads them back."""

    def __init__(self, path):
        self.path = os.fspath(path)

    def append(self, record=None, **fields):
        rec = dict(record or {}, **fields)
        append_jsonl(self.path, rec)
        return rec

    def records(self):
        return read_jsonl(self.path) if os.path.exists(self.path) else []


def _by_epoch(records):
    """Records with an "epoch", the last one per epoch, sorted by epoch."""
    last = {}
    for r in records:
        if "epoch" in r:
            last[r["epoch"]] = r
    return [last[e] for e in sorted(last)]


def _series(records, key):
    xs, ys = [], []
    for r in records:
        v = r.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            xs.append(r["epoch"])
            ys.append(v)
    return xs, ys


_matplotlib_notice_shown = False


def new_figure(figsize):
    """A matplotlib ``Figure`` of ``figsize`` inches on its own Agg canvas, or None when
    matplotlib is not installed.

    No pyplot: the figure and canvas are local, so no global backend or state is touched. Without
    matplotlib (an optional extra) it prints a one-line notice on stderr, the first time only, and
    returns None. Only ImportError means "not installed"; any other error of a broken install
    propagates."""
    global _matplotlib_notice_shown
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        if not _matplotlib_notice_shown:
            _matplotlib_notice_shown = True
            print("minidl: matplotlib is not installed; no plots are drawn "
                  "(pip install matplotlib)", file=sys.stderr)
        return None
    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig


def plot_curves(log_path, png_path, title=None):
    """Draw loss (left) and top-1/top-5 error (right), train solid and val dashed, against the
    epoch, from the JSONL log at ``log_path`` into ``png_path``. Returns ``png_path``, or None
    when matplotlib is not installed (:func:`new_figure`)."""
    fig = new_figure((11, 4.2))
    if fig is None:
        return None
    from matplotlib.ticker import MaxNLocator

    records = _by_epoch(read_jsonl(log_path))
    ax_loss, ax_err = fig.subplots(1, 2)
    for split, style in (("train", "-"), ("val", "--")):
        xs, ys = _series(records, f"{split}_loss")
        if xs:
            ax_loss.plot(xs, ys, style, color="C0", marker=".", label=f"{split} loss")
        for key, color in (("top1", "C1"), ("top5", "C2")):
            xs, ys = _series(records, f"{split}_{key}")
            if xs:
                ax_err.plot(xs, [100 * y for y in ys], style, color=color, marker=".",
                            label=f"{split} {key[:3]}-{key[3:]} error")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("loss")
    ax_err.set_xlabel("epoch")
    ax_err.set_ylabel("error (%)")
    for ax in (ax_loss, ax_err):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    d = os.path.dirname(os.path.abspath(os.fspath(png_path)))
    os.makedirs(d, exist_ok=True)
    fig.savefig(png_path, dpi=100)
    return png_path
