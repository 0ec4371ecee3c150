"""A reusable training epoch and evaluation pass (no Trainer class: a script owns its loop).

::

    import minidl.functional as F
    from minidl.train import (EpochLog, evaluate, load_checkpoint, plot_curves,
                              save_checkpoint, train_one_epoch)

    step = 0
    if resume:                                   # continues exactly, even mid-epoch
        step = load_checkpoint(path, model, opt, sched, train_loader)["step"]
    log = EpochLog("run.jsonl")
    while train_loader.state_dict()["epoch"] < epochs:
        epoch = train_loader.state_dict()["epoch"]
        tr = train_one_epoch(model, train_loader, opt, F.cross_entropy, device,
                             scheduler=sched, scheduler_per="iter", start_step=step,
                             epoch=epoch)
        step = tr["step"]
        va = evaluate(model, val_loader, device)
        log.append(epoch=epoch, lr=tr["lr"], train_loss=tr["loss"], train_top1=tr["top1"],
                   train_top5=tr["top5"], val_loss=va["loss"], val_top1=va["top1"],
                   val_top5=va["top5"])
        save_checkpoint(path, model, opt, sched, train_loader, step=step, epoch=epoch + 1)
    plot_curves("run.jsonl", "curves.png")

(The data loader counts epochs: running to the end of one advances its ``epoch``, so the loop
above needs no epoch variable of its own; after ``load_checkpoint`` its first iterator resumes
mid-epoch where the checkpoint stood.)

In a data-parallel run (a :mod:`minidl.distributed` process group of more than one rank,
usually with the model wrapped in :class:`~minidl.nn.parallel.DistributedDataParallel` and each
rank's loader taking its share of every batch), both functions report figures for the whole
group: every training step sums the ranks' loss, top-k hits and sample counts in one small
all-reduce (so the NaN check, the progress display and a scheduler's metric agree on every
rank, and ranks never diverge), and ``evaluate`` sums its counts once at the end, so the
validation error is that of the whole validation set however it was split (a loader that pads
the last batch to split it evenly counts those few repeated samples twice, as with PyTorch's
DistributedSampler). The progress bar is shown by rank 0 only. ``distributed=False`` keeps the
figures per rank.

The loader's batches are Tensors; build it with ``device=`` to have them made on the GPU, else
they are moved to ``device`` here (as are NumPy batches from any other iterable), so the same
loop runs on "cpu" and "cuda". A NaN or infinite
loss raises :class:`NonFiniteLossError` naming the step *before* the weights are touched, so the
last checkpoint (and the model in memory) stay good.
"""
import math
import time

import numpy as np

from minidl import backend
from minidl import distributed as _dist
from minidl.tensor import Tensor, no_grad
from minidl.train.metrics import AverageMeter, topk_correct
from minidl.train.progress import Progress
from minidl.train.views import dense_probabilities, multi_view_probabilities, softmax_positions


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; ``step``, ``epoch``, ``batch`` and ``value`` say where."""

    def __init__(self, step, value, epoch=None, batch=None):
        self.step, self.value, self.epoch, self.batch = step, value, epoch, batch
        where = f"step {step}"
        if epoch is not None:
            where += f" (epoch {epoch}, batch {batch} of this epoch)"
        elif batch is not None:
            where += f" (batch {batch} of this epoch)"
        super().__init__(f"non-finite loss {value} at {where}; training stopped before this "
                         "step's update, so the weights and the last saved checkpoint are "
                         "good — lower the learning rate or check the data, then resume")


def model_device(model):
    """The device of the model's first parameter ("cpu" for a model without parameters)."""
    for p in model.parameters():
        return p.device
    return "cpu"


def _reduce_across_ranks(distributed):
    """Whether to sum metrics over a process group: ``None`` means when one of more than one
    rank is initialized."""
    if distributed is None:
        return _dist.is_initialized() and _dist.get_world_size() > 1
    if distributed and not _dist.is_initialized():
        raise _dist.DistributedError("distributed=True needs an initialized process group "
                                     "(minidl.distributed.init_process_group)")
    return bool(distributed)


