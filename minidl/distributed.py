"""Data-parallel collectives over MPI (CPU, NumPy arrays) and NCCL (GPU, CuPy arrays).

PyTorch's ``torch.distributed`` shape, on engines that already run clusters::

    import minidl.distributed as dist

    dist.init_process_group("mpi")        # or "nccl"; the ranks come from the MPI launcher
    rank, world = dist.get_rank(), dist.get_world_size()
    dist.all_reduce(t)                    # in place: t becomes the sum over the ranks
    dist.broadcast(t, src=0)              # in place: every rank gets rank 0's values
    dist.barrier()
    dist.destroy_process_group()

launched as ``mpiexec -n 2 python train.py``. A script started without a launcher is a group
of one (rank 0, world size 1), so the same script runs alone too.

Backends:

* ``"mpi"`` (mpi4py; ``pip install "minidl[mpi]"`` brings mpi4py and MPICH): collectives on
  NumPy arrays, on one host or across hosts.
* ``"nccl"`` (``cupy.cuda.nccl``): collectives on CuPy arrays, one GPU per rank. Each rank takes
  the GPU numbered by its rank among the ranks on its host (the local rank) and makes it
  CuPy's current device; rank 0 creates the NCCL unique id and sends it to the others over MPI,
  so MPI (mpi4py) is needed for "nccl" too. Collectives run on CuPy's current stream.

Tensors (:class:`minidl.Tensor`) and raw arrays are accepted; operations are in place, on the
array itself (views and other holders of it see the result), and a Tensor's ``_version`` is
bumped. ``op`` is one of "sum", "avg" (the mean over ranks), "prod", "min", "max" (or the
:class:`ReduceOp` constants).

Importing this module imports neither mpi4py nor CuPy; :func:`init_process_group` does. A
process that no launcher started and that has no mpi4py can still form a group of one (both
backends; NCCL's unique id then needs no MPI), so single-GPU checks run without MPI.
Errors are :class:`DistributedError` (a RuntimeError) with what is missing and what to run.
"""
import os

import numpy as np

from minidl import backend

__all__ = ["DistributedError", "ReduceOp", "init_process_group", "is_initialized",
           "is_available", "get_rank", "get_world_size", "get_local_rank", "get_backend",
           "all_reduce", "broadcast", "barrier", "all_gather_object", "broadcast_object",
           "all_reduce_values", "destroy_process_group", "rank_or_zero",
           "world_size_or_one", "is_main_process"]

BACKENDS = ("mpi", "nccl")


class DistributedError(RuntimeError):
    """A process group could not be set up or used (missing library, GPU or launcher; a
    collective on the wrong device; no group initialized)."""


class ReduceOp:
    """Reduction names, as in ``torch.distributed.ReduceOp`` (plain strings here)."""
    SUM = "sum"
    AVG = "avg"
    PRODUCT = "prod"
    MIN = "min"
    MAX = "max"


_OPS = ("sum", "avg", "prod", "min", "max")
_OP_ALIASES = {"mean": "avg", "product": "prod"}

# Environment variables that MPI launchers set in the processes they start (MPICH/Hydra and
# Intel MPI: PMI_*; Open MPI: OMPI_COMM_WORLD_*; PMIx-based launchers; MVAPICH; Slurm's srun).
_LAUNCHER_SIZE_VARS = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE", "MV2_COMM_WORLD_SIZE",
                       "SLURM_NTASKS")


class _SelfComm:
    """The few mpi4py communicator methods used here, for a group of one process without
    mpi4py (collectives are identities)."""

    def Get_size(self):
        return 1

    def Get_rank(self):
        return 0

    def Barrier(self):
        pass

    def allreduce(self, obj):
        return obj

    def allgather(self, obj):
        return [obj]

    def bcast(self, obj, root=0):
        return obj


