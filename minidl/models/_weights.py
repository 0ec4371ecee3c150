"""``weights=`` for the model factories: load a checkpoint into a freshly built model."""
import os
from collections.abc import Mapping

from minidl.tensor import Tensor


def _state_dict_of(obj, source):
    """The state dict inside what :func:`minidl.load` returned (a state dict, or a training
    checkpoint holding one under "state_dict" / "model")."""
    if not isinstance(obj, Mapping):
        raise TypeError(f"weights={source!r}: expected a state dict (a mapping of names to "
                        f"tensors), got {type(obj).__name__}")
    if obj and not any(isinstance(v, Tensor) for v in obj.values()):
        for key in ("state_dict", "model", "model_state_dict"):
            if isinstance(obj.get(key), Mapping):
                return obj[key]
    return obj


def load_weights(model, weights):
    """Load ``weights`` (None, a path for :func:`minidl.load`, or a state dict) into ``model``
    with ``strict=True``; returns the model."""
    if weights is None:
        return model
    if isinstance(weights, (str, os.PathLike)):
        from minidl.serialization import load
        state = _state_dict_of(load(weights), os.fspath(weights))
    else:
        state = _state_dict_of(weights, type(weights).__name__)
    model.load_state_dict(state, strict=True)
    return model
