"""DataLoader: batches of minidl Tensors, a reproducible order, worker processes, exact resume,
and sharding across data-parallel ranks.

Reproducibility, whatever ``num_workers`` is:

* the sample order of epoch ``e`` is ``shuffle_rng(seed, e).permutation(len(dataset))`` (or
  ``0..n-1`` without shuffle);
* sample ``i`` of epoch ``e`` is loaded with ``dataset.getitem(i, sample_rng(seed, e, i))``,
  whose generator the transforms draw from.

So a batch is a pure function of ``(seed, epoch, batch number)`` (and, when sharded, of
``(num_replicas, rank)``): which process loads it does not matter, and a loader restored from
:meth:`DataLoader.state_dict` yields exactly the batches the original would have yielded next.

Epochs and iterators (PyTorch's semantics, plus an epoch counter that fixes the order):
``iter(loader)`` starts the current epoch from its first batch, so ``next(iter(loader))`` peeks
without dropping anything; running an iterator to the end of the epoch advances ``epoch`` by one;
an iterator left early (``break``) leaves ``epoch`` where it was. The one exception is the first
iterator after :meth:`DataLoader.load_state_dict`, which resumes at the saved position.

Batches: the samples of a batch go through ``collate_fn`` (default :func:`default_collate`,
torch's rules: arrays and numbers are stacked, tuples/lists/dicts are collated field by field),
then every array in the result arrives as a :class:`minidl.Tensor` on ``device``.

Sharding (``num_replicas=W``, ``rank=r``; by default taken from an initialized
:mod:`minidl.distributed` process group): every rank draws the same order from the seed; batch
``k`` of rank ``r`` is the ``r``-th ``batch_size`` slice of the batch ``k`` that a single process
with ``batch_size * W`` would load, so the union of the ranks' ``k``-th batches is that batch.

Workers (``num_workers > 0``) are processes (``fork`` where the platform has it, else ``spawn``,
which needs a picklable dataset and collate_fn and an ``if __name__ == "__main__":`` guard in the
script). Batch ``k`` goes to worker ``k % num_workers``; up to ``prefetch_factor * num_workers``
batches are in flight ahead of the one being consumed, and results are reordered. Workers build
NumPy arrays only (no CUDA after fork); the main process makes the Tensors. Collated arrays come
back through shared-memory slots (a memcpy instead of pickling megabytes through a pipe; batches
that do not fit are pickled). A slot is named ``minidl_<pid>_...`` and unlinked from /dev/shm as
soon as it is made (on Linux workers open it through the main process's descriptor in /proc;
elsewhere as soon as every worker has attached it), so not even SIGKILL of the whole process
group leaves a segment behind. Workers are shut down when the epoch ends, when the loop is left early (``break``
/ garbage collection of the iterator) and when an exception propagates; a worker's exception is
re-raised in the main process with a note naming the sample index, the dataset and the worker's
traceback; a worker that dies is reported with its exit code; ``timeout`` bounds the wait for a
batch and its error names the pending sample indices.
"""
import collections.abc
import math
import multiprocessing as mp
import os
import pickle
import queue
import random
import secrets
import signal
import time
import traceback
import warnings
import weakref

import numpy as np

from .dataset import (CorruptImageWarning, CorruptSample, _check_seed, sample_rng, shuffle_rng,
                      using_rng)

__all__ = ["DataLoader", "default_collate", "get_worker_info", "WorkerInfo"]

SHM_PREFIX = "minidl_"  # name prefix of the loader's shared-memory segments (/dev/shm/minidl_*)

# --------------------------------------------------------------------------------------------
# collation


def _is_tensor(x):
    from minidl.tensor import Tensor
    return isinstance(x, Tensor)


