"""Top-k error and running averages.

Top-k error (the ImageNet metrics: top-1 and top-5) is the fraction of samples whose true class
is not among the k highest-scoring classes.

Ties are broken deterministically: classes are ranked by a *stable* sort on descending score,
so among equal scores the lower class index comes first. The target's rank is

    rank = #{j : s_j > s_t} + #{j < t : s_j == s_t}

and the sample is correct at k iff ``rank < k``. So a tie with the target's score counts against
it only when the tied classes with lower indices push it out of the first k. A NaN target score
is always an error; other NaN scores never outrank the target. ``k`` larger than the number of
classes is clipped to it (every sample is then correct).
"""
import numpy as np

from minidl import backend


def _arrays(logits, target):
    lg = getattr(logits, "data", logits)
    tg = getattr(target, "data", target)
    lg = backend.to_numpy(lg)
    tg = backend.to_numpy(tg)
    if lg.ndim != 2:
        raise ValueError(f"topk: logits must be (N, C), got shape {lg.shape}")
    tg = tg.reshape(-1)
    if tg.shape[0] != lg.shape[0]:
        raise ValueError(f"topk: {lg.shape[0]} rows of logits but {tg.shape[0]} targets")
    if tg.dtype.kind not in "iu":
        raise TypeError(f"topk: targets must be integer class indices, got dtype {tg.dtype}")
    if tg.size and (tg.min() < 0 or tg.max() >= lg.shape[1]):
        raise ValueError(f"topk: targets must lie in [0, {lg.shape[1]}), got values in "
                         f"[{tg.min()}, {tg.max()}]")
    return lg, tg.astype(np.int64)


def target_rank(logits, target):
    """The rank (0 = best) of each sample's target class under the stable tie rule above;
    ``C`` for a NaN target score. ``logits`` (N, C) and ``target`` (N,): Tensors or arrays."""
    lg, tg = _arrays(logits, target)
    n, c = lg.shape
    st = lg[np.arange(n), tg][:, None]
    higher = (lg > st).sum(axis=1)
    tied_before = ((lg == st) & (np.arange(c)[None, :] < tg[:, None])).sum(axis=1)
    rank = higher + tied_before
    return np.where(np.isnan(st[:, 0]), c, rank)


def topk_correct(logits, target, ks=(1, 5)):
    """The number of samples correct at each k (a list of ints, one per k)."""
    rank = target_rank(logits, target)
    c = int(getattr(logits, "shape", np.shape(logits))[-1])
    return [int((rank < min(int(k), c)).sum()) for k in ks]


def topk_error(logits, target, ks=(1, 5)):
    """Top-k error rate for each k in ``ks`` (a list of floats in [0, 1]).

    ``logits``: (N, C) scores (any strictly increasing function of them, e.g. softmax, gives
    the same result), ``target``: (N,) integer classes; Tensors, NumPy or CuPy arrays."""
    rank = target_rank(logits, target)
    n = rank.shape[0]
    if n == 0:
        raise ValueError("topk_error of an empty batch")
    c = int(getattr(logits, "shape", np.shape(logits))[-1])
    return [float((rank >= min(int(k), c)).sum()) / n for k in ks]


class AverageMeter:
    """A running (weighted) mean: ``update(value, n)`` adds n samples whose mean is value."""

    def __init__(self, name=""):
        self.name = name
        self.reset()

    def reset(self):
        self.val = 0.0
        self.sum = 0.0
        self.count = 0

    def update(self, value, n=1):
        self.val = float(value)
        self.sum += float(value) * n
        self.count += n

    @property
    def avg(self):
        return self.sum / self.count if self.count else float("nan")

    def state_dict(self):
        return {"name": self.name, "val": self.val, "sum": self.sum, "count": self.count}

    def load_state_dict(self, state):
        self.name, self.val, self.sum, self.count = (state["name"], state["val"], state["sum"],
                                                     state["count"])

    def __repr__(self):
        return f"AverageMeter({self.name!r}, avg={self.avg:.6g}, count={self.count})"
