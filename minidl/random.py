"""The one random state of minidl.

Dropout masks and weight initializers draw from a single NumPy ``Generator`` (PCG64) kept
here, always on the CPU — so a seed gives the same initial weights and the same dropout masks on
"cpu" and "cuda". ``manual_seed(s)`` resets it; ``get_state()``/``set_state()`` save and restore
it exactly (checkpoints store it, so a resumed run draws the same masks as an uninterrupted one).

The data pipeline does not use this state: it derives each sample's generator from
(seed, epoch, index) so batches do not depend on the number of worker processes.
"""
import numpy as np

_generator = np.random.Generator(np.random.PCG64(0))


def manual_seed(seed):
    """Reset the global random state from an integer seed; returns the generator."""
    global _generator
    _generator = np.random.Generator(np.random.PCG64(int(seed)))
    return _generator


seed = manual_seed


def generator():
    """The global ``numpy.random.Generator`` (draw from it; do not keep it across a reseed)."""
    return _generator


def get_state():
    """A JSON-serializable copy of the global state (the PCG64 bit-generator state)."""
    st = _generator.bit_generator.state
    return {"bit_generator": st["bit_generator"],
            "state": {"state": int(st["state"]["state"]), "inc": int(st["state"]["inc"])},
            "has_uint32": int(st["has_uint32"]), "uinteger": int(st["uinteger"])}


def set_state(state):
    """Restore a state returned by :func:`get_state`."""
    if state.get("bit_generator") != "PCG64":
        raise ValueError(f"set_state: expected a PCG64 state, got {state.get('bit_generator')!r}")
    _generator.bit_generator.state = {
        "bit_generator": "PCG64",
        "state": {"state": int(state["state"]["state"]), "inc": int(state["state"]["inc"])},
        "has_uint32": int(state["has_uint32"]), "uinteger": int(state["uinteger"])}


def normal(mean=0.0, std=1.0, size=None):
    """float64 NumPy samples from N(mean, std^2)."""
    return _generator.normal(mean, std, size)


def uniform(low=0.0, high=1.0, size=None):
    """float64 NumPy samples from U[low, high)."""
    return _generator.uniform(low, high, size)


def random(size=None):
    """float64 NumPy samples from U[0, 1)."""
    return _generator.random(size)


def bernoulli_mask(shape, keep, dtype=np.float32):
    """A NumPy 0/1 mask of ``shape`` with P(1) = ``keep`` (dropout)."""
    return (_generator.random(shape, dtype=np.float32) < keep).astype(dtype)
