"""Scenarios run by tests/test_distributed_mpi.py under ``mpiexec -n 2``:
``python tests/distributed_worker.py SCENARIO``. Each rank asserts its own results and prints
``OK <scenario> rank <r>`` at the end; any failure raises (exit code != 0, traceback on stderr).

Expected values are written by hand from the per-rank inputs (rank r holds values built from
r), never computed by the collective under test.
"""
import hashlib
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import minidl  # noqa: E402
import minidl.distributed as dist  # noqa: E402


def collectives():
    dist.init_process_group("mpi")
    r, w = dist.get_rank(), dist.get_world_size()
    assert w == 2, w
    assert dist.is_initialized() and dist.get_backend() == "mpi"
    assert dist.get_local_rank() == r  # both ranks on this host

    # all_reduce on a Tensor: rank 0 holds [1, 10, -2], rank 1 holds [2, 20, 5]
    t = minidl.Tensor(np.array([1.0, 10.0, -2.0]) if r == 0 else np.array([2.0, 20.0, 5.0]))
    arr, v0 = t.data, t._version
    dist.all_reduce(t)
    assert t.data is arr, "all_reduce must work in place"
    assert t._version == v0 + 1
    np.testing.assert_array_equal(t.data, [3.0, 30.0, 3.0])

    for op, want in (("avg", [1.5, 15.0, 1.5]), ("max", [2.0, 20.0, 5.0]),
                     ("min", [1.0, 10.0, -2.0]), ("prod", [2.0, 200.0, -10.0])):
        a = np.array([1.0, 10.0, -2.0]) if r == 0 else np.array([2.0, 20.0, 5.0])
        dist.all_reduce(a, op=op)
        np.testing.assert_array_equal(a, want, err_msg=op)

    # float32 and int64, a 0-d array
    a = np.array([0.25, 0.5], np.float32) * (r + 1)      # [0.25, 0.5] and [0.5, 1.0]
    dist.all_reduce(a, op=dist.ReduceOp.SUM)
    assert a.dtype == np.float32
    np.testing.assert_array_equal(a, np.array([0.75, 1.5], np.float32))
    i = np.array([3, -4], np.int64) if r == 0 else np.array([7, 9], np.int64)
    dist.all_reduce(i)
    np.testing.assert_array_equal(i, [10, 5])
    z = np.array(2.0 + r)                                 # 2 and 3
    dist.all_reduce(z)
    assert float(z) == 5.0

    # a non-contiguous view: reduced in place, the rest of the base array untouched
    base = np.full((2, 4), 100.0 * (r + 1))               # 100s on rank 0, 200s on rank 1
    view = base[:, ::2]
    dist.all_reduce(view)
    np.testing.assert_array_equal(base[:, ::2], np.full((2, 2), 300.0))
    np.testing.assert_array_equal(base[:, 1::2], np.full((2, 2), 100.0 * (r + 1)))

    # broadcast from rank 0 and from rank 1
    b = minidl.Tensor(np.arange(6.0).reshape(2, 3) * (r + 1))   # rank 1: twice rank 0's
    dist.broadcast(b, src=0)
    np.testing.assert_array_equal(b.data, np.arange(6.0).reshape(2, 3))
    c = np.array([7, 8, 9], np.int64) if r == 1 else np.zeros(3, np.int64)
    dist.broadcast(c, src=1)
    np.testing.assert_array_equal(c, [7, 8, 9])

    # host helpers
    got = dist.all_gather_object({"rank": r, "name": f"r{r}"})
    assert got == [{"rank": 0, "name": "r0"}, {"rank": 1, "name": "r1"}], got
    assert dist.broadcast_object("from-1" if r == 1 else None, src=1) == "from-1"
    vals = dist.all_reduce_values([1.0 + r, 10 * r])     # [1, 0] and [2, 10]
    np.testing.assert_array_equal(vals, [3.0, 10.0])

    # errors that every rank raises alike (no collective is left half-done)
    try:
        dist.all_reduce(np.zeros(2, np.int64), op="avg")
    except TypeError as e:
        assert "int64" in str(e)
    else:
        raise AssertionError("op='avg' on int64 was accepted")
    try:
        dist.all_reduce(t, op="median")
    except ValueError as e:
        assert "median" in str(e)
    else:
        raise AssertionError("op='median' was accepted")
    try:
        dist.broadcast(t, src=2)
    except ValueError as e:
        assert "src" in str(e) and "0..1" in str(e)
    else:
        raise AssertionError("src=2 was accepted with 2 ranks")
    try:
        dist.init_process_group("mpi")
    except dist.DistributedError as e:
        assert "already initialized" in str(e)
    else:
        raise AssertionError("a second init_process_group was accepted")

    dist.barrier()
    dist.destroy_process_group()
    assert not dist.is_initialized()
    print(f"OK collectives rank {r}")


def _digest(module):
    h = hashlib.sha256()
    for name, p in module.named_parameters():
        h.update(name.encode())
        h.update(np.ascontiguousarray(p.data).tobytes())
    return h.hexdigest()


SCENARIOS = {"collectives": collectives}


if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1] not in SCENARIOS:
        sys.exit(f"usage: distributed_worker.py {{{','.join(SCENARIOS)}}}")
    SCENARIOS[sys.argv[1]]()
