"""DataLoader: batches, a reproducible order, worker processes, and exact mid-epoch resume.

Reproducibility, whatever ``num_workers`` is:

* the sample order of epoch ``e`` is ``shuffle_rng(seed, e).permutation(len(dataset))`` (or
  ``0..n-1`` without shuffle), cut into consecutive batches;
* sample ``i`` of epoch ``e`` is loaded with ``dataset.getitem(i, sample_rng(seed, e, i))``,
  whose generator the transforms draw from.

So a batch is a pure function of ``(seed, epoch, batch number)``: which process loads it does not
matter, and a loader restored from :meth:`DataLoader.state_dict` yields exactly the batches the
original would have yielded next.

Workers (``num_workers > 0``) are processes (``fork`` where the platform has it, else ``spawn``,
which needs a picklable dataset and an ``if __name__ == "__main__":`` guard in the script). Batch
``k`` goes to worker ``k % num_workers``; up to ``prefetch_factor * num_workers`` batches are in
flight ahead of the one being consumed, and results are reordered. Collated image batches come
back through shared-memory slots (a memcpy instead of pickling megabytes through a pipe; batches
that do not fit are pickled), so loading costs the training process only the copy out. Workers
only build NumPy arrays (they never touch CuPy: no CUDA after fork); the training loop moves
batches to the device. They
are shut down when the epoch ends, when the loop is left early (``break`` / garbage collection of
the iterator) and when an exception propagates; a worker's exception is re-raised in the main
process with the worker's traceback attached; a worker that dies is reported with its exit code.
"""
import math
import multiprocessing as mp
import os
import pickle
import queue
import random
import signal
import time
import traceback
import warnings
import weakref

import numpy as np

from .dataset import (CorruptImageWarning, CorruptSample, _check_seed, sample_rng, shuffle_rng,
                      using_rng)

__all__ = ["DataLoader", "collate"]


def collate(images, labels, indices=None):
    """Stack samples into ``(N, ...)`` float32 images and ``(N,)`` int64 labels.

    Images must be arrays of one shape (CHW after ToArray, (10, C, h, w) after TenCrop).
    """
    first = images[0]
    if not isinstance(first, np.ndarray):
        kind = type(first).__name__
        hint = " (a PIL image: end the transform with transforms.ToArray())" \
            if type(first).__module__.startswith("PIL") else ""
        raise TypeError(f"DataLoader can only collate NumPy arrays, got {kind}{hint}")
    shape = first.shape
    out = np.empty((len(images),) + shape, dtype=np.float32)
    for k, x in enumerate(images):
        if not isinstance(x, np.ndarray) or x.shape != shape:
            which = indices[k] if indices is not None else k
            raise ValueError(f"DataLoader cannot stack samples of different shapes: sample "
                             f"{which} has shape {getattr(x, 'shape', type(x).__name__)}, the "
                             f"first sample of the batch {shape}; resize/crop to a fixed size")
        out[k] = x
    lab = np.asarray(labels)
    if lab.ndim != 1 or not (lab.dtype.kind in "iu" or lab.dtype == np.bool_):
        raise TypeError(f"labels must be integers, got {labels[:4]!r}... (dtype {lab.dtype})")
    return out, lab.astype(np.int64)


def _load_batch(dataset, seed, epoch, indices):
    """(images or None, labels or None, skipped) for the sample indices of one batch."""
    images, labels, kept, skipped = [], [], [], []
    for i in indices:
        i = int(i)
        img, label = dataset.getitem(i, sample_rng(seed, epoch, i))
        if isinstance(img, CorruptSample):
            skipped.append((i, img.path, img.error))
            continue
        images.append(img)
        labels.append(label)
        kept.append(i)
    if not images:
        return None, None, skipped
    x, y = collate(images, labels, kept)
    return x, y, skipped


