"""Helpers shared by the example scripts: the common command-line flags, the results file, a
printed summary table, plots, and the announcement of a scaled-down configuration.

Every example takes ``--device cpu|cuda``, ``--seed``, ``--out DIR``, ``--paper`` (the paper's
configuration, for users with the hardware and data) and ``--smoke`` (a seconds-long run used by
the test suite), and writes ``results.json`` and PNG plots into ``--out``.
"""
import argparse
import json
import math
import os
import platform
import sys
import time

try:  # running from a checkout without `pip install -e .`
    import minidl  # noqa: F401
except ImportError:  # pragma: no cover - depends on the environment
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import minidl  # noqa: F401

from minidl import backend
from minidl.train import atomic_write, new_figure


# ----------------------------------------------------------------------------------------------
# argparse types: a bad value is an argparse error ("argument --epochs: must be ...") before any
# work starts, not a traceback from deep inside a run


def _number(text, kind):
    try:
        v = kind(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(
            f"must be {'an integer' if kind is int else 'a number'}, got {text!r}") from None
    if kind is float and not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return v


def positive_int(text):
    """argparse type: an integer >= 1 (epochs, iterations, batch sizes, image sizes)."""
    v = _number(text, int)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return v


def nonnegative_int(text):
    """argparse type: an integer >= 0 (worker counts)."""
    v = _number(text, int)
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text!r}")
    return v


def seed_int(text):
    """argparse type: a seed, an integer in [0, 2**63)."""
    v = _number(text, int)
    if not 0 <= v < 2 ** 63:
        raise argparse.ArgumentTypeError(f"must be an integer in [0, 2**63), got {text!r}")
    return v


def positive_float(text):
    """argparse type: a finite number > 0 (learning rates, width multipliers)."""
    v = _number(text, float)
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text!r}")
    return v


def probability(text):
    """argparse type: a drop probability in [0, 1)."""
    v = _number(text, float)
    if not 0 <= v < 1:
        raise argparse.ArgumentTypeError(f"must be a probability in [0, 1), got {text!r}")
    return v


def open_fraction(text):
    """argparse type: a number in (0, 1) (an error-rate target)."""
    v = _number(text, float)
    if not 0 < v < 1:
        raise argparse.ArgumentTypeError(f"must be a number in (0, 1), got {text!r}")
    return v


def existing_dir(text):
    """argparse type: a folder that exists."""
    if not os.path.isdir(text):
        why = "is not a folder" if os.path.exists(text) else "does not exist"
        raise argparse.ArgumentTypeError(f"{text!r} {why}")
    return text


def output_dir(text):
    """argparse type: a folder to write into (created later); not an existing file."""
    if os.path.exists(text) and not os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"{text!r} exists and is not a folder")
    return text


def input_normalization(dataset, kind, prefix=(), n_mean=2000, n_cov=500):
    """The array conversion and input normalization of an example, as ``(steps, norm)``:
    ``steps`` is ``prefix`` (e.g. resize and crop) followed by ``ToArray``, ``norm`` the
    transform to apply after it, both measured on ``dataset`` through ``steps``.

    ``kind="raw"``: 0-255 values minus the mean image (``n_mean`` images), as the 2012-2015
    papers fed their nets; ``"standardized"``: 0-1 values, per-channel zero mean and unit
    variance (``n_cov`` images)."""
    from minidl.data import transforms as T
    import numpy as np
    if kind == "raw":
        steps = list(prefix) + [T.ToArray(255.0)]
        return steps, T.SubtractMean(T.compute_mean_image(dataset, transform=T.Compose(steps),
                                                          n=n_mean))
    if kind == "standardized":
        steps = list(prefix) + [T.ToArray()]
        mean, cov = T.rgb_covariance(dataset, transform=T.Compose(steps), n=n_cov)
        return steps, T.Normalize(mean, np.sqrt(np.diag(cov)))
    raise ValueError(f"input normalization must be 'raw' or 'standardized', got {kind!r}")


def make_parser(doc, default_out):
    """An ArgumentParser whose description is the script's docstring, with the common flags."""
    p = argparse.ArgumentParser(description=doc,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"),
                   help="where to run (cuda needs CuPy and a GPU) [cpu]")
    p.add_argument("--seed", type=seed_int, default=0,
                   help="seed of the weights, dropout and data [0]")
    p.add_argument("--out", type=output_dir, default=default_out,
                   help=f"folder for results.json, logs, checkpoints and plots [{default_out}]")
    p.add_argument("--paper", action="store_true",
                   help="the paper's full configuration (needs the data and a GPU; hours-days)")
    p.add_argument("--smoke", action="store_true",
                   help="a tiny seconds-long run that exercises every code path (for tests)")
    return p