def _collate_np(batch, indices=None):
    """torch's default_collate on NumPy: the same structure, with NumPy arrays at the leaves."""
    elem = batch[0]
    where = (lambda k: indices[k] if indices is not None else k)
    if isinstance(elem, CorruptSample):
        raise TypeError(f"default_collate got a CorruptSample ({elem.path})")
    if _is_tensor(elem):
        batch = [backend_numpy(x) if _is_tensor(x) else x for x in batch]
        elem = batch[0]
    if isinstance(elem, np.ndarray):
        if elem.dtype.kind not in "biufc":
            raise TypeError(f"default_collate cannot batch NumPy arrays of dtype {elem.dtype} "
                            f"(sample {where(0)}); only numeric and bool arrays")
        for k, x in enumerate(batch):
            if not isinstance(x, np.ndarray) or x.shape != elem.shape:
                raise ValueError(
                    f"default_collate cannot stack samples of different shapes: sample "
                    f"{where(k)} has shape {getattr(x, 'shape', type(x).__name__)}, sample "
                    f"{where(0)} (the batch's first) {elem.shape}; resize/crop to a fixed size "
                    f"or pass a collate_fn")
        return np.stack(batch)
    if isinstance(elem, (bool, np.bool_)):
        return np.asarray(batch, dtype=np.bool_)
    if isinstance(elem, (int, np.integer)):
        if isinstance(elem, np.integer):
            return np.asarray(batch, dtype=elem.dtype)
        return np.asarray(batch, dtype=np.int64)
    if isinstance(elem, (float, np.floating)):
        if isinstance(elem, np.floating):
            return np.asarray(batch, dtype=elem.dtype)
        return np.asarray(batch, dtype=np.float64)
    if isinstance(elem, (str, bytes)):
        return list(batch)
    if isinstance(elem, collections.abc.Mapping):
        keys = list(elem)
        for k, d in enumerate(batch):
            if not isinstance(d, collections.abc.Mapping) or set(d) != set(keys):
                raise ValueError(f"default_collate: sample {where(k)} has keys "
                                 f"{sorted(map(str, d)) if isinstance(d, dict) else type(d)}, "
                                 f"sample {where(0)} {sorted(map(str, keys))}")
        return {key: _collate_np([d[key] for d in batch], indices) for key in keys}
    if isinstance(elem, tuple) and hasattr(elem, "_fields"):  # namedtuple
        return type(elem)(*(_collate_np(list(s), indices) for s in zip(*batch)))
    if isinstance(elem, collections.abc.Sequence):
        for k, s in enumerate(batch):
            if len(s) != len(elem):
                raise ValueError(f"default_collate: each sample must have the same number of "
                                 f"fields; sample {where(k)} has {len(s)}, sample {where(0)} "
                                 f"{len(elem)}")
        return [_collate_np(list(s), indices) for s in zip(*batch)]
    kind = type(elem).__name__
    hint = " (a PIL image: end the transform with transforms.ToArray())" \
        if type(elem).__module__.startswith("PIL") else ""
    raise TypeError(f"default_collate: a batch must hold NumPy arrays, Tensors, numbers, "
                    f"strings, dicts, lists or tuples; sample {where(0)} holds {kind}{hint}")


def backend_numpy(t):
    from minidl import backend
    return backend.to_numpy(t.data)


def default_collate(batch):
    """Collate a list of samples into a batch, as ``torch.utils.data.default_collate`` does.

    * arrays (and Tensors) of one shape are stacked along a new first dimension;
    * Python ints become an int64 Tensor, floats float64, bools bool; NumPy scalars keep
      their dtype; strings and bytes are kept as a list;
    * a dict is collated key by key, a namedtuple field by field, a tuple or list field by
      field into a list (``[images, labels]`` for ``(image, label)`` samples).

    Arrays keep their dtype (a float32 image stays float32). Returns minidl Tensors (CPU)
    in place of the arrays.
    """
    if not isinstance(batch, collections.abc.Sequence) or not len(batch):
        raise ValueError(f"default_collate needs a non-empty list of samples, got "
                         f"{type(batch).__name__}")
    return _to_tensors(_collate_np(list(batch)), None)


class _Leaf:
    """Stands for the k-th array of a batch while its structure travels from a worker."""
    __slots__ = ("k",)

    def __init__(self, k):
        self.k = k

    def __reduce__(self):
        return (_Leaf, (self.k,))


def _pack(obj, arrays):
    """Replace the arrays and Tensors in ``obj`` by _Leaf markers, appending them to ``arrays``."""
    if isinstance(obj, np.ndarray) and obj.dtype.kind in "biufc":
        arrays.append(obj)
        return _Leaf(len(arrays) - 1)
    if _is_tensor(obj):
        arrays.append(backend_numpy(obj))
        return _Leaf(len(arrays) - 1)
    if isinstance(obj, dict):
        return {k: _pack(v, arrays) for k, v in obj.items()}
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):
        return type(obj)(*(_pack(v, arrays) for v in obj))
    if isinstance(obj, (list, tuple)):
        return type(obj)(_pack(v, arrays) for v in obj)
    return obj


def _unpack(obj, arrays):
    if isinstance(obj, _Leaf):
        return arrays[obj.k]
    if isinstance(obj, dict):
        return {k: _unpack(v, arrays) for k, v in obj.items()}
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):
        return type(obj)(*(_unpack(v, arrays) for v in obj))
    if isinstance(obj, (list, tuple)):
        return type(obj)(_unpack(v, arrays) for v in obj)
    return obj


def _to_tensors(obj, device):
    """Every numeric array or Tensor in ``obj`` as a Tensor on ``device`` (None: keep / cpu)."""
    from minidl.tensor import Tensor
    arrays = []
    skeleton = _pack(obj, arrays)
    return _unpack(skeleton, [Tensor(a, device=device) for a in arrays])


def _corrupt(sample):
    """The CorruptSample in a sample (itself, or a top-level field), else None."""
    if isinstance(sample, CorruptSample):
        return sample
    fields = sample.values() if isinstance(sample, dict) else \
        sample if isinstance(sample, (tuple, list)) else ()
    for f in fields:
        if isinstance(f, CorruptSample):
            return f
    return None


