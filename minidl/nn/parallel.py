"""``DistributedDataParallel``: data-parallel training over a :mod:`minidl.distributed` group.

::

    import minidl.distributed as dist
    from minidl.nn.parallel import DistributedDataParallel as DDP

    dist.init_process_group("mpi")                 # under mpiexec -n W
    model = DDP(build_model())                     # rank 0's parameters and buffers everywhere
    opt = optim.SGD(model.parameters(), lr=0.01)
    for x, y in loader:                            # each rank its own share of the batch
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()                            # .grad is now the mean over the ranks
        opt.step()                                 # identical on every rank

How it works (PyTorch's design, simplified):

* At wrap, rank 0's parameters and buffers are broadcast to every rank, so the ranks start equal
  whatever their own initialization was.
* The trainable parameters are grouped, in reverse registration order (roughly the order in
  which backward finishes them), into buckets of about ``bucket_cap_mb`` megabytes (a bucket is
  closed once it reaches the cap, so one large tensor and the few small ones before it share a
  bucket). Every parameter gets a post-accumulate-grad hook
  (:meth:`minidl.Tensor.register_post_accumulate_grad_hook`); when the last gradient of a bucket
  is final, the bucket's gradients are copied into one flat array, summed over the ranks with
  ONE ``all_reduce``, divided by the world size and written back to ``.grad``. Buckets are
  reduced strictly in order on every rank, so all ranks issue the same collectives. A
  61M-parameter AlexNet makes 6 collective calls per step with the default 4 MB buckets.
* Parameters without a gradient are handled. At each forward the graph behind the output is
  walked to find which trainable parameters it reaches; the others will get no gradient in this
  step and count as ready at once, contributing zeros (or a gradient they already hold, from
  ``no_sync`` accumulation). A parameter that got a gradient on some rank ends with the mean
  over all ranks on every rank; one that got none on any rank keeps ``.grad`` None, so the
  optimizer skips it (no weight decay or momentum step), exactly as on one process. Parameters
  with ``requires_grad=False`` are left out.
* Buffers (batch norm's running statistics) are broadcast from rank 0 at the start of every
  training forward when ``broadcast_buffers`` is true (PyTorch's default).

**Batch norm stays per replica**, as in PyTorch's DDP: in training, each rank normalizes with
the mean and variance of its own share of the batch (B samples, not W*B), so a net with batch
norm does not train exactly like one process with the whole batch; the running statistics are
rank 0's. (There is no SyncBatchNorm.) Nets without batch norm (AlexNet, PReLU-nets) train
exactly as one process with W times the batch, up to floating-point rounding.

Limits: one forward, then one backward from (a function of) its output, per step. A gradient
reaching a parameter from outside the wrapped module's output (say a penalty on the parameters
added to the loss) after its bucket was reduced raises an error rather than being silently
left unreduced: put such terms inside the module's forward, or use the optimizer's
``weight_decay``. ``no_sync()`` skips the reduction for gradient accumulation.
"""
import contextlib
import time
import weakref

import numpy as np

from minidl import backend
from minidl.nn.module import Module
from minidl.tensor import Tensor, is_grad_enabled

# module -> weakref to the DistributedDataParallel wrapping it (one live wrapper per module)
_WRAPPED = weakref.WeakKeyDictionary()


def _numel(t):
    """Elements of a Tensor (its array's size), or of anything with ``numel()``."""
    return int(t.data.size) if hasattr(t, "data") else int(t.numel())


class _Bucket:
    """Parameters whose gradients are reduced together, and a flat buffer for them."""

    def __init__(self, index):
        self.index = index
        self.params = []        # (param, index among trainable params, offset, numel)
        self.numel = 0
        self.nbytes = 0
        self.buffer = None
        self.ready = 0          # parameters of this bucket ready in the current step

    def add(self, p, pindex):
        n = _numel(p)
        self.params.append((p, pindex, self.numel, n))
        self.numel += n
        self.nbytes += n * p.dtype.itemsize