class _Group:
    """The default (and only) process group."""

    def __init__(self, backend_name, comm, rank, world_size, local_rank, local_size):
        self.backend = backend_name
        self.comm = comm                  # the mpi4py communicator (both backends)
        self.rank = rank
        self.world_size = world_size
        self.local_rank = local_rank
        self.local_size = local_size
        self.nccl = None                  # cupy.cuda.nccl.NcclCommunicator for "nccl"
        self.device_id = None             # the GPU of this rank for "nccl"


_group = None


# ----------------------------------------------------------------------------------------------
# set-up


def _import_mpi(purpose):
    try:
        from mpi4py import MPI
    except ImportError as e:
        raise DistributedError(
            f"{purpose} needs mpi4py and an MPI library, and mpi4py cannot be imported ({e}); "
            "install them with pip install \"minidl[mpi]\" (mpi4py and mpich), then launch with "
            "mpiexec -n <ranks> python <script>") from e
    return MPI


def is_available():
    """True when mpi4py can be imported (the "mpi" backend can be initialized)."""
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return False
    return True


def _launcher_world_size():
    """The world size announced by an MPI launcher's environment, or None."""
    for var in _LAUNCHER_SIZE_VARS:
        v = os.environ.get(var)
        if v:
            try:
                return int(v)
            except ValueError:
                continue
    return None


def _check_int(name, value):
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"init_process_group: {name} must be an int, got "
                        f"{type(value).__name__} {value!r}")
    return int(value)


def init_process_group(backend="mpi", world_size=None, rank=None):
    """Join the default process group; the ranks and the world size come from the MPI launcher.

    Args:
        backend: ``"mpi"`` (NumPy arrays, mpi4py) or ``"nccl"`` (CuPy arrays, one GPU per rank;
            the NCCL unique id travels over MPI).
        world_size, rank: optional checks. When given (or set in the environment as
            ``WORLD_SIZE`` / ``RANK``, as torchrun does) they must match what the launcher says;
            asking for a world size above 1 in a process that no launcher started raises
            :class:`DistributedError` saying to run it under ``mpiexec -n <world_size>``.

    Raises DistributedError when a group is already initialized, mpi4py is missing, or (for
    "nccl") CuPy, NCCL or enough GPUs are missing; ValueError for an unknown backend.
    """
    global _group
    if not isinstance(backend, str) or backend.lower() not in BACKENDS:
        raise ValueError(f"init_process_group: unknown backend {backend!r}; expected one of "
                         f"{BACKENDS}")
    backend = backend.lower()
    if _group is not None:
        raise DistributedError(f"init_process_group: the default process group is already "
                               f"initialized (backend {_group.backend!r}, rank {_group.rank} of "
                               f"{_group.world_size}); call destroy_process_group() first")
    world_size = _check_int("world_size", world_size)
    rank = _check_int("rank", rank)
    if world_size is None and os.environ.get("WORLD_SIZE"):
        world_size = int(os.environ["WORLD_SIZE"])
    if rank is None and os.environ.get("RANK"):
        rank = int(os.environ["RANK"])
    launched = _launcher_world_size()
    if world_size is not None and world_size > 1 and launched is None:
        raise DistributedError(
            f"init_process_group(backend={backend!r}) asked for world size {world_size}, but this "
            f"process was not started by an MPI launcher (none of {', '.join(_LAUNCHER_SIZE_VARS)}"
            f" is set), so it would be alone; start every rank with "
            f"mpiexec -n {world_size} python <script>")
    if backend == "nccl":
        _check_nccl_available()
    if launched is None and not is_available():
        # no launcher and no mpi4py: a group of one needs no MPI (e.g. a GPU machine running
        # the nccl backend at world size 1)
        comm, MPI = _SelfComm(), None
    else:
        MPI = _import_mpi(f"init_process_group(backend={backend!r})")
        comm = MPI.COMM_WORLD
    size, me = comm.Get_size(), comm.Get_rank()
    if world_size is not None and world_size != size:
        hint = ("the launcher started only 1 process" if size == 1 else
                f"the launcher started {size} processes")
        raise DistributedError(f"init_process_group: world_size {world_size} was asked for, but "
                               f"{hint}; run mpiexec -n {world_size} or drop the world size")
    if rank is not None and rank != me:
        raise DistributedError(f"init_process_group: rank {rank} was asked for, but the MPI "
                               f"launcher made this process rank {me}")
    if MPI is None:
        local_rank, local_size = 0, 1
    else:
        node = comm.Split_type(MPI.COMM_TYPE_SHARED, key=me)
        local_rank, local_size = node.Get_rank(), node.Get_size()
        node.Free()
    group = _Group(backend, comm, me, size, local_rank, local_size)
    if backend == "nccl":
        _init_nccl(group)
    _group = group


