"""No device-to-host synchronization inside the ops' forward and backward on CuPy.

On a GPU each op runs forward and backward inside a CUDA stream capture: any synchronizing
call (a device-to-host copy such as ``bool(a.any())``, ``int(a.max())``, ``.get()``,
``cupy.bincount``'s checks, a stream synchronize) is refused by CUDA while a capture is open, so
the op fails the test. It skips cleanly without a GPU; the CPU tests below run the same
sync-free code paths (adaptive pooling's per-window NaN rule and its per-bin scatter) on NumPy
against references written from the definitions."""
import numpy as np
import pytest

import minidl
import minidl.functional as F
from minidl import backend


def _captured(fn):
    """Run fn() once to warm (compilation, the memory pool), then again inside a stream
    capture; returns what the captured call returned. Raises if anything synchronized."""
    cp = backend.cupy_module()
    fn()
    cp.cuda.get_current_stream().synchronize()
    s = cp.cuda.Stream(non_blocking=True)
    with s:
        s.begin_capture()
        try:
            out = fn()
        except Exception as e:
            try:
                s.end_capture()
            except Exception:  # noqa: BLE001 - the original error is the one to show
                pass
            raise AssertionError(f"the op synchronized with the host during capture: "
                                 f"{type(e).__name__}: {e}") from e
        g = s.end_capture()
        g.launch(s)
        s.synchronize()
    return out


def _fwd_bwd(op, shape, seed=0, params=()):
    """A closure running op forward and backward on cuda Tensors (inputs made beforehand)."""
    r = np.random.default_rng(seed)
    x = minidl.Tensor(r.standard_normal(shape).astype(np.float32), device="cuda",
                      requires_grad=True)
    ps = [minidl.Tensor(p, device="cuda", requires_grad=True) for p in params]
    y0 = op(x, *ps)
    gy = minidl.Tensor(r.standard_normal(y0.shape).astype(np.float32), device="cuda")

    def run():
        x.grad = None
        for p in ps:
            p.grad = None
        y = op(x, *ps)
        y.backward(gy)
        return y, x.grad
    return run


OPS = {
    "adaptive_max_pool2d": (lambda x: F.adaptive_max_pool2d(x, (3, 4)), (2, 3, 7, 10), ()),
    "adaptive_avg_pool2d": (lambda x: F.adaptive_avg_pool2d(x, (3, 4)), (2, 3, 7, 10), ()),
    "spp": (lambda x: F.spp(x, (6, 3, 2, 1)), (2, 4, 13, 13), ()),
    "max_pool2d": (lambda x: F.max_pool2d(x, 3, 2), (2, 3, 11, 11), ()),
    "avg_pool2d": (lambda x: F.avg_pool2d(x, 3, 2, 1), (2, 3, 11, 11), ()),
    "local_response_norm": (lambda x: F.local_response_norm(x, 5, 1e-4, 0.75, 2.0),
                            (2, 8, 5, 5), ()),
    "prelu": (lambda x, a: F.prelu(x, a), (2, 4, 5, 5), (np.full(4, 0.25, np.float32),)),
    "conv2d_groups": (lambda x, w: F.conv2d(x, w, None, 1, 1, 1, 2), (2, 4, 9, 9),
                      (np.random.default_rng(1).standard_normal((6, 2, 3, 3))
                       .astype(np.float32),)),
}


@pytest.mark.cuda
@pytest.mark.parametrize("name", sorted(OPS))
def test_ops_do_not_synchronize_on_cupy(name):
    if not backend.is_available():
        pytest.skip("CUDA not available (needs CuPy and a GPU)")
    op, shape, params = OPS[name]
    run = _fwd_bwd(op, shape, params=params)
    y_ref, gx_ref = (backend.to_numpy(t.data) for t in run())
    y, gx = _captured(run)
    # the graph replayed the same computation
    np.testing.assert_allclose(backend.to_numpy(y.data), y_ref, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(backend.to_numpy(gx.data), gx_ref, rtol=1e-6, atol=1e-6)


# ---- the same code paths on the CPU -------------------------------------------------------------

def _bins(size, out):
    return [((i * size) // out, -((-(i + 1) * size) // out)) for i in range(out)]


def test_adaptive_max_pool_nan_rule_and_overlapping_bin_gradient_on_cpu():
    """Overlapping bins (7 -> 3, 10 -> 4) that share winners, NaNs in some windows: the output
    follows v > max || isnan(v) (the last NaN wins), and the gradient of each input is the sum
    of gy over every bin it won, in bin order."""
    r = np.random.default_rng(3)
    x = r.standard_normal((2, 3, 7, 10))
    x[0, 1, 2, 3] = np.nan
    x[1, 2, 5, 8] = np.nan
    x[1, 2, 6, 9] = np.nan
    x[0, 0, :3, :4] = 5.0  # ties: the first maximum wins
    gy = r.standard_normal((2, 3, 3, 4))
    t = minidl.Tensor(x, requires_grad=True)
    y = F.adaptive_max_pool2d(t, (3, 4))
    y.backward(minidl.Tensor(gy))
    want_y = np.empty((2, 3, 3, 4))
    want_gx = np.zeros_like(x)
    for n in range(2):
        for c in range(3):
            for i, (h0, h1) in enumerate(_bins(7, 3)):
                for j, (w0, w1) in enumerate(_bins(10, 4)):
                    best, at = -np.inf, None
                    for h in range(h0, h1):
                        for w in range(w0, w1):
                            v = x[n, c, h, w]
                            if at is None or v > best or np.isnan(v):
                                best, at = v, (h, w)
                    want_y[n, c, i, j] = best
                    want_gx[n, c, at[0], at[1]] += gy[n, c, i, j]
    np.testing.assert_array_equal(y.numpy(), want_y)
    np.testing.assert_allclose(t.grad.numpy(), want_gx, rtol=0, atol=1e-15)
