"""minidl.distributed in this process: the errors that need no second rank, and the imports.

The collectives and DistributedDataParallel themselves run under ``mpiexec -n 2`` in
tests/test_distributed_mpi.py.
"""
import os
import subprocess
import sys

import numpy as np
import pytest

import minidl.distributed as dist
from minidl.nn import parallel
from minidl import backend

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def no_launcher(monkeypatch):
    """An environment as outside any MPI launcher (and without torchrun's variables)."""
    for var in dist._LAUNCHER_SIZE_VARS + ("WORLD_SIZE", "RANK"):
        monkeypatch.delenv(var, raising=False)
    yield
    dist.destroy_process_group()


def test_import_minidl_imports_neither_mpi4py_nor_distributed_deps():
    code = ("import sys, minidl, minidl.distributed; "
            "from minidl.nn.parallel import DistributedDataParallel; "
            "assert minidl.nn.parallel.DistributedDataParallel is DistributedDataParallel; "
            "print('mpi4py' in sys.modules)")
    env = dict(os.environ, PYTHONPATH=ROOT)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("how", ["argument", "environment"])
def test_world_size_above_one_outside_a_launcher_is_a_clear_error(how, no_launcher,
                                                                   monkeypatch):
    kwargs = {}
    if how == "argument":
        kwargs["world_size"] = 2
    else:
        monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(dist.DistributedError) as e:
        dist.init_process_group("mpi", **kwargs)
    msg = str(e.value)
    assert "world size 2" in msg and "not started by an MPI launcher" in msg
    assert "mpiexec -n 2" in msg
    assert not dist.is_initialized()


@pytest.mark.skipif(backend.is_available(), reason="this machine has a GPU: the nccl error "
                    "case cannot happen here (the GPU check runs the nccl backend instead)")
def test_nccl_without_a_gpu_is_a_clear_error(no_launcher):
    with pytest.raises(dist.DistributedError) as e:
        dist.init_process_group("nccl")
    msg = str(e.value)
    assert "backend 'nccl' needs CuPy and a CUDA GPU" in msg
    assert "backend='mpi'" in msg
    assert not dist.is_initialized()


def test_unknown_backend_and_bad_arguments(no_launcher):
    with pytest.raises(ValueError, match="unknown backend 'gloo'"):
        dist.init_process_group("gloo")
    with pytest.raises(TypeError, match="world_size must be an int"):
        dist.init_process_group("mpi", world_size=2.0)


def test_calls_without_a_group_say_so():
    assert not dist.is_initialized()
    for fn, args in ((dist.get_rank, ()), (dist.get_world_size, ()), (dist.barrier, ()),
                     (dist.all_reduce, (np.zeros(2),)), (dist.broadcast, (np.zeros(2),))):
        with pytest.raises(dist.DistributedError, match="not initialized"):
            fn(*args)
    # the helpers for scripts treat "no group" as a group of one
    assert dist.rank_or_zero() == 0 and dist.world_size_or_one() == 1
    assert dist.is_main_process()
    np.testing.assert_array_equal(dist.all_reduce_values([1.5, 2]), [1.5, 2.0])



# AlexNet's parameters (Krizhevsky et al. 2012, two towers as grouped convolutions), in
# registration order, float32: 60,965,224 in all.
ALEXNET_SHAPES = [(96, 3, 11, 11), (96,), (256, 48, 5, 5), (256,), (384, 256, 3, 3), (384,),
                  (384, 192, 3, 3), (384,), (256, 192, 3, 3), (256,), (4096, 9216), (4096,),
                  (4096, 4096), (4096,), (1000, 4096), (1000,)]


class _Shape:
    """What bucket assignment reads of a parameter (no 244 MB allocation)."""

    def __init__(self, shape, dtype=np.float32, device="cpu"):
        self.shape, self.dtype, self.device = shape, np.dtype(dtype), device
        self.n = int(np.prod(shape))

    def numel(self):
        return self.n


def test_alexnet_gradients_make_a_handful_of_buckets():
    assert sum(_Shape(s).numel() for s in ALEXNET_SHAPES) == 60_965_224
    params = [_Shape(s) for s in ALEXNET_SHAPES][::-1]   # reduction order: last layer first
    buckets = parallel.assign_buckets(params, 4 * 2 ** 20)
    # by hand: fc8 (16.4 MB with its bias), fc7 (67 MB), fc6 (151 MB), conv5+conv4 (4.4 MB),
    # conv3+conv2 (4.7 MB), conv1 (0.14 MB)
    assert buckets == [[0, 1], [2, 3], [4, 5], [6, 7, 8, 9], [10, 11, 12, 13], [14, 15]]
    # one bucket per tensor when the cap is tiny; one in all when it is huge
    assert len(parallel.assign_buckets(params, 1)) == 16
    assert parallel.assign_buckets(params, 2 ** 40) == [list(range(16))]


def test_buckets_never_mix_dtypes_or_devices():
    params = [_Shape((2,)), _Shape((2,), np.float64), _Shape((2,), np.float64),
              _Shape((2,), np.float64, "cuda"), _Shape((2,))]
    assert parallel.assign_buckets(params, 2 ** 20) == [[0], [1, 2], [3], [4]]


def test_ddp_without_a_process_group_says_so():
    from minidl import nn
    with pytest.raises(dist.DistributedError, match="init_process_group"):
        parallel.DistributedDataParallel(nn.Linear(2, 3))
    with pytest.raises(TypeError, match="wraps a minidl Module"):
        parallel.DistributedDataParallel(lambda x: x)
    with pytest.raises(ValueError, match="bucket_cap_mb"):
        parallel.DistributedDataParallel(nn.Linear(2, 3), bucket_cap_mb=0)


def test_a_group_of_one_needs_no_mpi4py(no_launcher, monkeypatch):
    """Outside a launcher without mpi4py, init_process_group forms a group of one (what a
    single-GPU check of the nccl backend needs); under a launcher a missing mpi4py is an
    error that says what to install."""
    monkeypatch.setitem(sys.modules, "mpi4py", None)  # `import mpi4py` now fails
    assert not dist.is_available()
    dist.init_process_group("mpi", world_size=1, rank=0)
    assert (dist.get_rank(), dist.get_world_size(), dist.get_local_rank()) == (0, 1, 0)
    a = np.array([1.5, -2.0])
    dist.all_reduce(a)
    np.testing.assert_array_equal(a, [1.5, -2.0])
    dist.all_reduce(a, op="avg")
    np.testing.assert_array_equal(a, [1.5, -2.0])
    dist.broadcast(a, src=0)
    dist.barrier()
    assert dist.all_gather_object("x") == ["x"]
    dist.destroy_process_group()

    monkeypatch.setenv("PMI_SIZE", "2")
    with pytest.raises(dist.DistributedError, match=r"pip install \"minidl\[mpi\]\""):
        dist.init_process_group("mpi")
    assert not dist.is_initialized()