def _worker_loop(dataset, seed, worker_id, index_queue, result_queue, parent_pid):
    """Body of a worker process: load the batches asked for until told to stop (None)."""
    # Ctrl-C reaches the whole process group; the main process handles it and stops us.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Forked workers share the parent's global RNG states; make any use of them distinct.
    random.seed(hash((seed, worker_id, os.getpid())))
    np.random.seed((seed * 1000003 + worker_id * 7919 + os.getpid()) % 2**32)
    attached = {}  # shared-memory slots of the main process, by name
    try:
        _serve(dataset, seed, worker_id, index_queue, result_queue, parent_pid, attached)
    finally:
        for shm in attached.values():
            try:
                shm.close()
            except (OSError, BufferError):
                pass


def _serve(dataset, seed, worker_id, index_queue, result_queue, parent_pid, attached):
    while True:
        try:
            task = index_queue.get(timeout=1.0)
        except queue.Empty:
            if os.getppid() != parent_pid:  # the main process died: do not linger
                return
            continue
        if task is None:
            return
        epoch, batch_no, indices, slot = task
        try:
            x, y, skipped = _load_batch(dataset, seed, epoch, indices)
            if slot is not None and x is not None and x.nbytes <= slot[1]:
                # the batch goes through shared memory; only its shape travels in the pipe
                if slot[0] not in attached:
                    from multiprocessing import shared_memory
                    attached[slot[0]] = shared_memory.SharedMemory(name=slot[0])
                buf = attached[slot[0]].buf
                np.ndarray(x.shape, np.float32, buffer=buf)[...] = x
                result_queue.put((batch_no, (("shm", slot[0], x.shape), y, skipped), None))
            else:
                result_queue.put((batch_no, (x, y, skipped), None))
        except Exception as e:  # handed to the main process, which re-raises it
            tb = traceback.format_exc()
            try:
                e.add_note(f"(raised in DataLoader worker {worker_id}, batch {batch_no}, "
                           f"epoch {epoch}; worker traceback:)\n{tb}")
                pickle.dumps(e)
                err = e
            except Exception:
                err = RuntimeError(f"DataLoader worker {worker_id} failed on batch {batch_no} "
                                   f"of epoch {epoch}:\n{tb}")
            result_queue.put((batch_no, None, err))


def _stop_workers(workers, index_queues, result_queue, slots):
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
    for shm in slots:
        try:
            shm.close()
            shm.unlink()
        except (OSError, BufferError):
            pass
    slots.clear()


class _WorkerPool:
    """Worker processes serving the batches ``start..`` of one epoch, in order."""

    def __init__(self, loader, epoch, batches, start):
        ctx = loader._context()
        n = loader.num_workers
        self.epoch, self.batches, self.start = epoch, batches, start
        self.ahead = max(1, loader.prefetch_factor * n)
        self.index_queues = [ctx.Queue() for _ in range(n)]
        self.result_queue = ctx.Queue()
        self.workers = []
        # Batches come back through `ahead` shared-memory slots (batch k uses slot k % ahead,
        # which is free again once batch k - ahead was consumed), sized after the first batch;
        # what does not fit (or every batch, where shared memory fails) is pickled instead.
        self.slots, self.slot_bytes, self.use_shm = [], 0, True
        try:
            # forked workers must share the main process's resource tracker, or each would
            # start its own and unlink the slots when it exits
            from multiprocessing import resource_tracker
            resource_tracker.ensure_running()
        except Exception:
            self.use_shm = False
        try:
            for w in range(n):
                p = ctx.Process(target=_worker_loop, daemon=True, name=f"minidl-data-{w}",
                                args=(loader._source, loader.seed, w, self.index_queues[w],
                                      self.result_queue, os.getpid()))
                p.start()
                self.workers.append(p)
        except Exception as e:
            _stop_workers(self.workers, self.index_queues, self.result_queue, self.slots)
            if isinstance(e, (pickle.PicklingError, TypeError, AttributeError)):
                raise RuntimeError(f"could not start DataLoader workers with the "
                                   f"{ctx.get_start_method()!r} start method: the dataset must "
                                   f"be picklable ({e})") from e
            raise
        # Shut down even if the generator holding us is never closed properly.
        self._finalizer = weakref.finalize(self, _stop_workers, self.workers,
                                           self.index_queues, self.result_queue, self.slots)

    def shutdown(self):
        self._finalizer()

    def __iter__(self):
        n, sent, done = len(self.workers), self.start, {}
        for k in range(self.start, len(self.batches)):
            while sent < len(self.batches) and sent < k + self.ahead:
                slot = None
                if self.slots:
                    shm = self.slots[sent % self.ahead]
                    slot = (shm.name, self.slot_bytes)
                self.index_queues[sent % n].put((self.epoch, sent, self.batches[sent], slot))
                sent += 1
            while k not in done:
                try:
                    batch_no, result, err = self.result_queue.get(timeout=1.0)
                except queue.Empty:
                    for w, p in enumerate(self.workers):
                        if not p.is_alive():
                            raise RuntimeError(f"DataLoader worker {w} (pid {p.pid}) exited "
                                               f"unexpectedly with exit code {p.exitcode} "
                                               f"(killed by the OS for memory?)") from None
                    continue
                if err is not None:
                    raise err
                done[batch_no] = self._receive(result)
            yield done.pop(k)

    def _receive(self, result):
        x, y, skipped = result
        if isinstance(x, tuple):  # ("shm", name, shape): copy out before the slot is reused
            _, name, shape = x
            shm = next(s for s in self.slots if s.name == name)
            x = np.ndarray(shape, np.float32, buffer=shm.buf).copy()
        elif x is not None and self.use_shm and not self.slots:
            self._make_slots(x.nbytes)
        return x, y, skipped

    def _make_slots(self, nbytes):
        from multiprocessing import shared_memory
        try:
            for _ in range(self.ahead):
                self.slots.append(shared_memory.SharedMemory(create=True, size=max(1, nbytes)))
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


