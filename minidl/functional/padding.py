"""torch-style padding: ``pad(x, (left, right, top, bottom, ...))`` from the LAST dimension.

ResNet's option-A shortcut is a strided slice plus a zero pad of the channels:
``pad(x[:, :, ::2, ::2], (0, 0, 0, 0, extra // 2, extra - extra // 2))``.
Built on :func:`minidl.ops.pad` (NumPy's ``pad_width``); the gradient is the un-padded slice.
"""
from minidl import ops


def pad(x, pad, mode="constant", value=0.0):
    """Pad ``x`` with ``value``; ``pad`` is a flat tuple of (before, after) pairs starting from
    the last dimension, as ``torch.nn.functional.pad``. Only ``mode="constant"``."""
    if mode != "constant":
        raise NotImplementedError(f"pad: only mode='constant' is implemented, got {mode!r}")
    pad = tuple(int(p) for p in pad)
    if len(pad) % 2 or len(pad) // 2 > x.ndim:
        raise ValueError(f"pad: expected an even number of at most {2 * x.ndim} values for "
                         f"input of shape {x.shape}, got {pad}")
    if any(p < 0 for p in pad):
        raise ValueError(f"pad: negative padding {pad} is not supported (slice instead)")
    widths = [(0, 0)] * x.ndim
    for i in range(len(pad) // 2):
        widths[x.ndim - 1 - i] = (pad[2 * i], pad[2 * i + 1])
    return ops.pad(x, tuple(widths), value=value)