def _check_nccl_available():
    cp = backend.cupy_module()
    if cp is None or not backend.is_available():
        raise DistributedError(f"backend 'nccl' needs CuPy and a CUDA GPU for every rank, but "
                               f"{backend._why_no_cuda()}; use backend='mpi' for CPU tensors")
    try:
        from cupy.cuda import nccl
    except Exception as e:  # ImportError, or CuPy built without NCCL
        raise DistributedError(f"backend 'nccl' needs NCCL through cupy.cuda.nccl, which cannot "
                               f"be imported ({type(e).__name__}: {e}); install the NCCL "
                               "library for your CuPy (pip install nvidia-nccl-cu12, or "
                               "python -m cupyx.tools.install_library --library nccl)") from e
    if not getattr(nccl, "available", True):
        raise DistributedError("backend 'nccl': this CuPy was built without NCCL support "
                               "(cupy.cuda.nccl.available is False); install the NCCL library "
                               "for it")


def _init_nccl(group):
    cp = backend.cupy_module()
    from cupy.cuda import nccl
    n_gpus = cp.cuda.runtime.getDeviceCount()
    # every rank must learn whether any rank lacks a GPU, or the others would wait forever
    short = group.comm.allreduce(int(group.local_size > n_gpus))
    if short:
        raise DistributedError(f"backend 'nccl' needs one GPU per rank: a host runs "
                               f"{group.local_size} ranks but this one sees {n_gpus} GPU(s) "
                               "(CUDA_VISIBLE_DEVICES?); start fewer ranks per host")
    group.device_id = group.local_rank
    cp.cuda.Device(group.device_id).use()
    uid = nccl.get_unique_id() if group.rank == 0 else None
    uid = group.comm.bcast(uid, root=0)
    group.nccl = nccl.NcclCommunicator(group.world_size, uid, group.rank)


def destroy_process_group():
    """Leave the default process group (a no-op when none is initialized). MPI itself stays
    initialized until the process exits, so a new group can be initialized afterwards."""
    global _group
    g, _group = _group, None
    if g is not None and g.nccl is not None:
        try:
            g.nccl.destroy()
        except Exception:
            pass


def is_initialized():
    """True between :func:`init_process_group` and :func:`destroy_process_group`."""
    return _group is not None


def _require(fn):
    if _group is None:
        raise DistributedError(f"{fn}: the default process group is not initialized; call "
                               "minidl.distributed.init_process_group() first")
    return _group


def get_rank():
    """This process's rank in the default group (0 .. world_size - 1)."""
    return _require("get_rank").rank


def get_world_size():
    """The number of processes in the default group."""
    return _require("get_world_size").world_size


def get_local_rank():
    """This process's rank among the group's processes on the same host (its GPU for NCCL)."""
    return _require("get_local_rank").local_rank


def get_backend():
    """``"mpi"`` or ``"nccl"``."""
    return _require("get_backend").backend


# ----------------------------------------------------------------------------------------------
# collectives


def _normalize_op(op):
    if not isinstance(op, str):
        raise TypeError(f"all_reduce: op must be one of {_OPS} (or a ReduceOp constant), got "
                        f"{type(op).__name__} {op!r}")
    o = _OP_ALIASES.get(op.lower(), op.lower())
    if o not in _OPS:
        raise ValueError(f"all_reduce: unknown op {op!r}; expected one of {_OPS}")
    return o