def _describe(dataset):
    ds = getattr(dataset, "dataset", dataset) if isinstance(dataset, _Adapter) else dataset
    text = type(ds).__name__
    root = getattr(ds, "root", None)
    if root is not None:
        text += f" at {root!r}"
    t = getattr(ds, "transform", None)
    if t is not None:
        text += f" with transform {t!r}"
    return text


def _load_batch(dataset, collate_fn, seed, epoch, batch_no, indices):
    """(collated batch or None, skipped) for the sample indices of one batch.

    ``collate_fn`` None means the NumPy default collation (what workers run for
    :func:`default_collate`). Errors get a note naming the sample index and the dataset.
    """
    samples, kept, skipped = [], [], []
    for i in indices:
        i = int(i)
        try:
            sample = dataset.getitem(i, sample_rng(seed, epoch, i))
        except Exception as e:
            e.add_note(f"DataLoader: while loading sample index {i} (epoch {epoch}, batch "
                       f"{batch_no}) of {_describe(dataset)}")
            raise
        bad = _corrupt(sample)
        if bad is not None:
            skipped.append((i, bad.path, bad.error))
            continue
        samples.append(sample)
        kept.append(i)
    if not samples:
        return None, skipped
    try:
        batch = _collate_np(samples, kept) if collate_fn is None else collate_fn(samples)
    except Exception as e:
        e.add_note(f"DataLoader: while collating batch {batch_no} of epoch {epoch} (sample "
                   f"indices {kept}) of {_describe(dataset)}")
        raise
    return batch, skipped


# --------------------------------------------------------------------------------------------
# worker processes

_ALIGN = 64