def assign_buckets(params, bucket_cap_bytes):
    """Group ``params`` (already in reduction order) into buckets, one dtype and device per
    bucket, as PyTorch does: a parameter joins the open bucket, which is closed once it holds
    ``bucket_cap_bytes`` bytes or more (so a tensor larger than the cap shares its bucket only
    with the small ones before it). Returns lists of indices into ``params``."""
    out, cur, cur_bytes, cur_key = [], [], 0, None
    for i, p in enumerate(params):
        key = (p.dtype, p.device)
        if cur and key != cur_key:
            out.append(cur)
            cur, cur_bytes = [], 0
        cur.append(i)
        cur_bytes += _numel(p) * p.dtype.itemsize
        cur_key = key
        if cur_bytes >= bucket_cap_bytes:
            out.append(cur)
            cur, cur_bytes = [], 0
    if cur:
        out.append(cur)
    return out


def _output_tensors(out):
    """The Tensors inside a forward's output (a Tensor, or tuples/lists/dicts of them)."""
    stack, found = [out], []
    while stack:
        o = stack.pop()
        if isinstance(o, Tensor):
            found.append(o)
        elif isinstance(o, (list, tuple)):
            stack.extend(o)
        elif isinstance(o, dict):
            stack.extend(o.values())
    return found


def _reachable_leaves(tensors):
    """ids of the leaf Tensors that require grad in the graphs behind ``tensors``."""
    leaves, seen = set(), set()
    stack = [t for t in tensors if t.requires_grad]
    while stack:
        t = stack.pop()
        if id(t) in seen:
            continue
        seen.add(id(t))
        fn = t._ctx
        if fn is None:
            leaves.add(id(t))
            continue
        for p in getattr(fn, "parents", ()) or ():
            if p is not None and p.requires_grad and id(p) not in seen:
                stack.append(p)
    return leaves


def _remove_all(handles):
    for h in handles:
        h.remove()


