"""A progress bar for long loops: images per second, ETA, loss and learning rate.

``Progress(total, desc="", unit="img", quiet=None, file=None)`` uses tqdm when it is installed,
and otherwise a plain one-line display rewritten with ``\\r`` at most every 0.5 s. It is quiet
(prints nothing) when ``quiet=True``, or, with ``quiet=None`` (the default), when the output
stream is not a terminal (logs, CI, pytest capture). ``quiet=False`` forces it on::

    with Progress(total=len(dataset), desc="epoch 3") as bar:
        for x, y in loader:
            ...
            bar.update(len(x), loss=loss_value, lr=opt.param_groups[0]["lr"])
"""
import sys
import time

_UNLOADED = object()
_tqdm = _UNLOADED  # the tqdm module once looked for; None when it is not installed


def _tqdm_module():
    """tqdm (an optional extra), imported on first use so ``import minidl`` does not load it."""
    global _tqdm
    if _tqdm is _UNLOADED:
        try:
            import tqdm as module
        except ImportError:  # pragma: no cover - depends on the environment
            module = None
        _tqdm = module
    return _tqdm


def _fmt_time(seconds):
    if seconds is None or seconds != seconds or seconds == float("inf"):
        return "?"
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h:d}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class Progress:
    """Counts processed items (images) and shows rate, ETA and the latest loss / lr."""

    def __init__(self, total=None, desc="", unit="img", quiet=None, file=None, use_tqdm=None,
                 min_interval=0.5):
        self.file = file if file is not None else sys.stderr
        if quiet is None:
            isatty = getattr(self.file, "isatty", None)
            try:
                quiet = not (isatty is not None and isatty())
            except Exception:
                quiet = True
        self.quiet = bool(quiet)
        self.total = total
        self.desc = desc
        self.unit = unit
        self.n = 0
        self.postfix = {}
        self.min_interval = min_interval
        self._start = time.perf_counter()
        self._last_print = 0.0
        self._bar = None
        self._closed = False
        tqdm = _tqdm_module() if (use_tqdm or use_tqdm is None) and not self.quiet else None
        if tqdm is not None:
            self._bar = tqdm.tqdm(total=total, desc=desc, unit=unit, unit_scale=False,
                                   file=self.file, dynamic_ncols=True, leave=True)

    # -- updates -----------------------------------------------------------------------------
    def update(self, n=1, loss=None, lr=None, **fields):
        """Add ``n`` processed items; show the given loss, lr and other fields."""
        self.n += n
        if loss is not None:
            self.postfix["loss"] = f"{float(loss):.4g}"
        if lr is not None:
            self.postfix["lr"] = f"{float(lr):.3g}"
        for k, v in fields.items():
            self.postfix[k] = f"{v:.4g}" if isinstance(v, float) else str(v)
        if self.quiet:
            return
        if self._bar is not None:
            self._bar.set_postfix(self.postfix, refresh=False)
            self._bar.update(n)
            return
        now = time.perf_counter()
        if now - self._last_print >= self.min_interval:
            self._last_print = now
            self._print("\r")

    @property
    def elapsed(self):
        return time.perf_counter() - self._start

    @property
    def rate(self):
        """Items per second so far."""
        e = self.elapsed
        return self.n / e if e > 0 else float("nan")

    @property
    def eta(self):
        """Seconds left (None without a total)."""
        if not self.total:
            return None
        r = self.rate
        return (self.total - self.n) / r if r and r == r and r > 0 else None

    def line(self):
        """The plain display: ``desc  n/total [elapsed<eta, rate img/s, loss=..., lr=...]``."""
        count = f"{self.n}/{self.total}" if self.total else f"{self.n}"
        parts = [f"{_fmt_time(self.elapsed)}<{_fmt_time(self.eta)}",
                 f"{self.rate:.1f} {self.unit}/s"]
        parts += [f"{k}={v}" for k, v in self.postfix.items()]
        head = f"{self.desc}: " if self.desc else ""
        return f"{head}{count} [{', '.join(parts)}]"

    def _print(self, lead):
        try:
            self.file.write(lead + self.line())
            self.file.flush()
        except Exception:
            pass

    def close(self):
        if self._closed:
            return
        self._closed = True
        if self.quiet:
            return
        if self._bar is not None:
            self._bar.set_postfix(self.postfix, refresh=False)
            self._bar.close()
        else:
            self._print("\r")
            self.file.write("\n")
            self.file.flush()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False