def _make_progress(progress, total, desc):
    if isinstance(progress, Progress):
        return progress, False
    if not _dist.is_main_process():
        progress = False  # one bar per run, not one per rank
    if progress is False or progress is None:
        return Progress(total, desc=desc, quiet=True), True
    return Progress(total, desc=desc, quiet=None if progress is True else False), True


def _total(loader, whole_group=False):
    """Samples the progress bar counts to: this rank's share of a sharded loader's epoch, or
    the whole group's with ``whole_group`` (the loop then counts every rank's samples)."""
    ds = getattr(loader, "dataset", None)
    try:
        n = len(ds) if ds is not None else None
        replicas = getattr(loader, "num_replicas", 1)
        if n is not None and replicas > 1:
            n = min(n, len(loader) * loader.batch_size * (replicas if whole_group else 1))
        return n
    except TypeError:
        return None


def _batch_to(images, labels, device):
    """The batch as Tensors on ``device``: a no-op for the DataLoader's Tensors already there;
    NumPy arrays (or lists of labels) from any other iterable are wrapped."""
    x = images.to(device) if isinstance(images, Tensor) else Tensor(images, device=device)
    if isinstance(labels, Tensor):
        y = labels.to(device)
    else:
        y = Tensor(np.asarray(labels) if not hasattr(labels, "shape") else labels, device=device)
    return x, y


def _lr(optimizer):
    return optimizer.param_groups[0]["lr"] if optimizer.param_groups else float("nan")


def _step_scheduler(scheduler, metric):
    if getattr(scheduler, "wants_metric", False):
        scheduler.step(metric)
    else:
        scheduler.step()


def train_one_epoch(model, loader, optimizer, loss_fn, device=None, scheduler=None,
                    scheduler_per="iter", progress=True, on_step=None, epoch=None,
                    start_step=0, ks=(1, 5), distributed=None):
    """Train on every batch ``loader`` yields (one epoch, or the rest of it right after a
    resume): forward, loss,
    NaN/Inf check, ``zero_grad``, backward, ``optimizer.step()``.

    * ``loss_fn(output, target) -> scalar Tensor`` (e.g. ``F.cross_entropy``); the target is a
      Tensor of the labels on ``device`` (default: the model's device).
    * ``scheduler``: stepped after every update (``scheduler_per="iter"``) or once at the end
      of the epoch (``"epoch"``). A scheduler whose ``wants_metric`` is true (ReduceLROnPlateau,
      Warmup with ``until``) gets the training top-1 error: the batch's per iteration, the
      epoch's per epoch.
    * ``progress``: True (a bar when stderr is a terminal), False (none), or a Progress.
    * ``on_step(info)``: called after each update with a dict ``step`` (the global step count,
      ``start_step`` + updates so far), ``epoch``, ``batch``, ``loss``, ``top1`` (the batch's
      error), ``lr`` (the rate this update used), ``samples``. Returning True stops the epoch
      right there (e.g. to save a checkpoint mid-epoch and quit); the epoch scheduler is then not
      stepped.
    * ``distributed``: sum the metrics over the process group (the default when one of more
      than one rank is initialized; see the module docstring). ``loss``, ``top1`` and
      ``samples`` (in ``on_step`` and in the result) are then those of all ranks' batches.

    Returns ``{"loss", "top1", "top5", ... (averages over the samples seen), "samples", "steps",
    "step" (global), "lr", "time", "stopped"}``.

    Raises :class:`NonFiniteLossError` when the loss is NaN or infinite, before that step's
    backward and update: the parameters and optimizer state are those after the previous step
    (buffers such as batch-norm running statistics did see the failing forward pass), and the
    last checkpoint saved is untouched — reload it to continue.
    """
    if scheduler_per not in ("iter", "epoch"):
        raise ValueError(f"scheduler_per must be 'iter' or 'epoch', got {scheduler_per!r}")
    device = backend.normalize_device(device) if device is not None else model_device(model)
    reduce = _reduce_across_ranks(distributed)
    model.train()
    loss_meter = AverageMeter("loss")
    correct = [0] * len(ks)
    seen = 0
    steps = 0
    stopped = False
    t0 = time.perf_counter()
    desc = f"epoch {epoch}" if epoch is not None else "train"
    bar, own_bar = _make_progress(progress, _total(loader, whole_group=reduce), desc)
    try:
        for batch_idx, (images, labels) in enumerate(loader):
            x, y = _batch_to(images, labels, device)
            lr = _lr(optimizer)
            out = model(x)
            loss = loss_fn(out, y)
            value = float(loss.item())
            n = int(x.shape[0])
            c = topk_correct(out.data, y.data, ks)
            if reduce:  # the group's loss, hits and samples (NaN anywhere is NaN everywhere)
                tot = _dist.all_reduce_values([value * n, n] + c)
                n = int(tot[1])
                value = float(tot[0]) / n if n else float("nan")
                c = [int(v) for v in tot[2:]]
            step = start_step + steps + 1
            if not math.isfinite(value):
                raise NonFiniteLossError(step, value, epoch, batch_idx)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            steps += 1
            seen += n
            loss_meter.update(value, n)
            correct = [a + b for a, b in zip(correct, c)]
            batch_top1 = 1.0 - c[0] / n
            if scheduler is not None and scheduler_per == "iter":
                _step_scheduler(scheduler, batch_top1)
            bar.update(n, loss=value, lr=lr)
            if on_step is not None:
                info = {"step": step, "epoch": epoch, "batch": batch_idx, "loss": value,
                        "top1": batch_top1, "lr": lr, "samples": n}
                if on_step(info):
                    stopped = True
                    break
    finally:
        if own_bar:
            bar.close()
    result = {"loss": loss_meter.avg}
    for k, c in zip(ks, correct):
        result[f"top{k}"] = 1.0 - c / seen if seen else float("nan")
    if scheduler is not None and scheduler_per == "epoch" and not stopped and steps:
        _step_scheduler(scheduler, result.get(f"top{ks[0]}"))
    result.update(samples=seen, steps=steps, step=start_step + steps, lr=_lr(optimizer),
                  time=time.perf_counter() - t0, stopped=stopped)
    return result