class DistributedDataParallel(Module):
    """Wrap ``module`` for data-parallel training over the initialized process group.

    ``DistributedDataParallel(module, bucket_cap_mb=4, broadcast_buffers=True)``

    Calling it runs ``module``; after ``loss.backward()`` every trainable parameter's ``.grad``
    is the mean over the ranks (see the module docstring for buckets, parameters without a
    gradient and batch norm). The wrapped module is ``.module`` (save ``model.module``'s
    ``state_dict()`` to get keys without the ``module.`` prefix, as in PyTorch).

    Args:
        module: the :class:`~minidl.nn.Module` to replicate; every rank builds the same
            architecture (checked at wrap).
        bucket_cap_mb: the size of a gradient bucket in megabytes (2**20 bytes).
        broadcast_buffers: broadcast rank 0's buffers at the start of each training forward.

    ``stats`` counts the collective calls, bytes and seconds spent in gradient all-reduces
    (``allreduce_calls``, ``allreduce_bytes``, ``allreduce_seconds``) and in copying gradients
    in and out of the buckets (``copy_seconds``); ``reset_stats()`` zeroes it.
    """

    def __init__(self, module, bucket_cap_mb=4.0, broadcast_buffers=True):
        super().__init__()
        from minidl import distributed as dist
        if not isinstance(module, Module):
            raise TypeError(f"DistributedDataParallel wraps a minidl Module, got "
                            f"{type(module).__name__}")
        if isinstance(bucket_cap_mb, bool) or not isinstance(bucket_cap_mb, (int, float)) \
                or not bucket_cap_mb > 0:
            raise ValueError(f"bucket_cap_mb must be a positive number, got {bucket_cap_mb!r}")
        if not dist.is_initialized():
            raise dist.DistributedError(
                "DistributedDataParallel needs an initialized process group: call "
                "minidl.distributed.init_process_group('mpi') (or 'nccl') first, and launch "
                "with mpiexec -n <ranks>")
        other = _WRAPPED.get(module)
        if other is not None and other() is not None:
            raise RuntimeError("this module is already wrapped by a live DistributedDataParallel;"
                               " wrap it once (or delete the old wrapper first)")
        self.module = module
        _WRAPPED[module] = weakref.ref(self)
        self._dist = dist
        self.world_size = dist.get_world_size()
        self.broadcast_buffers = bool(broadcast_buffers)
        self.bucket_cap_mb = float(bucket_cap_mb)

        named = list(module.named_parameters())
        self._check_same_model(named)
        # rank 0's values everywhere (parameters, then buffers)
        for _, p in named:
            dist.broadcast(p, src=0)
        for _, b in module.named_buffers():
            dist.broadcast(b, src=0)

        # trainable parameters in reduction order (reverse registration order)
        trainable = [(n, p) for n, p in named if p.requires_grad][::-1]
        self._names = [n for n, _ in trainable]
        self._params = [p for _, p in trainable]
        self._buckets = []
        self._bucket_of = {}
        for bi, idxs in enumerate(assign_buckets(self._params,
                                                 int(self.bucket_cap_mb * 2 ** 20))):
            b = _Bucket(bi)
            for i in idxs:
                b.add(self._params[i], i)
                self._bucket_of[id(self._params[i])] = (b, i)
            self._buckets.append(b)
        self._handles = []
        ref = weakref.ref(self)

        def hook(p, ref=ref):
            ddp = ref()
            if ddp is not None:
                ddp._on_grad_ready(p)

        for p in self._params:
            self._handles.append(p.register_post_accumulate_grad_hook(hook))
        # unregister the hooks when this wrapper goes away (the module may be wrapped again)
        weakref.finalize(self, _remove_all, self._handles)

        self._sync = True
        self._armed = False         # a training forward prepared a reduction
        self._started = False       # a hook fired in the armed step
        self._done = False          # the armed step's reduction finished
        self._marked = np.zeros(len(self._params), dtype=bool)
        self._has_grad = np.zeros(len(self._params), dtype=bool)
        self._global_used = None
        self._next_bucket = 0
        self.reset_stats()

    # -- set-up helpers ------------------------------------------------------------------------
    def _check_same_model(self, named):
        """Every rank must hold the same parameter and buffer names, shapes and dtypes."""
        sig = [(n, p.shape, str(p.dtype), bool(p.requires_grad)) for n, p in named] + \
              [(n, b.shape, str(b.dtype), None) for n, b in self.module.named_buffers()]
        sigs = self._dist.all_gather_object(sig)
        for r, s in enumerate(sigs):
            if s != sigs[0]:
                diff = next(((a, b) for a, b in zip(sigs[0], s) if a != b),
                            (f"{len(sigs[0])} entries", f"{len(s)} entries"))
                raise RuntimeError(f"DistributedDataParallel: rank {r}'s model differs from rank "
                                   f"0's (first difference: rank 0 has {diff[0]}, rank {r} has "
                                   f"{diff[1]}); every rank must build the same model")

    @property
    def bucket_sizes(self):
        """The number of parameters in each gradient bucket, in reduction order."""
        return [len(b.params) for b in self._buckets]

    def reset_stats(self):
        """Zero ``stats``."""
        self.stats = {"allreduce_calls": 0, "allreduce_bytes": 0, "allreduce_seconds": 0.0,
                      "copy_seconds": 0.0, "steps": 0}

    # -- forward ------------------------------------------------------------------------------
    def forward(self, *args, **kwargs):
        """Run the wrapped module; in training with gradients on, prepare this step's gradient
        reduction (broadcast buffers, find the parameters the output does not reach)."""
        prepare = self.training and is_grad_enabled()
        self._done = False
        if prepare:
            self._check_previous_step()
            self._armed = False  # armed again below unless inside no_sync()
            if self.broadcast_buffers and self.world_size > 1:
                self._broadcast_buffers()
        out = self.module(*args, **kwargs)
        if prepare and self._sync:
            reached = _reachable_leaves(_output_tensors(out))
            self._arm(reached)
        return out

    def _check_previous_step(self):
        if self._armed and self._started and self._next_bucket < len(self._buckets):
            missing = [self._names[i] for i in range(len(self._params)) if not self._marked[i]]
            self._armed = False
            raise RuntimeError(
                "DistributedDataParallel: the previous backward pass ended before every "
                f"gradient was reduced; these parameters got no gradient although the output "
                f"reached them: {missing[:10]}{' ...' if len(missing) > 10 else ''} (a backward "
                "function returned None for them?)")

    def _arm(self, reached):
        self._armed = True
        self._started = False
        self._next_bucket = 0
        self._global_used = None
        for b in self._buckets:
            b.ready = 0
        self._marked[:] = False
        for i, p in enumerate(self._params):
            # a parameter the output does not reach gets no hook call: ready now
            self._has_grad[i] = True
            if id(p) not in reached:
                self._has_grad[i] = p.grad is not None
                self._mark(i)

    def _mark(self, i):
        self._marked[i] = True
        b, _ = self._bucket_of[id(self._params[i])]
        b.ready += 1

    def _broadcast_buffers(self):
        groups = {}
        for b in self.module.buffers():
            groups.setdefault((b.dtype, b.device), []).append(b)
        for bufs in groups.values():
            xp = backend.get_array_module(bufs[0].data)
            flat = xp.concatenate([b.data.reshape(-1) for b in bufs])
            self._dist.broadcast(flat, src=0)
            off = 0
            for b in bufs:
                n = _numel(b)
                b.data[...] = flat[off:off + n].reshape(b.shape)
                b._version += 1
                off += n

    @contextlib.contextmanager
    def no_sync(self):
        """Inside, forward/backward accumulate local gradients without reducing them (gradient
        accumulation); the first backward after the block reduces the accumulated sum."""
        old = self._sync
        self._sync = False
        try:
            yield
        finally:
            self._sync = old

    # -- backward -----------------------------------------------------------------------------
    def _on_grad_ready(self, p):
        _, i = self._bucket_of[id(p)]
        if not self._armed and not self._done:
            return  # no_sync, or a backward through an eval / no_grad-free forward
        if self._done or self._marked[i]:
            raise RuntimeError(
                f"DistributedDataParallel: parameter {self._names[i]!r} received a gradient "
                "that was not expected in this step (a second backward through the same "
                "forward, or a gradient from outside the wrapped module's output, e.g. a "
                "penalty on the parameters added to the loss); one backward per forward, and "
                "put extra loss terms inside the module's forward")
        self._started = True
        self._mark(i)
        while self._next_bucket < len(self._buckets):
            nb = self._buckets[self._next_bucket]
            if nb.ready < len(nb.params):
                break
            self._reduce(nb)
            self._next_bucket += 1
        if self._next_bucket == len(self._buckets):
            self._armed = False
            self._done = True
            self.stats["steps"] += 1

    def _reduce(self, b):
        xp = backend.get_array_module(b.params[0][0].data)
        nflags = len(self._params) if b.index == 0 else 0
        t0 = time.perf_counter()
        if b.buffer is None:
            b.buffer = xp.empty(b.numel + nflags, dtype=b.params[0][0].dtype)
        buf = b.buffer
        for p, _, off, n in b.params:
            if p.grad is None:
                buf[off:off + n] = 0
            else:
                buf[off:off + n] = p.grad.data.reshape(-1)
        if nflags:
            buf[b.numel:] = xp.asarray(self._has_grad.astype(buf.dtype))
        t1 = time.perf_counter()
        self._dist.all_reduce(buf, op="sum")
        t2 = time.perf_counter()
        if nflags:
            self._global_used = backend.to_numpy(buf[b.numel:]) > 0
        grads = buf[:b.numel]
        grads /= self.world_size
        for p, i, off, n in b.params:
            if not self._global_used[i]:
                continue  # no rank has a gradient for it: .grad stays None, as on one process
            g = grads[off:off + n].reshape(p.shape)
            if p.grad is not None and p.grad.shape == p.shape and p.grad.dtype == g.dtype \
                    and getattr(p.grad.data.flags, "writeable", True):  # (CuPy: always)
                p.grad.data[...] = g  # the engine's own array: no new allocation
            else:
                p.grad = Tensor._make(g.copy())
        t3 = time.perf_counter()
        st = self.stats
        st["allreduce_calls"] += 1
        st["allreduce_bytes"] += int(buf.nbytes)
        st["allreduce_seconds"] += t2 - t1
        st["copy_seconds"] += (t1 - t0) + (t3 - t2)

    def extra_repr(self):
        return (f"world_size={self.world_size}, buckets={len(self._buckets)}, "
                f"bucket_cap_mb={self.bucket_cap_mb:g}")
