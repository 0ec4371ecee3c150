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


class Net(minidl.nn.Module):
    """conv -> relu -> pool -> linear, plus a frozen scale (requires_grad False), a parameter
    the forward never uses, and an ``extra`` branch used only when asked (per rank)."""

    def __init__(self):
        super().__init__()
        nn = minidl.nn
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(4 * 4 * 4, 5)
        self.extra = nn.Linear(4 * 4 * 4, 5)
        self.scale = nn.Parameter(np.array(0.5), requires_grad=False)
        self.unused = nn.Parameter(np.ones(3))

    def forward(self, x, use_extra=False):
        h = self.pool(self.conv(x).relu() * self.scale).flatten(1)
        out = self.fc(h)
        if use_extra:
            out = out + self.extra(h)
        return out


def _build(seed):
    minidl.manual_seed(seed)
    return Net().double()


def _sgd(model):
    return minidl.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)


def _data(steps, batch):
    rng = np.random.default_rng(7)
    x = rng.standard_normal((steps, batch, 3, 8, 8))
    y = rng.integers(0, 5, (steps, batch))
    return x, y


def ddp_matches_one_process():
    """2 ranks at batch B == 1 process at batch 2B (float64, 1e-10) over SGD steps with momentum
    and weight decay, from different per-rank initializations; ranks end bit-identical."""
    import minidl.functional as F
    from minidl.nn.parallel import DistributedDataParallel as DDP
    dist.init_process_group("mpi")
    r, w = dist.get_rank(), dist.get_world_size()
    B, steps = 6, 4
    x, y = _data(steps, w * B)

    # the reference: ONE process, rank 0's initialization, the whole batch of w*B
    ref = _build(seed=100)
    opt_ref = _sgd(ref)
    for k in range(steps):
        loss = F.cross_entropy(ref(minidl.Tensor(x[k])), minidl.Tensor(y[k]))
        opt_ref.zero_grad()
        loss.backward()
        opt_ref.step()

    model = _build(seed=100 + r)          # each rank its own initialization
    own_init = {n: p.data.copy() for n, p in model.named_parameters()}
    rank0_init = {n: p.data.copy() for n, p in _build(seed=100).named_parameters()}
    if r == 1:
        assert any(not np.array_equal(own_init[n], rank0_init[n]) for n in own_init)
    # tiny buckets: the reduction runs over several buckets
    ddp = DDP(model, bucket_cap_mb=1000 / 2 ** 20)
    for n, p in model.named_parameters():  # the broadcast at wrap
        np.testing.assert_array_equal(p.data, rank0_init[n], err_msg=n)
    nb = len(ddp.bucket_sizes)
    assert nb >= 3, ddp.bucket_sizes
    # trainable parameters: conv.weight, conv.bias, fc.weight, fc.bias, extra.weight,
    # extra.bias, unused (scale is frozen)
    assert sum(ddp.bucket_sizes) == 7, ddp.bucket_sizes

    opt = _sgd(ddp)
    for k in range(steps):
        xs = minidl.Tensor(x[k, r * B:(r + 1) * B])
        ys = minidl.Tensor(y[k, r * B:(r + 1) * B])
        loss = F.cross_entropy(ddp(xs), ys)
        opt.zero_grad()
        loss.backward()
        assert model.unused.grad is None and model.extra.weight.grad is None
        assert model.scale.grad is None
        opt.step()
    assert ddp.stats["allreduce_calls"] == steps * nb, (ddp.stats, nb)
    assert ddp.stats["steps"] == steps

    ref_params = dict(ref.named_parameters())
    for n, p in model.named_parameters():
        err = float(np.max(np.abs(p.data - ref_params[n].data)))
        assert err <= 1e-10, (n, err)
    # parameters without a gradient were not touched (no weight decay step on them)
    np.testing.assert_array_equal(model.unused.data, rank0_init["unused"])
    np.testing.assert_array_equal(model.extra.weight.data, rank0_init["extra.weight"])
    digests = dist.all_gather_object(_digest(model))
    assert digests[0] == digests[1], "the ranks' parameters are not bit-identical"
    dist.destroy_process_group()
    print(f"OK ddp_matches_one_process rank {r}")


