"""benchmarks/gpu_check.sh: the one-command GPU check. Here (no GPU) only its dry run can run:
it must say it is a dry run, list the steps it would take, write nothing and exit 0."""
import os
import shutil
import subprocess
import sys

import pytest

from minidl import backend

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "benchmarks", "gpu_check.sh")

pytestmark = pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None,
                                reason="needs bash and coreutils timeout")


def _run(args, **env):
    e = dict(os.environ, PYTHON=sys.executable, **env)
    return subprocess.run(["bash", SCRIPT, *args], check=False, capture_output=True, text=True,
                          env=e, cwd=ROOT, timeout=120)


def test_dry_run_without_a_gpu(tmp_path):
    out = tmp_path / "out"
    # on a machine WITH a GPU the plain call would run the whole check: force the dry run there
    r = _run([str(out)], **({"GPU_CHECK_DRY_RUN": "1"} if backend.is_available() else {}))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "DRY RUN" in r.stdout and "not measured" in r.stdout
    for step in ("pytest", "memcheck", "racecheck", "synccheck", "kernels.py", "models.py",
                 "alexnet_imagenet.py", "nccl"):
        assert step in r.stdout, f"the plan does not mention {step}:\n{r.stdout}"
    assert "--tf32 off|on" in r.stdout
    assert not out.exists(), "a dry run must not create OUTDIR"
    # the budget: per-step timeouts sum to less than the 8 minutes the check may take
    total = int(r.stdout.split("sum of step timeouts ")[1].split("s")[0])
    assert total < 480


def test_usage_and_help():
    r = _run([])
    assert r.returncode == 2 and "usage" in r.stderr
    r = _run(["--help"])
    assert r.returncode == 0 and "OUTDIR" in r.stdout and "GPU_CHECK_DRY_RUN" in r.stdout


def test_step_timeouts_are_configurable(tmp_path):
    r = _run([str(tmp_path / "o")], GPU_CHECK_DRY_RUN="1", GPU_CHECK_T_KERNELS="7")
    assert r.returncode == 0
    line = [ln for ln in r.stdout.splitlines() if ln.strip().startswith("kernels ")
            and ln.strip().split()[-1].isdigit()]
    assert line and line[0].split()[-1] == "7", r.stdout


@pytest.mark.slow  # runs every step of the script (each cut short by its timeout)
def test_forced_run_records_every_step_with_timeouts_and_a_summary(tmp_path):
    """GPU_CHECK_FORCE=1 runs the real path without a GPU: the steps fail quickly, one is cut
    by its 2-second timeout, and the script must still log each step, write steps.jsonl and the
    summary, and exit 1."""
    import json
    out = tmp_path / "out"
    r = _run([str(out)], GPU_CHECK_FORCE="1", GPU_CHECK_T_PYTEST="2", GPU_CHECK_T_KERNELS="20",
             GPU_CHECK_BUDGET_S="90", COMPUTE_SANITIZER="/nonexistent/compute-sanitizer")
    assert r.returncode == 1, r.stdout[-2000:] + r.stderr[-2000:]
    steps = [json.loads(ln) for ln in (out / "steps.jsonl").read_text().splitlines()]
    names = [s["step"] for s in steps]
    for step in ("env", "pytest", "memcheck", "racecheck", "synccheck", "kernels",
                 "models_tf32_off_alexnet", "models_tf32_on_resnet50", "nccl", "alexnet",
                 "alexnet_learned"):
        assert step in names, f"{step} missing from {names}"
    by = {s["step"]: s for s in steps}
    assert by["pytest"]["timed_out"] and by["pytest"]["seconds"] < 10
    assert by["kernels"]["rc"] == 0  # without a GPU benchmarks/kernels.py says so and exits 0
    assert by["env"]["rc"] != 0 and by["alexnet_learned"]["rc"] == 1
    summary = json.loads((out / "summary.json").read_text())
    assert summary["ok"] is False and len(summary["steps"]) == len(steps)
    assert "TIMEOUT" in (out / "summary.txt").read_text()
    assert (out / "logs" / "kernels.log").read_text().strip()