def _array_of(tensor, fn):
    """The array behind ``tensor`` (a Tensor or a raw NumPy/CuPy array)."""
    from minidl.tensor import Tensor
    if isinstance(tensor, Tensor):
        return tensor.data
    cp = backend.cupy_module()
    if isinstance(tensor, np.ndarray) or (cp is not None and isinstance(tensor, cp.ndarray)):
        return tensor
    raise TypeError(f"{fn}: expected a minidl Tensor or an array, got {type(tensor).__name__}")


def _bump(tensor):
    from minidl.tensor import Tensor
    if isinstance(tensor, Tensor):
        tensor._version += 1


def _check_device(g, arr, fn):
    dev = backend.device_of(arr)
    if g.backend == "mpi" and dev != "cpu":
        raise DistributedError(f"{fn}: backend 'mpi' works on NumPy (cpu) arrays, got a {dev} "
                               f"array of shape {tuple(arr.shape)} and dtype {arr.dtype}; move it "
                               "with .cpu() or use backend='nccl'")
    if g.backend == "nccl":
        if dev != "cuda":
            raise DistributedError(f"{fn}: backend 'nccl' works on CuPy (cuda) arrays, got a "
                                   f"{dev} array of shape {tuple(arr.shape)} and dtype "
                                   f"{arr.dtype}; move it with .cuda() or use backend='mpi'")
        if arr.device.id != g.device_id:
            raise DistributedError(f"{fn}: the array is on GPU {arr.device.id}, but this rank's "
                                   f"NCCL communicator uses GPU {g.device_id}")


def _mpi_op(op):
    from mpi4py import MPI
    return {"sum": MPI.SUM, "avg": MPI.SUM, "prod": MPI.PROD, "min": MPI.MIN,
            "max": MPI.MAX}[op]


_NCCL_TYPES = {"float16": "NCCL_FLOAT16", "float32": "NCCL_FLOAT32",
               "float64": "NCCL_FLOAT64", "int8": "NCCL_INT8", "uint8": "NCCL_UINT8",
               "int32": "NCCL_INT32", "uint32": "NCCL_UINT32", "int64": "NCCL_INT64",
               "uint64": "NCCL_UINT64"}
_NCCL_OPS = {"sum": "NCCL_SUM", "avg": "NCCL_SUM", "prod": "NCCL_PROD", "min": "NCCL_MIN",
             "max": "NCCL_MAX"}


def _nccl_dtype(arr, fn):
    from cupy.cuda import nccl
    name = _NCCL_TYPES.get(np.dtype(arr.dtype).name)
    if name is None:
        raise TypeError(f"{fn}: NCCL cannot reduce dtype {arr.dtype} (shape {tuple(arr.shape)});"
                        f" supported: {', '.join(_NCCL_TYPES)}")
    return getattr(nccl, name)


def _contiguous(arr):
    """(a C-contiguous array to work on, whether it is a copy)."""
    if arr.flags.c_contiguous:
        return arr, False
    xp = backend.get_array_module(arr)
    return xp.ascontiguousarray(arr), True