def _layout(arrays):
    """Offsets of the arrays packed one after the other (64-byte aligned), and the total."""
    offsets, end = [], 0
    for a in arrays:
        offsets.append(end)
        end += -(-a.nbytes // _ALIGN) * _ALIGN
    return offsets, end


class WorkerInfo:
    """What :func:`get_worker_info` returns inside a worker: ``id`` (0..num_workers-1),
    ``num_workers``, ``seed`` (the loader's) and ``dataset`` (this process's copy)."""
    __slots__ = ("id", "num_workers", "seed", "dataset")

    def __init__(self, id, num_workers, seed, dataset):
        self.id, self.num_workers, self.seed, self.dataset = id, num_workers, seed, dataset

    def __repr__(self):
        return (f"WorkerInfo(id={self.id}, num_workers={self.num_workers}, seed={self.seed}, "
                f"dataset={type(self.dataset).__name__})")


_worker_info = None


def get_worker_info():
    """In a DataLoader worker process, its :class:`WorkerInfo` (as PyTorch's
    ``torch.utils.data.get_worker_info``); None in the main process."""
    return _worker_info


def _worker_loop(dataset, collate_fn, seed, worker_id, index_queue, result_queue, parent_pid,
                 num_workers=1, worker_init_fn=None):
    """Body of a worker process: load the batches asked for until told to stop (None)."""
    global _worker_info
    # Ctrl-C reaches the whole process group; the main process handles it and stops us.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Forked workers share the parent's global RNG states; make any use of them distinct.
    random.seed(hash((seed, worker_id, os.getpid())))
    np.random.seed((seed * 1000003 + worker_id * 7919 + os.getpid()) % 2**32)
    _worker_info = WorkerInfo(worker_id, num_workers, seed,
                              getattr(dataset, "dataset", dataset)
                              if isinstance(dataset, _Adapter) else dataset)
    init_error = None
    if worker_init_fn is not None:
        try:
            worker_init_fn(worker_id)
        except Exception as e:  # reported for every batch this worker is asked for
            e.add_note(f"(raised by worker_init_fn in DataLoader worker {worker_id})")
            init_error = e
    attached = {}  # shared-memory slots of the main process, by name
    try:
        _serve(dataset, collate_fn, seed, worker_id, index_queue, result_queue, parent_pid,
               attached, init_error)
    finally:
        for shm in attached.values():
            try:
                shm.close()
            except (OSError, BufferError):
                pass


def _serve(dataset, collate_fn, seed, worker_id, index_queue, result_queue, parent_pid,
           attached, init_error=None):
    while True:
        try:
            task = index_queue.get(timeout=1.0)
        except queue.Empty:
            if os.getppid() != parent_pid:  # the main process died: do not linger, and do
                # not wait at exit to flush results into a pipe that nobody will read
                result_queue.cancel_join_thread()
                return
            continue
        if task is None:
            return
        if task[0] == "attach":  # map the main process's slots, then say so (it unlinks them)
            ok = True
            try:
                from multiprocessing import shared_memory
                for name, fd, size in task[1]:
                    if name in attached:
                        continue
                    if fd is not None:  # already unlinked: open it through the main's fd
                        attached[name] = _FdMapping(task[2], fd, size)
                    else:
                        attached[name] = shared_memory.SharedMemory(name=name)
            except Exception:
                ok = False
            result_queue.put(("attached", worker_id, ok))
            continue
        _, epoch, batch_no, indices, slot = task
        try:
            if init_error is not None:  # a fresh copy each time (notes are added to it)
                raise _fresh(init_error)
            batch, skipped = _load_batch(dataset, collate_fn, seed, epoch, batch_no, indices)
            arrays = []
            skeleton = _pack(batch, arrays)
            offsets, total = _layout(arrays)
            if slot is not None and arrays and total <= slot[1] and slot[0] in attached:
                # the arrays go through shared memory; only their layout travels in the pipe
                buf = attached[slot[0]].buf
                meta = []
                for a, off in zip(arrays, offsets):
                    a = np.ascontiguousarray(a)
                    np.ndarray(a.shape, a.dtype, buffer=buf, offset=off)[...] = a
                    meta.append((off, a.shape, a.dtype.str))
                payload = (skeleton, ("shm", slot[0], meta), skipped)
            else:
                payload = (skeleton, arrays, skipped)
            result_queue.put(("batch", batch_no, payload, None))
        except Exception as e:  # handed to the main process, which re-raises it
            tb = traceback.format_exc()
            try:
                e.add_note(f"(raised in DataLoader worker {worker_id} (pid {os.getpid()}), "
                           f"batch {batch_no}, epoch {epoch}; worker traceback:)\n{tb}")
                pickle.loads(pickle.dumps(e))
                err = e
            except Exception:
                notes = "\n".join(getattr(e, "__notes__", []))
                err = RuntimeError(f"DataLoader worker {worker_id} failed on batch {batch_no} "
                                   f"of epoch {epoch} (sample indices {list(map(int, indices))})"
                                   f":\n{tb}\n{notes}")
            result_queue.put(("batch", batch_no, None, err))


class _FdMapping:
    """A worker's mapping of a slot whose name is already gone from /dev/shm, opened through
    the main process's file descriptor (``/proc/<pid>/fd/<fd>``, Linux)."""

    def __init__(self, pid, fd, size):
        import mmap
        f = os.open(f"/proc/{pid}/fd/{fd}", os.O_RDWR)
        try:
            self.buf = mmap.mmap(f, size)
        finally:
            os.close(f)

    def close(self):
        self.buf.close()


def _fresh(error):
    try:
        return pickle.loads(pickle.dumps(error))
    except Exception:
        return error


def _stop_workers(workers, index_queues, result_queue, slots, unlinked):
    """Ask workers to exit, drain their output so none blocks on a full pipe, then reap;
    then free the shared-memory slots."""
    for q in index_queues:
        try:
            q.put(None)
        except (OSError, ValueError):
            pass
    deadline = time.monotonic() + 5.0
    while any(w.is_alive() for w in workers) and time.monotonic() < deadline:
        try:
            result_queue.get(timeout=0.05)
        except (queue.Empty, OSError, ValueError, EOFError):
            pass
    for w in workers:
        if w.is_alive():
            w.terminate()
        w.join(timeout=1.0)
    for q in list(index_queues) + [result_queue]:
        try:
            q.cancel_join_thread()
            q.close()
        except (OSError, ValueError):
            pass
    _unlink(slots, unlinked)
    for shm in slots:
        try:
            shm.close()
        except (OSError, BufferError):
            pass
    slots.clear()


def _unlink(slots, unlinked):
    """Remove the slots' names from /dev/shm (the mappings stay valid)."""
    if unlinked:
        return
    unlinked.append(True)
    for shm in slots:
        try:
            shm.unlink()
        except OSError:
            pass


class _Failed:
    __slots__ = ("error",)

    def __init__(self, error):
        self.error = error


class _WorkerPool:
    """Worker processes serving the batches ``start..`` of one epoch, in order."""

    def __init__(self, loader, epoch, batches, start):
        ctx = loader._context()
        n = loader.num_workers
        self.epoch, self.batches, self.start = epoch, batches, start
        self.device = loader.device
        self.timeout = loader.timeout
        self.ahead = max(1, loader.prefetch_factor * n)
        self.index_queues = [ctx.Queue() for _ in range(n)]
        self.result_queue = ctx.Queue()
        self.workers = []
        # Batches come back through `ahead` shared-memory slots (batch k uses slot k % ahead,
        # which is free again once batch k - ahead was consumed), sized after the first batch;
        # a worker uses them once it has attached them (and then they are unlinked); what does
        # not fit (or every batch, where shared memory fails) is pickled instead.
        self.slots, self.slot_bytes, self.use_shm = [], 0, True
        self.unlinked = []  # [True] once the slots' names are gone from /dev/shm
        self.answered, self.attached = set(), set()
        try:
            # forked workers must share the main process's resource tracker, or each would
            # start its own and unlink the slots when it exits
            from multiprocessing import resource_tracker
            resource_tracker.ensure_running()
        except Exception:
            self.use_shm = False
        collate = None if loader.collate_fn is default_collate else loader.collate_fn
        try:
            for w in range(n):
                p = ctx.Process(target=_worker_loop, daemon=True, name=f"minidl-data-{w}",
                                args=(loader._source, collate, loader.seed, w,
                                      self.index_queues[w], self.result_queue, os.getpid(),
                                      n, loader.worker_init_fn))
                p.start()
                self.workers.append(p)
        except Exception as e:
            _stop_workers(self.workers, self.index_queues, self.result_queue, self.slots,
                          self.unlinked)
            if isinstance(e, (pickle.PicklingError, TypeError, AttributeError)):
                raise RuntimeError(f"could not start DataLoader workers with the "
                                   f"{ctx.get_start_method()!r} start method: the dataset and "
                                   f"collate_fn must be picklable ({e})") from e
            raise
        # Shut down even if the generator holding us is never closed properly.
        self._finalizer = weakref.finalize(self, _stop_workers, self.workers,
                                           self.index_queues, self.result_queue, self.slots,
                                           self.unlinked)

    def shutdown(self):
        self._finalizer()

    def _timed_out(self, k):
        w = k % len(self.workers)
        idx = [int(i) for i in self.batches[k]]
        later = sorted(b for b in self.pending if b != k)
        raise RuntimeError(
            f"DataLoader timed out after {self.timeout} s waiting for batch {k} of epoch "
            f"{self.epoch} from worker {w} (pid {self.workers[w].pid}); pending sample indices "
            f"{idx}" + (f" (and batches {later} in flight)" if later else ""))

    def __iter__(self):
        n, sent, done = len(self.workers), self.start, {}
        self.pending = set()
        for k in range(self.start, len(self.batches)):
            while sent < len(self.batches) and sent < k + self.ahead:
                w = sent % n
                slot = None
                if self.slots and w in self.attached:
                    slot = (self.slots[sent % self.ahead].name, self.slot_bytes)
                self.index_queues[w].put(("load", self.epoch, sent, self.batches[sent], slot))
                self.pending.add(sent)
                sent += 1
            t0 = time.monotonic()
            while k not in done:
                wait = 1.0
                if self.timeout:
                    wait = min(wait, max(0.0, t0 + self.timeout - time.monotonic()))
                try:
                    msg = self.result_queue.get(timeout=wait)
                except queue.Empty:
                    for w, p in enumerate(self.workers):
                        if not p.is_alive():
                            raise RuntimeError(f"DataLoader worker {w} (pid {p.pid}) exited "
                                               f"unexpectedly with exit code {p.exitcode} "
                                               f"(killed by the OS for memory?) while batch "
                                               f"{k} of epoch {self.epoch} (sample indices "
                                               f"{[int(i) for i in self.batches[k]]}) was "
                                               f"pending") from None
                    if self.timeout and time.monotonic() - t0 >= self.timeout:
                        self._timed_out(k)
                    continue
                if msg[0] == "attached":
                    self._on_attached(msg[1], msg[2])
                    continue
                _, batch_no, payload, err = msg
                self.pending.discard(batch_no)
                # an error is raised in batch order, as PyTorch does (and as without workers)
                done[batch_no] = _Failed(err) if err is not None else self._receive(payload)
            result = done.pop(k)
            if isinstance(result, _Failed):
                raise result.error
            yield result

    def _on_attached(self, worker, ok):
        self.answered.add(worker)
        if ok:
            self.attached.add(worker)
        if len(self.answered) == len(self.workers):
            _unlink(self.slots, self.unlinked)  # every side holds them: drop the names

    def _receive(self, payload):
        from minidl.tensor import Tensor
        skeleton, arrays, skipped = payload
        if isinstance(arrays, tuple):  # ("shm", name, meta): copy out before the slot is reused
            _, name, meta = arrays
            shm = next(s for s in self.slots if s.name == name)
            on_host = self.device in (None, "cpu")
            arrays = []
            for off, shape, dtype in meta:
                view = np.ndarray(shape, np.dtype(dtype), buffer=shm.buf, offset=off)
                # to the GPU straight from the slot; on the CPU a copy the batch owns
                arrays.append(view.copy() if on_host else view)
        elif arrays and self.use_shm and not self.slots:
            self._make_slots(_layout(arrays)[1])
        if skeleton is None:
            return None, skipped
        return _unpack(skeleton, [Tensor(a, device=self.device) for a in arrays]), skipped

    def _make_slots(self, nbytes):
        from multiprocessing import shared_memory
        try:
            for _ in range(self.ahead):
                name = f"{SHM_PREFIX}{os.getpid()}_{secrets.token_hex(6)}"
                self.slots.append(shared_memory.SharedMemory(name=name, create=True,
                                                             size=max(1, nbytes)))
            self.slot_bytes = nbytes
        except Exception:  # no /dev/shm, or too small: keep pickling
            for shm in self.slots:
                try:
                    shm.close()
                    shm.unlink()
                except OSError:
                    pass
            self.slots.clear()
            self.use_shm = False
            return
        if os.path.isdir(f"/proc/{os.getpid()}/fd"):
            # Linux: drop the names at once; workers open the slots through our descriptors,
            # so no SIGKILL at any moment can leave a segment behind
            _unlink(self.slots, self.unlinked)
            entries = [(s.name, s._fd, s.size) for s in self.slots]
        else:  # elsewhere by name, unlinked once every worker has attached
            entries = [(s.name, None, s.size) for s in self.slots]
        for q in self.index_queues:
            q.put(("attach", entries, os.getpid()))


# --------------------------------------------------------------------------------------------
# the loader


def _positive_int(value, name, minimum=1):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) \
            or value < minimum:
        kind = "a positive" if minimum == 1 else "a non-negative"
        raise ValueError(f"{name} must be {kind} integer, got {value!r}")
    return int(value)