class DataLoader:
    """Iterate a dataset in batches of NumPy arrays: ``for images, labels in loader``.

    ``images`` is ``(N, C, H, W)`` float32 (``(N, 10, C, h, w)`` with TenCrop), ``labels`` ``(N,)``
    int64; ``N == batch_size`` except for the last batch (dropped with ``drop_last``) and
    batches that lost corrupt images. See the module docstring for the random streams that make
    batches independent of ``num_workers``.

    The loader is a cursor over ``(epoch, position)``: iterating starts at ``position`` (the
    number of batches of ``epoch`` already consumed; 0 unless restored from a state dict or a
    previous loop was left early) and running to the end of an epoch advances ``epoch`` by one.
    ``set_epoch(e)`` rewinds to the start of epoch ``e``.

    Corrupt images (a dataset returns :class:`~minidl.data.CorruptSample`) are left out of their
    batch with a :class:`~minidl.data.CorruptImageWarning`; ``skipped`` counts them in the
    current (or just finished) epoch, ``skipped_samples`` lists ``(index, path, error)``,
    ``skipped_total`` counts over the loader's life, and a summary warning is issued at the end
    of each epoch that skipped any.

    Args:
        dataset: a :class:`~minidl.data.Dataset` (anything with ``__len__`` and
            ``__getitem__``; ``getitem(index, rng)`` is used when present).
        batch_size: samples per batch.
        shuffle: draw a fresh order each epoch from ``(seed, epoch)``.
        num_workers: worker processes (0 loads in the main process).
        drop_last: drop the final incomplete batch.
        seed: non-negative int; the root of the shuffle and augmentation streams.
        prefetch_factor: batches in flight per worker.
        multiprocessing_context: start method name (``"fork"``, ``"spawn"``,
            ``"forkserver"``) or context; default fork where available, else spawn.
    """

    def __init__(self, dataset, batch_size=1, shuffle=False, num_workers=0, drop_last=False,
                 seed=0, prefetch_factor=2, multiprocessing_context=None):
        if not hasattr(dataset, "__len__") or not hasattr(dataset, "__getitem__"):
            raise TypeError(f"DataLoader needs a dataset with __len__ and __getitem__, got "
                            f"{type(dataset).__name__}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
                or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if isinstance(num_workers, bool) or not isinstance(num_workers, (int, np.integer)) \
                or num_workers < 0:
            raise ValueError(f"num_workers must be a non-negative integer, got {num_workers!r}")
        if isinstance(prefetch_factor, bool) or not isinstance(prefetch_factor, int) \
                or prefetch_factor < 1:
            raise ValueError(f"prefetch_factor must be a positive integer, got "
                             f"{prefetch_factor!r}")
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.num_workers = int(num_workers)
        self.drop_last = bool(drop_last)
        self.seed = _check_seed(seed)
        self.prefetch_factor = prefetch_factor
        self.multiprocessing_context = multiprocessing_context
        self.epoch = 0
        self.position = 0
        self.skipped = 0
        self.skipped_samples = []
        self.skipped_total = 0
        self._active = None  # token of the iterator allowed to advance the cursor
        # a plain torch-style dataset (no getitem(index, rng)) gets the protocol from an adapter
        self._source = dataset if hasattr(dataset, "getitem") else _Adapter(dataset)

    # --- the order ------------------------------------------------------------------------
    def __len__(self):
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def batch_indices(self, epoch=None):
        """The sample indices of every batch of ``epoch`` (default: the current one)."""
        epoch = self.epoch if epoch is None else epoch
        n = len(self.dataset)
        order = shuffle_rng(self.seed, epoch).permutation(n) if self.shuffle else np.arange(n)
        return [order[s:s + self.batch_size] for s in range(0, len(self) * self.batch_size,
                                                             self.batch_size)][:len(self)]

    def set_epoch(self, epoch):
        """Rewind to the start of ``epoch``."""
        self.epoch = _check_seed(epoch, "epoch")
        self.position = 0
        self._active = None

    # --- checkpointing --------------------------------------------------------------------
    def _cursor(self):
        if 0 < len(self) <= self.position:  # consumed the whole epoch, loop not closed
            return self.epoch + 1, 0, 0
        return self.epoch, self.position, self.skipped

    def state_dict(self):
        """A small JSON-able dict: where the loader is, and what fixes its batches."""
        epoch, position, skipped = self._cursor()
        return {"epoch": epoch, "position": position, "seed": self.seed,
                "shuffle": self.shuffle, "batch_size": self.batch_size,
                "drop_last": self.drop_last, "num_samples": len(self.dataset),
                "skipped": skipped}

    def load_state_dict(self, state):
        """Continue from ``state``: the next batches are those the saved loader would give.

        The seed is taken from the state; batch_size, shuffle, drop_last and the dataset size
        must match (they fix which samples a batch holds).
        """
        missing = {"epoch", "position", "seed"} - set(state)
        if missing:
            raise KeyError(f"DataLoader state dict lacks {sorted(missing)}; got {sorted(state)}")
        expect = {"batch_size": self.batch_size, "shuffle": self.shuffle,
                  "drop_last": self.drop_last, "num_samples": len(self.dataset)}
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
        for b in batches[start:]:
            yield _load_batch(self._source, self.seed, epoch, b)

    def __iter__(self):
        return self._iterate()

    def _iterate(self):
        epoch, position, skipped = self._cursor()
        if (epoch, position) != (self.epoch, self.position):
            self._end_epoch()
        if position == 0:
            self.skipped, self.skipped_samples = 0, []
        token = object()
        self._active = token
        batches = self.batch_indices(epoch)
        pool = None
        if self.num_workers > 0 and position < len(batches):
            pool = _WorkerPool(self, epoch, batches, position)
            source = iter(pool)
        else:
            source = self._local_batches(epoch, batches, position)
        try:
            for k, (images, labels, skipped_here) in enumerate(source, position):
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
                if images is not None:
                    yield images, labels
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
        return (f"DataLoader({type(self.dataset).__name__} of {len(self.dataset)}, "
                f"batch_size={self.batch_size}, shuffle={self.shuffle}, "
                f"num_workers={self.num_workers}, drop_last={self.drop_last}, seed={self.seed}, "
                f"epoch={self.epoch}, position={self.position})")


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