def all_reduce(tensor, op="sum"):
    """Reduce ``tensor`` over all ranks, in place: afterwards every rank holds the result.

    ``op``: "sum" (default), "avg" (sum / world size; floating dtypes), "prod", "min", "max".
    Every rank must call it with the same shape and dtype, in the same order as the other
    collectives. Returns None (like PyTorch without ``async_op``).
    """
    g = _require("all_reduce")
    op = _normalize_op(op)  # (a group of one without mpi4py never reaches MPI below)
    arr = _array_of(tensor, "all_reduce")
    _check_device(g, arr, "all_reduce")
    if op == "avg" and arr.dtype.kind not in "fc":
        raise TypeError(f"all_reduce(op='avg') needs a floating dtype, got {arr.dtype} "
                        f"(shape {tuple(arr.shape)}); reduce with 'sum' and divide")
    if g.world_size > 1 or g.backend == "nccl":
        work, copied = _contiguous(arr)
        if g.backend == "mpi":
            from mpi4py import MPI
            try:
                g.comm.Allreduce(MPI.IN_PLACE, work, op=_mpi_op(op))
            except (KeyError, TypeError) as e:  # a dtype MPI has no datatype for
                raise TypeError(f"all_reduce: MPI cannot reduce dtype {arr.dtype} (shape "
                                f"{tuple(arr.shape)}): {e}") from e
        else:
            from cupy.cuda import nccl
            cp = backend.cupy_module()
            g.nccl.allReduce(work.data.ptr, work.data.ptr, work.size, _nccl_dtype(work,
                             "all_reduce"), getattr(nccl, _NCCL_OPS[op]),
                             cp.cuda.get_current_stream().ptr)
        if copied:
            arr[...] = work
    if op == "avg":
        arr /= g.world_size
    _bump(tensor)


def broadcast(tensor, src=0):
    """Overwrite ``tensor`` on every rank with rank ``src``'s values, in place."""
    g = _require("broadcast")
    if isinstance(src, bool) or not isinstance(src, (int, np.integer)) \
            or not 0 <= src < g.world_size:
        raise ValueError(f"broadcast: src must be a rank in 0..{g.world_size - 1}, got {src!r}")
    arr = _array_of(tensor, "broadcast")
    _check_device(g, arr, "broadcast")
    if g.world_size > 1 or g.backend == "nccl":
        work, copied = _contiguous(arr)
        if g.backend == "mpi":
            try:
                g.comm.Bcast(work, root=int(src))
            except (KeyError, TypeError) as e:
                raise TypeError(f"broadcast: MPI cannot send dtype {arr.dtype} (shape "
                                f"{tuple(arr.shape)}): {e}") from e
        else:
            cp = backend.cupy_module()
            g.nccl.bcast(work.data.ptr, work.size, _nccl_dtype(work, "broadcast"), int(src),
                         cp.cuda.get_current_stream().ptr)
        if copied:
            arr[...] = work
    _bump(tensor)


def barrier():
    """Wait until every rank has reached this call (and, for NCCL, until queued GPU work is
    done)."""
    g = _require("barrier")
    if g.backend == "nccl":
        backend.synchronize("cuda")
    g.comm.Barrier()


def all_gather_object(obj):
    """A list of every rank's ``obj`` (picklable), in rank order, on every rank.

    (PyTorch fills a list passed in; here the list is returned.)"""
    g = _require("all_gather_object")
    return g.comm.allgather(obj)


def broadcast_object(obj, src=0):
    """Rank ``src``'s ``obj`` (picklable) on every rank."""
    g = _require("broadcast_object")
    return g.comm.bcast(obj, root=src)


def all_reduce_values(values, op="sum"):
    """Reduce a list of host numbers (metrics: loss sums, counts) over the ranks; returns a
    NumPy float64 array. Goes over MPI whatever the backend, so it needs no GPU array; without
    an initialized group it returns the values themselves (a group of one)."""
    arr = np.array(values, dtype=np.float64).reshape(-1)
    op = _normalize_op(op)
    if _group is None or _group.world_size == 1:
        return arr
    _group.comm.Allreduce(_mpi_inplace(), arr, op=_mpi_op(op))
    if op == "avg":
        arr /= _group.world_size
    return arr


def _mpi_inplace():
    from mpi4py import MPI
    return MPI.IN_PLACE


# ----------------------------------------------------------------------------------------------
# helpers for scripts (no group initialized: a group of one)


def rank_or_zero():
    """:func:`get_rank` when a group is initialized, else 0."""
    return _group.rank if _group is not None else 0


def world_size_or_one():
    """:func:`get_world_size` when a group is initialized, else 1."""
    return _group.world_size if _group is not None else 1


def is_main_process():
    """True on rank 0, and in a process without a group: where to print, log and save."""
    return rank_or_zero() == 0