def ddp_unused_on_one_rank():
    """A parameter that only rank 1 uses gets the mean over the ranks (rank 1's gradient / 2)
    on both ranks; one that no rank uses keeps .grad None; no_sync accumulates locally."""
    import minidl.functional as F
    from minidl.nn.parallel import DistributedDataParallel as DDP
    dist.init_process_group("mpi")
    r, w = dist.get_rank(), dist.get_world_size()
    B = 4
    x, y = _data(2, w * B)
    xs, ys = minidl.Tensor(x[0, r * B:(r + 1) * B]), minidl.Tensor(y[0, r * B:(r + 1) * B])

    # each rank's local gradients, from a plain copy of rank 0's initialization
    local = _build(seed=100)
    F.cross_entropy(local(xs, use_extra=(r == 1)), ys).backward()
    local_grads = {n: (None if p.grad is None else p.grad.data.copy())
                   for n, p in local.named_parameters()}
    all_local = dist.all_gather_object(local_grads)

    model = _build(seed=100 + r)
    ddp = DDP(model)  # default 4 MB buckets: everything in one bucket here
    assert ddp.bucket_sizes == [7], ddp.bucket_sizes
    F.cross_entropy(ddp(xs, use_extra=(r == 1)), ys).backward()
    grads = dict(model.named_parameters())
    np.testing.assert_allclose(grads["extra.weight"].grad.data,
                               all_local[1]["extra.weight"] / 2, rtol=0, atol=1e-15)
    np.testing.assert_allclose(grads["fc.weight"].grad.data,
                               (all_local[0]["fc.weight"] + all_local[1]["fc.weight"]) / 2,
                               rtol=0, atol=1e-15)
    assert grads["unused"].grad is None
    assert ddp.stats["allreduce_calls"] == 1

    # no_sync: two local backward passes, then one synced: the mean of the summed gradients
    ddp.zero_grad()
    with ddp.no_sync():
        F.cross_entropy(ddp(xs, use_extra=(r == 1)), ys).backward()
    assert ddp.stats["allreduce_calls"] == 1
    F.cross_entropy(ddp(xs, use_extra=(r == 1)), ys).backward()
    assert ddp.stats["allreduce_calls"] == 2
    for name in ("conv.weight", "extra.weight"):  # (2 g0 + 2 g1) / 2, g0 of extra being 0
        want = all_local[1][name] + (0 if all_local[0][name] is None else all_local[0][name])
        np.testing.assert_allclose(grads[name].grad.data, want, rtol=1e-12, atol=1e-14,
                                   err_msg=name)
    assert grads["unused"].grad is None

    # a second backward through the same forward is refused
    out = F.cross_entropy(ddp(xs), ys)
    out.backward(retain_graph=True)
    try:
        out.backward()
    except RuntimeError as e:
        assert "not expected in this step" in str(e)
    else:
        raise AssertionError("a second backward through one forward was accepted")
    # a forward whose backward never comes (say a NaN loss), then no_sync: nothing is reduced
    calls = ddp.stats["allreduce_calls"]
    ddp(xs)
    with ddp.no_sync():
        F.cross_entropy(ddp(xs), ys).backward()
    assert ddp.stats["allreduce_calls"] == calls

    # wrapping the module again once the old wrapper is gone: one reduction per step, not two
    import gc
    del ddp
    gc.collect()
    ddp2 = DDP(model)
    model.zero_grad()
    F.cross_entropy(ddp2(xs, use_extra=(r == 1)), ys).backward()
    assert ddp2.stats["allreduce_calls"] == 1
    np.testing.assert_allclose(grads["fc.weight"].grad.data,
                               (all_local[0]["fc.weight"] + all_local[1]["fc.weight"]) / 2,
                               rtol=1e-12, atol=1e-15)
    try:
        DDP(model)
    except RuntimeError as e:
        assert "already wrapped" in str(e)
    else:
        raise AssertionError("a second live wrapper was accepted")
    dist.destroy_process_group()
    print(f"OK ddp_unused_on_one_rank rank {r}")


