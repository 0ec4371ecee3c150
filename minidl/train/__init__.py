"""Running a training: metrics, checkpoints, the epoch loop, progress bars, logs and plots.

    from minidl.train import (train_one_epoch, evaluate, save_checkpoint, load_checkpoint,
                              EpochLog, plot_curves, topk_error, NonFiniteLossError)

See :mod:`minidl.train.loop` for a complete training script in a few lines.
"""
from minidl.train.metrics import AverageMeter, target_rank, topk_correct, topk_error
from minidl.train.checkpoint import (CheckpointError, atomic_write, load_checkpoint,
                                     read_checkpoint, save_checkpoint)
from minidl.train.progress import Progress
from minidl.train.log import EpochLog, append_jsonl, new_figure, plot_curves, read_jsonl
from minidl.train.views import dense_probabilities, multi_view_probabilities
from minidl.train.loop import NonFiniteLossError, evaluate, model_device, train_one_epoch

__all__ = ["AverageMeter", "target_rank", "topk_correct", "topk_error", "atomic_write",
           "CheckpointError", "load_checkpoint", "read_checkpoint", "save_checkpoint",
           "Progress", "EpochLog", "append_jsonl", "new_figure", "plot_curves", "read_jsonl",
           "NonFiniteLossError", "evaluate", "model_device", "train_one_epoch",
           "dense_probabilities", "multi_view_probabilities"]
