"""benchmarks/kernels.py's timing logic (time_calls) against a fake CuPy whose device clock
advances by a known amount per kernel: the device time must come from a CUDA-graph replay
between one event pair, fall back to back-to-back launches when capture is refused, and keep
the captured calls' outputs alive while the graph exists. Real GPU figures: not measured here."""
import importlib.util
import os
import sys
import weakref

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location(
        "kernels_benchmark", os.path.join(ROOT, "benchmarks", "kernels.py"))
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("kernels_benchmark", mod)
    spec.loader.exec_module(mod)
    return mod


class FakeCp:
    """Enough of cupy for time_calls: kernels 'run' by advancing a device clock by KERNEL_MS."""
    KERNEL_MS = 0.25

    def __init__(self, refuse_capture=False):
        self.clock = 0.0
        self.capturing = None
        self.refuse = refuse_capture
        self.executed = 0
        cp = self

        class Graph:
            def __init__(self, calls):
                self.calls = calls

            def launch(self, stream=None):
                for _ in self.calls:
                    cp.run_kernel()

        class Stream:
            def __init__(self, non_blocking=False):
                pass

            def __enter__(self):
                return self

            def __exit__(self, *a):
                return False

            def synchronize(self):
                pass

            def begin_capture(self):
                cp.capturing = []

            def end_capture(self):
                calls, cp.capturing = cp.capturing, None
                return Graph(calls)

        class Event:
            def record(self, stream=None):
                self.t = cp.clock

            def synchronize(self):
                pass

        class Cuda:
            pass
        self.cuda = Cuda()
        self.cuda.Stream, self.cuda.Event = Stream, Event
        self.cuda.get_elapsed_time = lambda a, b: b.t - a.t

    def run_kernel(self):
        self.executed += 1
        self.clock += self.KERNEL_MS

    def launch(self):
        """What a wrapper does: enqueue one kernel (recorded while capturing)."""
        if self.capturing is not None:
            if self.refuse:
                raise RuntimeError("operation not permitted when stream is capturing")
            self.capturing.append(1)
        else:
            self.run_kernel()


def test_device_time_from_a_graph_replay(bench):
    cp = FakeCp()
    live = weakref.WeakSet()
    alive_at_replay = []

    class Out:
        pass

    def fn(x):
        cp.launch()
        o = Out()
        live.add(o)
        return o

    run_kernel = cp.run_kernel

    def counting_run():
        alive_at_replay.append(len(live))
        run_kernel()
    cp.run_kernel = counting_run

    r = bench.time_calls(fn, [(1,), (2,)], reps=4, replays=3, cp=cp)
    assert r["device_method"] == "cuda-graph"
    assert r["device_ms"] == pytest.approx(FakeCp.KERNEL_MS)
    assert r["call_ms"] >= 0 and r["host_ms"] >= 0
    # warm-up 3 + 3 host rounds of 4 + 1 graph check launch of 4 + 3 replays of 4
    assert cp.executed == 3 + 12 + 4 + 12
    assert max(alive_at_replay) == 4, "the captured calls' outputs live while the graph runs"
    assert len(live) == 0, "and are released with the graph"


def test_fallback_when_capture_is_refused(bench):
    cp = FakeCp(refuse_capture=True)
    r = bench.time_calls(lambda: cp.launch(), [()], reps=5, replays=2, cp=cp)
    assert r["device_method"].startswith("events: RuntimeError")
    assert r["device_ms"] == pytest.approx(FakeCp.KERNEL_MS)
    assert cp.capturing is None, "a refused capture must be ended"


def test_targets_are_the_issues(bench):
    assert bench.target_of("lrn_forward")[1] == 0.80
    assert bench.target_of("prelu_backward_shared")[1] == 0.80
    assert bench.target_of("max_pool2d_forward")[1] == 0.70
    assert bench.target_of("avg_pool2d_backward")[1] == 0.60
    assert bench.target_of("col2im")[1] == 0.60
    assert bench.target_of("conv2d_backward")[1] == pytest.approx(1 / 1.5)
    assert bench.target_of("something_else") is None