def _log_softmax(xp, z):
    z = z - z.max(axis=1, keepdims=True)
    return z - xp.log(xp.exp(z).sum(axis=1, keepdims=True))


def evaluate(model, loader, device=None, ten_crop=False, loss_fn=None, progress=False,
             ks=(1, 5), distributed=None, dense_scales=None, flip=False,
             ten_crop_scales=None, crop_size=None):
    """Loss and top-k errors of ``model`` (in eval mode, without gradients) over ``loader``.

    The loss is the mean cross-entropy of the softmax of the outputs (or ``loss_fn(output,
    target)`` averaged over batches weighted by size, if given). ``ten_crop=True``: each batch
    is ``(N, V, C, H, W)`` (e.g. V = 10 views from ``transforms.TenCrop``); the model sees the
    N*V views and the V softmaxes of a sample are averaged (AlexNet's test), the loss being
    ``-log`` of the averaged probability of the target. The model's train/eval mode is restored.

    ``distributed``: sum the counts over the process group at the end (the default when one of
    more than one rank is initialized), for a loader that gives each rank a share of the set.

    The papers' other test-time methods (see :mod:`minidl.train.views`; batches are whole
    images ``(N, C, H, W)``, the loss is ``-log`` of the averaged probability of the target):

    * ``dense_scales=(224, 256, 384, 480, 640)``: dense, fully-convolutional multi-scale
      testing (PReLU paper Sec. 3, ResNet Sec. 3.4). At each scale (the images' shorter side)
      the model's ``dense_forward`` applies its fully-connected layers as convolutions over the
      last feature map (or after SPP / global pooling); the softmax is averaged over positions,
      scales and, with ``flip=True``, the mirror images. At the training size it gives the
      single-crop score.
    * ``ten_crop_scales=(256, 384, 480), crop_size=224``: the 10 views (corners, centre and
      their mirror images) at each scale, all softmaxes averaged (the PReLU paper's multi-view
      test; one scale is AlexNet's 10-view test).
    * ``flip=True`` alone: the softmaxes of each image and its mirror image averaged.

    Returns ``{"loss", "top1", "top5", "samples"}`` (errors in [0, 1]).
    """
    device = backend.normalize_device(device) if device is not None else model_device(model)
    reduce = _reduce_across_ranks(distributed)
    chosen = [n for n, v in (("ten_crop", ten_crop), ("dense_scales", dense_scales),
                             ("ten_crop_scales", ten_crop_scales)) if v]
    if len(chosen) > 1:
        raise ValueError(f"evaluate: choose one test-time method, got {' and '.join(chosen)}")
    if ten_crop and flip:
        raise ValueError("evaluate: ten_crop views include the mirror images already; "
                         "drop flip=True")
    if ten_crop_scales is not None:
        if crop_size is None:
            raise ValueError("evaluate: ten_crop_scales needs crop_size (the views' side)")
        if flip:
            raise ValueError("evaluate: ten_crop_scales views include the mirror images "
                             "already; drop flip=True")
    elif crop_size is not None:
        raise ValueError("evaluate: crop_size is used only with ten_crop_scales")
    views_mode = bool(dense_scales) or ten_crop_scales is not None or flip
    was_training = model.training
    model.eval()
    loss_sum, seen = 0.0, 0
    correct = [0] * len(ks)
    bar, own_bar = _make_progress(progress, _total(loader), "eval")
    try:
        with no_grad():
            for images, labels in loader:
                x, y = _batch_to(images, labels, device)
                n = int(x.shape[0])
                if n == 0:  # a rank's share of the last batch can be empty
                    continue
                if views_mode:
                    if dense_scales:
                        scores = dense_probabilities(model, x.data, dense_scales, flip, device)
                    elif ten_crop_scales is not None:
                        scores = multi_view_probabilities(model, x.data, crop_size,
                                                          ten_crop_scales, device)
                    else:  # flip alone
                        mirrored = Tensor(x.data[..., ::-1].copy(), device=device)
                        scores = (softmax_positions(model(x).data)
                                  + softmax_positions(model(mirrored).data)) / 2
                    xp = backend.get_array_module(scores)
                    tgt = y.data.astype(xp.int64)
                    loss_sum += float(-xp.log(scores[xp.arange(n), tgt]).sum())
                elif ten_crop:
                    if x.ndim != 5:
                        raise ValueError(f"evaluate(ten_crop=True) expects (N, V, C, H, W) "
                                         f"batches, got shape {x.shape}")
                    v = x.shape[1]
                    out = model(x.reshape(n * v, *x.shape[2:])).data
                    xp = backend.get_array_module(out)
                    logp = _log_softmax(xp, out.astype(xp.float64))
                    scores = xp.exp(logp).reshape(n, v, -1).mean(axis=1)
                    tgt = y.data.astype(xp.int64)
                    loss_sum += float(-xp.log(scores[xp.arange(n), tgt]).sum())
                else:
                    out = model(x)
                    scores = out.data
                    if loss_fn is not None:
                        loss_sum += float(loss_fn(out, y).item()) * n
                    else:
                        xp = backend.get_array_module(scores)
                        logp = _log_softmax(xp, scores.astype(xp.float64))
                        tgt = y.data.astype(xp.int64)
                        loss_sum += float(-logp[xp.arange(n), tgt].sum())
                c = topk_correct(scores, y.data, ks)
                correct = [a + b for a, b in zip(correct, c)]
                seen += n
                bar.update(n)
    finally:
        if own_bar:
            bar.close()
        model.train(was_training)
    if reduce:
        tot = _dist.all_reduce_values([loss_sum, seen] + correct)
        loss_sum, seen, correct = float(tot[0]), int(tot[1]), [int(v) for v in tot[2:]]
    result = {"loss": loss_sum / seen if seen else float("nan")}
    for k, c in zip(ks, correct):
        result[f"top{k}"] = 1.0 - c / seen if seen else float("nan")
    result["samples"] = seen
    return result