def train_loop_reduces():
    """train_one_epoch / evaluate with DDP and each rank's share of every batch report the
    figures of the whole batch (those of one process with the whole batch), end with the same
    parameters, and print no progress bar on rank 1."""
    import minidl.functional as F
    from minidl.nn.parallel import DistributedDataParallel as DDP
    from minidl.train import evaluate, train_one_epoch
    dist.init_process_group("mpi")
    r, w = dist.get_rank(), dist.get_world_size()
    B, steps = 5, 3
    x, y = _data(steps, w * B)
    full = [(x[k], y[k]) for k in range(steps)]
    mine = [(x[k, r * B:(r + 1) * B], y[k, r * B:(r + 1) * B]) for k in range(steps)]

    ref = _build(seed=100)
    one = train_one_epoch(ref, full, _sgd(ref), F.cross_entropy, progress=False,
                          distributed=False)
    ev_one = evaluate(ref, full, distributed=False)

    model = _build(seed=100 + r)
    ddp = DDP(model)
    seen_steps = []
    res = train_one_epoch(ddp, mine, _sgd(ddp), F.cross_entropy, progress=False,
                          on_step=lambda info: seen_steps.append((info["loss"], info["top1"],
                                                                  info["samples"])))
    assert res["samples"] == steps * w * B == one["samples"], (res, one)
    for key in ("loss", "top1", "top5"):
        assert abs(res[key] - one[key]) <= 1e-12, (key, res[key], one[key])
    assert [s[2] for s in seen_steps] == [w * B] * steps
    ev = evaluate(ddp, mine)
    for key in ("loss", "top1", "top5", "samples"):
        assert abs(ev[key] - ev_one[key]) <= 1e-12, (key, ev[key], ev_one[key])
    # per rank when asked: this rank's own share only
    ev_mine = evaluate(ddp, mine, distributed=False)
    assert ev_mine["samples"] == steps * B
    ref_params = dict(ref.named_parameters())
    for n, p in model.named_parameters():
        assert float(np.max(np.abs(p.data - ref_params[n].data))) <= 1e-10, n
    # the progress bar: rank 1 never draws one, even when asked to
    from minidl.train import loop
    bar, _ = loop._make_progress(True, 10, "x")
    if r != 0:
        assert bar.quiet
    bar.close()
    dist.destroy_process_group()
    print(f"OK train_loop_reduces rank {r}")


class _Arrays:
    """A map-style dataset of (image, label) pairs from two arrays."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


def ddp_with_sharded_loader():
    """The whole stack: DataLoader sharding (num_replicas/rank from the process group; shuffled,
    seeded) + DDP + train_one_epoch for two epochs at batch B per rank equal one process's loader
    at batch 2B (1e-10, float64), ranks bit-identical."""
    from minidl.data import DataLoader
    from minidl.nn.parallel import DistributedDataParallel as DDP
    from minidl.train import train_one_epoch
    import minidl.functional as F
    dist.init_process_group("mpi")
    r, w = dist.get_rank(), dist.get_world_size()
    B = 4
    rng = np.random.default_rng(11)
    ds = _Arrays(rng.standard_normal((40, 3, 8, 8)), rng.integers(0, 5, 40))

    ref = _build(seed=100)
    opt_ref = _sgd(ref)
    one = DataLoader(ds, batch_size=w * B, shuffle=True, seed=3, num_replicas=1, rank=0)
    model = _build(seed=100 + r)
    ddp = DDP(model)
    opt = _sgd(ddp)
    mine = DataLoader(ds, batch_size=B, shuffle=True, seed=3)   # sharded by the group
    assert (mine.num_replicas, mine.rank) == (w, r)
    for _ in range(2):
        a = train_one_epoch(ref, one, opt_ref, F.cross_entropy, progress=False,
                            distributed=False)
        b = train_one_epoch(ddp, mine, opt, F.cross_entropy, progress=False)
        assert a["samples"] == b["samples"] == 40 and a["steps"] == b["steps"] == 5
        assert abs(a["loss"] - b["loss"]) <= 1e-12, (a["loss"], b["loss"])
    ref_params = dict(ref.named_parameters())
    for n, p in model.named_parameters():
        err = float(np.max(np.abs(p.data - ref_params[n].data)))
        assert err <= 1e-10, (n, err)
    digests = dist.all_gather_object(_digest(model))
    assert digests[0] == digests[1], "the ranks' parameters are not bit-identical"
    dist.destroy_process_group()
    print(f"OK ddp_with_sharded_loader rank {r}")


SCENARIOS = {"ddp_with_sharded_loader": ddp_with_sharded_loader,
             "train_loop_reduces": train_loop_reduces, "collectives": collectives, "ddp_matches_one_process": ddp_matches_one_process,
             "ddp_unused_on_one_rank": ddp_unused_on_one_rank}


if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1] not in SCENARIOS:
        sys.exit(f"usage: distributed_worker.py {{{','.join(SCENARIOS)}}}")
    SCENARIOS[sys.argv[1]]()