def _replicas(num_replicas, rank):
    """(num_replicas, rank), each None taken from an initialized minidl.distributed group."""
    if num_replicas is None or rank is None:
        group = None
        try:
            from minidl import distributed
            if distributed.is_initialized():
                group = distributed
        except ImportError:
            pass
        if group is not None:
            num_replicas = group.get_world_size() if num_replicas is None else num_replicas
            rank = group.get_rank() if rank is None else rank
        elif num_replicas is None and rank is None:
            num_replicas, rank = 1, 0
        else:
            raise ValueError(f"DataLoader got num_replicas={num_replicas!r} and rank={rank!r}: "
                             f"give both (or neither, inside an initialized "
                             f"minidl.distributed process group)")
    num_replicas = _positive_int(num_replicas, "num_replicas")
    rank = _positive_int(rank, "rank", minimum=0)
    if rank >= num_replicas:
        raise ValueError(f"rank must be in 0..num_replicas-1, got rank={rank} with "
                         f"num_replicas={num_replicas}")
    return num_replicas, rank


class DataLoader:
    """Iterate a dataset in batches of minidl Tensors: ``for images, labels in loader``.

    With the default ``collate_fn`` and ``(image, label)`` samples, a batch is ``[images,
    labels]``: ``images`` ``(N, C, H, W)`` (``(N, 10, C, h, w)`` with TenCrop) in the samples'
    dtype (float32 after ToArray), ``labels`` ``(N,)`` int64, both Tensors on ``device``.
    ``N == batch_size`` except for the last batch (dropped with ``drop_last``) and batches that
    lost corrupt images. See the module docstring for the random streams that make batches
    independent of ``num_workers``.

    ``iter(loader)`` starts the epoch ``loader.epoch`` from its first batch (PyTorch's
    semantics: peeking with ``next(iter(loader))`` drops nothing); an iterator that runs to the
    end of the epoch advances ``epoch`` by one, one left early does not. The first iterator after
    :meth:`load_state_dict` resumes at the saved position instead. :meth:`state_dict` describes
    the most recent iterator: its epoch and how many batches it has yielded (a finished epoch
    counts as the start of the next). ``set_epoch(e)`` selects the epoch the next iterator runs.

    Corrupt images (a dataset returns :class:`~minidl.data.CorruptSample`) are left out of their
    batch with a :class:`~minidl.data.CorruptImageWarning`; ``skipped`` counts them in the
    current (or just finished) epoch, ``skipped_samples`` lists ``(index, path, error)``,
    ``skipped_total`` counts over the loader's life, and a summary warning is issued at the end
    of each epoch that skipped any.

    Args:
        dataset: a :class:`~minidl.data.Dataset` (anything with ``__len__`` and
            ``__getitem__``; ``getitem(index, rng)`` is used when present).
        batch_size: samples per batch (per rank when sharded).
        shuffle: draw a fresh order each epoch from ``(seed, epoch)``.
        num_workers: worker processes (0 loads in the main process).
        drop_last: drop the final incomplete batch (when sharded: the final incomplete global
            batch of ``batch_size * num_replicas``).
        seed: non-negative int; the root of the shuffle and augmentation streams (the same on
            every rank).
        prefetch_factor: batches in flight per worker.
        multiprocessing_context: start method name (``"fork"``, ``"spawn"``,
            ``"forkserver"``) or context; default fork where available, else spawn.
        collate_fn: turns the list of samples of a batch into a batch (default
            :func:`default_collate`); with workers it runs in the worker. Every NumPy array or
            Tensor in what it returns arrives as a Tensor on ``device``.
        timeout: seconds to wait for a batch from the workers (0: forever, PyTorch's default);
            past it a RuntimeError names the batch's sample indices. Ignored without workers.
        device: where the batches' Tensors live ("cpu" (default) or "cuda"); workers only
            build NumPy arrays, the main process moves them.
        worker_init_fn: called as ``worker_init_fn(worker_id)`` in each worker process before
            it loads anything (:func:`get_worker_info` tells it more); an exception it raises
            is re-raised in the main process.
        num_replicas, rank: shard each epoch across ``num_replicas`` data-parallel ranks (both
            default to the initialized :mod:`minidl.distributed` group, else 1 and 0). Batch
            ``k`` of ``rank`` is the ``rank``-th ``batch_size`` slice of the ``k``-th batch of
            ``batch_size * num_replicas`` samples of the common order. A final global batch of
            ``m < batch_size * num_replicas`` samples (``drop_last=False``) is padded by
            repeating the first samples of the epoch's order to ``ceil(m / num_replicas) *
            num_replicas`` (as torch's DistributedSampler pads) and split in equal parts, so
            every rank gets the same number of batches and no rank an empty one.
    """

    def __init__(self, dataset, batch_size=1, shuffle=False, num_workers=0, drop_last=False,
                 seed=0, prefetch_factor=2, multiprocessing_context=None, collate_fn=None,
                 timeout=0, device=None, num_replicas=None, rank=None, worker_init_fn=None):
        if not hasattr(dataset, "__len__") or not hasattr(dataset, "__getitem__"):
            raise TypeError(f"DataLoader needs a dataset with __len__ and __getitem__, got "
                            f"{type(dataset).__name__}")
        self.batch_size = _positive_int(batch_size, "batch_size")
        self.num_workers = _positive_int(num_workers, "num_workers", minimum=0)
        if isinstance(prefetch_factor, bool) or not isinstance(prefetch_factor, int) \
                or prefetch_factor < 1:
            raise ValueError(f"prefetch_factor must be a positive integer, got "
                             f"{prefetch_factor!r}")
        if collate_fn is not None and not callable(collate_fn):
            raise TypeError(f"collate_fn must be callable, got {type(collate_fn).__name__}")
        if worker_init_fn is not None and not callable(worker_init_fn):
            raise TypeError(f"worker_init_fn must be callable, got "
                            f"{type(worker_init_fn).__name__}")
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float, np.number)) \
                or not timeout >= 0 or not math.isfinite(timeout):
            raise ValueError(f"timeout must be a non-negative number of seconds, got "
                             f"{timeout!r}")
        from minidl import backend
        self.device = backend.normalize_device(device)
        self.dataset = dataset
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        self.seed = _check_seed(seed)
        self.prefetch_factor = prefetch_factor
        self.worker_init_fn = worker_init_fn
        self.multiprocessing_context = multiprocessing_context
        self.collate_fn = default_collate if collate_fn is None else collate_fn
        self.timeout = float(timeout)
        self.num_replicas, self.rank = _replicas(num_replicas, rank)
        self.epoch = 0
        self.position = 0
        self._resume = False  # the next iterator starts at `position` (set by load_state_dict)
        self.skipped = 0
        self.skipped_samples = []
        self.skipped_total = 0
        self._active = None  # token of the iterator allowed to advance the cursor
        # a plain torch-style dataset (no getitem(index, rng)) gets the protocol from an adapter
        self._source = dataset if hasattr(dataset, "getitem") else _Adapter(dataset)

    # --- the order ------------------------------------------------------------------------
    def __len__(self):
        """Batches per epoch (on this rank; the same on every rank)."""
        n, g = len(self.dataset), self.batch_size * self.num_replicas
        return n // g if self.drop_last else math.ceil(n / g)

    def batch_indices(self, epoch=None):
        """The sample indices of every batch of ``epoch`` (default: the current one) on this
        rank."""
        epoch = self.epoch if epoch is None else epoch
        n = len(self.dataset)
        order = shuffle_rng(self.seed, epoch).permutation(n) if self.shuffle else np.arange(n)
        W, r, B = self.num_replicas, self.rank, self.batch_size
        G = W * B
        out = []
        for k in range(len(self)):
            g = order[k * G:(k + 1) * G]
            if len(g) < G:  # the tail of the epoch: pad to a multiple of W, split evenly
                s = -(-len(g) // W)
                pad = s * W - len(g)
                if pad:
                    g = np.concatenate([g, np.resize(order, pad)])
                out.append(g[r * s:(r + 1) * s])
            else:
                out.append(g[r * B:(r + 1) * B])
        return out

    def set_epoch(self, epoch):
        """Make ``epoch`` the one the next iterator runs, from its start."""
        self.epoch = _check_seed(epoch, "epoch")
        self.position = 0
        self._resume = False
        self._active = None

    # --- checkpointing --------------------------------------------------------------------
    def _cursor(self):
        if 0 < len(self) <= self.position:  # consumed the whole epoch, loop not closed
            return self.epoch + 1, 0, 0
        return self.epoch, self.position, self.skipped

    def state_dict(self):
        """A small JSON-able dict: where the loader is, and what fixes its batches.

        Every rank of a sharded run has the same state, so the state of rank 0 resumes all.
        """
        epoch, position, skipped = self._cursor()
        return {"epoch": epoch, "position": position, "seed": self.seed,
                "shuffle": self.shuffle, "batch_size": self.batch_size,
                "drop_last": self.drop_last, "num_samples": len(self.dataset),
                "num_replicas": self.num_replicas, "skipped": skipped}

    def load_state_dict(self, state):
        """Continue from ``state``: the next iterator yields the batches the saved loader
        would have yielded next (later iterators start their epochs from the beginning).

        The seed is taken from the state; batch_size, shuffle, drop_last, num_replicas and the
        dataset size must match (they fix which samples a batch holds); the rank need not.
        """
        if not isinstance(state, dict):
            raise TypeError(f"DataLoader.load_state_dict needs a dict, got "
                            f"{type(state).__name__}")
        missing = {"epoch", "position", "seed"} - set(state)
        if missing:
            raise KeyError(f"DataLoader state dict lacks {sorted(missing)}; got {sorted(state)}")
        expect = {"batch_size": self.batch_size, "shuffle": self.shuffle,
                  "drop_last": self.drop_last, "num_samples": len(self.dataset),
                  "num_replicas": self.num_replicas}
        bad = {k: (state[k], v) for k, v in expect.items() if k in state and state[k] != v}
        if bad:
            raise ValueError("DataLoader state does not fit this loader (saved vs here): " +
                             ", ".join(f"{k} {a!r} vs {b!r}" for k, (a, b) in bad.items()))
        position = int(state["position"])
        if not 0 <= position <= len(self):
            raise ValueError(f"DataLoader state position {position} outside 0..{len(self)}")
        self.seed = _check_seed(state["seed"])
        self.epoch = _check_seed(state["epoch"], "epoch")
        self.position = position
        self._resume = True
        self.skipped = int(state.get("skipped", 0))
        self.skipped_samples = []
        self._active = None

    # --- iteration ------------------------------------------------------------------------
    def _context(self):
        c = self.multiprocessing_context
        if c is None:
            c = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
        return mp.get_context(c) if isinstance(c, str) else c

    def _local_batches(self, epoch, batches, start):
        collate = None if self.collate_fn is default_collate else self.collate_fn
        for k in range(start, len(batches)):
            batch, skipped = _load_batch(self._source, collate, self.seed, epoch, k, batches[k])
            yield (None if batch is None else _to_tensors(batch, self.device)), skipped

    def __iter__(self):
        return self._iterate()

    def _iterate(self):
        epoch, position, _ = self._cursor()
        if (epoch, position) != (self.epoch, self.position):
            self._end_epoch()  # the previous iterator yielded the whole epoch
        if not self._resume:
            position = 0  # PyTorch's semantics: a new iterator starts the epoch afresh
        self._resume = False
        if position == 0:
            self.skipped, self.skipped_samples = 0, []
        token = object()
        self._active = token
        self.position = position
        batches = self.batch_indices(epoch)
        pool = None
        if self.num_workers > 0 and position < len(batches):
            pool = _WorkerPool(self, epoch, batches, position)
            source = iter(pool)
        else:
            source = self._local_batches(epoch, batches, position)
        try:
            for k, (batch, skipped_here) in enumerate(source, position):
                if self._active is not token:
                    raise RuntimeError("this DataLoader iterator is stale: the loader was "
                                       "iterated again, rewound or restored since")
                self.position = k + 1
                for i, path, err in skipped_here:
                    warnings.warn(f"epoch {epoch}: skipping corrupt image {path} ({err})",
                                  CorruptImageWarning, stacklevel=2)
                    self.skipped += 1
                    self.skipped_total += 1
                    self.skipped_samples.append((i, path, err))
                if batch is not None:
                    yield batch
            if self._active is token:
                self._end_epoch()
        finally:
            if pool is not None:
                pool.shutdown()

    def _end_epoch(self):
        if self.skipped:
            warnings.warn(f"DataLoader epoch {self.epoch}: skipped {self.skipped} corrupt "
                          f"image(s) of {len(self.dataset)}", CorruptImageWarning, stacklevel=3)
        self.epoch += 1
        self.position = 0
        self._active = None

    def __repr__(self):
        shard = f", num_replicas={self.num_replicas}, rank={self.rank}" \
            if self.num_replicas > 1 else ""
        return (f"DataLoader({type(self.dataset).__name__} of {len(self.dataset)}, "
                f"batch_size={self.batch_size}, shuffle={self.shuffle}, "
                f"num_workers={self.num_workers}, drop_last={self.drop_last}, seed={self.seed}, "
                f"device={self.device!r}{shard}, epoch={self.epoch}, position={self.position})")


class _Adapter:
    """Gives a dataset with only ``__getitem__`` the ``getitem(index, rng)`` protocol."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        return self.dataset[index]

    def getitem(self, index, rng=None):
        with using_rng(rng):
            return self.dataset[index]