def setup(args):
    """Check the device, seed minidl, create --out; returns the normalized device."""
    if args.device == "cuda" and not backend.is_available():
        sys.exit("error: --device cuda needs CuPy and a CUDA GPU, and none is available here; "
                 "use --device cpu")
    minidl.manual_seed(args.seed)
    os.makedirs(args.out, exist_ok=True)
    return backend.normalize_device(args.device)


def announce(title, config, scaled_note=None):
    """Print the configuration; ``scaled_note`` explains how it differs from the paper."""
    print(f"== {title} ==")
    if scaled_note:
        print(f"NOTE: scaled-down configuration for a CPU budget: {scaled_note}")
        print("      (pass --paper for the paper's configuration)")
    for k, v in config.items():
        print(f"  {k:<22} {v}")
    sys.stdout.flush()


def _plain(v, where, nonfinite):
    """JSON-able copy of ``v`` (NumPy scalars to Python numbers); the paths of NaN/Inf floats
    are collected in ``nonfinite`` (they are kept, not replaced)."""
    if hasattr(v, "item") and getattr(v, "ndim", 1) == 0:
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        nonfinite.append(where or "(top level)")
        return v
    if isinstance(v, dict):
        return {str(k): _plain(x, f"{where}.{k}" if where else str(k), nonfinite)
                for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x, f"{where}[{i}]", nonfinite) for i, x in enumerate(v)]
    return v


def write_results(out, results):
    """Write ``results`` (plus machine info) to ``out/results.json`` (a temporary file, then
    renamed); returns the path.

    NaN and infinite values (a diverged run, say) are written as JSON's common extension tokens
    ``NaN`` / ``Infinity``, which Python's ``json`` reads back; a note names where they are, since
    strict JSON parsers reject them."""
    results = dict(results)
    results.setdefault("machine", {"platform": platform.platform(), "python":
                                   platform.python_version(), "cpus": os.cpu_count()})
    nonfinite = []
    text = json.dumps(_plain(results, "", nonfinite), indent=1, allow_nan=True)
    path = os.path.join(out, "results.json")
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))
    print(f"wrote {path}")
    if nonfinite:
        print(f"note: {path} holds NaN/Infinity at {', '.join(nonfinite)} (Python's json reads "
              "them; strict JSON parsers do not)")
    return path


def print_table(headers, rows, title=None):
    """A plain fixed-width table on stdout."""
    cells = [[_fmt(c) for c in r] for r in rows]
    widths = [max(len(str(h)), *(len(r[i]) for r in cells)) if cells else len(str(h))
              for i, h in enumerate(headers)]
    if title:
        print(title)
    print("  ".join(str(h).ljust(w) for h, w in zip(headers, widths)))
    print("  ".join("-" * w for w in widths))
    for r in cells:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)))
    sys.stdout.flush()


def _fmt(v):
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        return f"{v:.4g}" if abs(v) < 1e4 else f"{v:.3e}"
    return str(v)


def plot_lines(png, series, xlabel, ylabel, title=None, logy=False, hline=None):
    """``series``: {label: (xs, ys)} drawn as lines into ``png``. Returns the path, or None with
    a one-line notice (once) when matplotlib is missing."""
    fig = new_figure((7, 4.5))
    if fig is None:
        return None
    ax = fig.subplots()
    for label, (xs, ys) in series.items():
        ax.plot(list(xs), list(ys), label=label)
    if hline is not None:
        ax.axhline(hline, color="gray", ls=":", lw=1)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if logy:
        ax.set_yscale("log")
    if title:
        ax.set_title(title)
    ax.grid(True, alpha=0.3)
    if series:
        ax.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    print(f"wrote {png}")
    return png


def plot_bars(png, groups, ylabel, title=None):
    """``groups``: {series label: (category labels, values)} as grouped bars. Returns the path,
    or None when matplotlib is missing."""
    fig = new_figure((9, 4.5))
    if fig is None:
        return None
    ax = fig.subplots()
    n = max(len(groups), 1)
    w = 0.8 / n
    for i, (label, (cats, vals)) in enumerate(groups.items()):
        xs = [j + (i - (n - 1) / 2) * w for j in range(len(cats))]
        ax.bar(xs, list(vals), width=w, label=label)
        ax.set_xticks(range(len(cats)))
        ax.set_xticklabels(list(cats), rotation=45, ha="right")
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    print(f"wrote {png}")
    return png


class Stopwatch:
    """``with Stopwatch() as t: ...`` then ``t.seconds``."""

    def __enter__(self):
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.t0
        return False
