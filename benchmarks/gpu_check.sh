#!/usr/bin/env bash
# gpu_check.sh OUTDIR -- everything minidl can prove about itself on one NVIDIA GPU, in one command.
#
#   bash benchmarks/gpu_check.sh OUTDIR          # on a GPU machine: < 8 minutes on an H100/H200
#   bash benchmarks/gpu_check.sh --help
#
# Runs from a plain checkout (PYTHONPATH is set to the checkout; nothing is installed, nothing is
# downloaded) on a machine that already has CuPy, PyTorch and NumPy. Steps, each under its own
# timeout (one hang cannot eat the budget) and all under an overall budget:
#
#   env         device, driver, CUDA, CuPy / PyTorch / NumPy versions      -> env.json, logs/env.log
#   pytest      pytest -m cuda (every CUDA test), summary line             -> pytest_cuda.xml
#   memcheck    compute-sanitizer --tool memcheck  over the kernel tests   -> logs/sanitizer_*.log
#   racecheck   compute-sanitizer --tool racecheck (said so and skipped where the tool is missing
#   synccheck   compute-sanitizer --tool synccheck  or refuses the device; the run goes on)
#   kernels     benchmarks/kernels.py, batch 128 AlexNet shapes            -> kernels.json
#   models_*    benchmarks/models.py --device cuda: AlexNet b128 and ResNet-50 b64 training
#               steps beside PyTorch+cuDNN, TF32 off on both sides, then on -> models_*.json
#   nccl        minidl.distributed: init_process_group("nccl") at world size 1, collectives on
#               CuPy arrays, one DistributedDataParallel step against a plain copy
#   alexnet     examples/alexnet_imagenet.py --device cuda, ~2 minutes, must learn
#                                                                           -> alexnet/results.json
#
# Everything lands in OUTDIR: logs/<step>.log, steps.jsonl (one JSON line per step: rc,
# seconds, timed_out, note), summary.json and summary.txt. The exit code is 0 when every step
# passed (or was skipped with a reason), 1 otherwise; the steps after a failure still run.
#
# Without a GPU (no CuPy, or no visible device) it prints what it would do and exits 0.
# GPU_CHECK_DRY_RUN=1 forces that plan-only mode on any machine; GPU_CHECK_FORCE=1 runs the steps
# even without a GPU (they fail; the tests use it to check the script's own machinery).
#
# Knobs (environment): PYTHON (default python3), GPU_CHECK_BUDGET_S (overall, default 475),
# GPU_CHECK_T_<STEP> (per-step timeout in seconds, e.g. GPU_CHECK_T_KERNELS=90),
# GPU_CHECK_ALEXNET_EPOCHS (default 15), COMPUTE_SANITIZER (path of the tool).
set -u

usage() { sed -n '2,/^set -u$/p' "$0" | sed -e '/^set -u$/d' -e 's/^# \{0,1\}//'; }

case "${1:-}" in
  -h|--help) usage; exit 0 ;;
  "") echo "usage: bash benchmarks/gpu_check.sh OUTDIR   (--help for details)" >&2; exit 2 ;;
esac

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="$1"
PY="${PYTHON:-python3}"
command -v "$PY" >/dev/null 2>&1 || PY=python
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONDONTWRITEBYTECODE=1
BUDGET="${GPU_CHECK_BUDGET_S:-475}"
EPOCHS="${GPU_CHECK_ALEXNET_EPOCHS:-15}"

# step name -> default timeout (seconds); the sum stays under the 8-minute target
declare -A T=([env]=15 [pytest]=55 [memcheck]=35 [racecheck]=35 [synccheck]=35 [kernels]=60
              [models_tf32_off_alexnet]=25 [models_tf32_off_resnet50]=25
              [models_tf32_on_alexnet]=25 [models_tf32_on_resnet50]=25 [nccl]=20 [alexnet]=120)
STEPS=(env pytest memcheck racecheck synccheck kernels models_tf32_off_alexnet
       models_tf32_off_resnet50 models_tf32_on_alexnet models_tf32_on_resnet50 nccl alexnet)
timeout_of() {
  local v="GPU_CHECK_T_${1^^}"
  echo "${!v:-${T[$1]}}"
}

plan() {
  cat <<EOF
  env        $PY: device, driver, CUDA, CuPy/PyTorch/NumPy versions -> $OUT/env.json
  pytest     $PY -m pytest -m cuda tests/  -> summary line, $OUT/pytest_cuda.xml
  memcheck   compute-sanitizer --tool memcheck  $PY -m pytest -m cuda tests/test_kernels.py
  racecheck  compute-sanitizer --tool racecheck (same tests)
  synccheck  compute-sanitizer --tool synccheck (same tests)
  kernels    $PY benchmarks/kernels.py --batch 128 --out $OUT/kernels.json
  models     $PY benchmarks/models.py --device cuda --tf32 off|on: alexnet batch 128,
             resnet50 batch 64, beside PyTorch+cuDNN -> $OUT/models_tf32_{off,on}_*.json
  nccl       minidl.distributed init_process_group("nccl"), world size 1: collectives, a DDP step
  alexnet    $PY examples/alexnet_imagenet.py --device cuda --epochs $EPOCHS --out $OUT/alexnet
             (must learn: top-1 error below 0.7, chance 0.9; from log.jsonl if cut short)
EOF
  local tot=0 s
  echo "  per-step timeouts (s):"
  for s in "${STEPS[@]}"; do printf '    %-26s %s\n' "$s" "$(timeout_of "$s")"; tot=$((tot + $(timeout_of "$s"))); done
  echo "  sum of step timeouts ${tot}s, overall budget ${BUDGET}s"
}

have_gpu() {
  "$PY" - <<'EOF' 2>/dev/null
import sys
from minidl import backend
sys.exit(0 if backend.is_available() else 1)
EOF
}

if [ "${GPU_CHECK_FORCE:-0}" = "0" ] && { [ "${GPU_CHECK_DRY_RUN:-0}" != "0" ] || ! have_gpu; }; then
  why="GPU_CHECK_DRY_RUN is set"
  [ "${GPU_CHECK_DRY_RUN:-0}" != "0" ] || why="$("$PY" -c 'from minidl import backend; print(backend._why_no_cuda())' 2>&1 | tail -1)"
  echo "gpu_check: DRY RUN, no GPU here ($why)."
  echo "gpu_check: on a machine with an NVIDIA GPU, CuPy and PyTorch this would run, writing into $OUT:"
  plan
  echo "gpu_check: nothing was run; GPU figures: not measured."
  exit 0
fi

mkdir -p "$OUT/logs" || { echo "gpu_check: cannot create $OUT" >&2; exit 2; }
OUT="$(cd "$OUT" && pwd)"
: > "$OUT/steps.jsonl"
START=$(date +%s)
FAILED=0
cd "$REPO" || exit 2

# run_step NAME NOTE CMD...: the command under min(its timeout, budget left), output to
# logs/NAME.log (and the terminal), one JSON line in steps.jsonl
run_step() {
  local name="$1" note="$2"; shift 2
  local limit left t0 rc secs timed_out=false
  limit=$(timeout_of "$name")
  left=$((BUDGET - ($(date +%s) - START)))
  if [ "$left" -lt 5 ]; then
    echo "== $name: skipped, overall budget ${BUDGET}s spent"
    printf '{"step": "%s", "rc": null, "seconds": 0, "timed_out": false, "note": "skipped: budget spent"}\n' "$name" >> "$OUT/steps.jsonl"
    FAILED=1
    return
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  echo "== $name (timeout ${limit}s): $*"
  t0=$(date +%s.%N)
  timeout -k 5 "$limit" "$@" > >(tee "$OUT/logs/$name.log") 2>&1
  rc=$?
  secs=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b - a}')
  if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then timed_out=true; fi
  [ "$rc" -eq 0 ] || FAILED=1
  echo "== $name: rc $rc in ${secs}s${note:+ ($note)}"
  "$PY" -c 'import json, sys; print(json.dumps(dict(step=sys.argv[1], rc=int(sys.argv[2]), seconds=float(sys.argv[3]), timed_out=sys.argv[4] == "true", note=sys.argv[5])))' \
    "$name" "$rc" "$secs" "$timed_out" "$note" >> "$OUT/steps.jsonl"
}

skip_step() {  # skip_step NAME REASON: recorded, not a failure
  echo "== $1: skipped: $2"
  "$PY" -c 'import json, sys; print(json.dumps(dict(step=sys.argv[1], rc=None, seconds=0, timed_out=False, note="skipped: " + sys.argv[2])))' \
    "$1" "$2" >> "$OUT/steps.jsonl"
}

# ---- env ---------------------------------------------------------------------------------------
run_step env "" "$PY" - "$OUT/env.json" <<'EOF'
import json, os, platform, subprocess, sys
info = {"python": platform.python_version(), "platform": platform.platform()}
import numpy; info["numpy"] = numpy.__version__
import cupy
info["cupy"] = cupy.__version__
info["cuda_runtime"] = cupy.cuda.runtime.runtimeGetVersion()
info["cuda_driver"] = cupy.cuda.runtime.driverGetVersion()
dev = cupy.cuda.Device()
p = cupy.cuda.runtime.getDeviceProperties(dev.id)
name = p["name"].decode() if isinstance(p["name"], bytes) else p["name"]
info.update(device=name, compute_capability=dev.compute_capability,
            memory_gib=round(p["totalGlobalMem"] / 2 ** 30, 1),
            multiprocessors=p["multiProcessorCount"], device_count=cupy.cuda.runtime.getDeviceCount())
try:
    import torch
    info.update(torch=torch.__version__, torch_cuda=torch.version.cuda,
                cudnn=torch.backends.cudnn.version(), torch_sees_gpu=torch.cuda.is_available())
except Exception as e:
    info["torch"] = f"not importable: {type(e).__name__}: {e}"
try:
    info["nvidia_smi"] = subprocess.run(
        ["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm,power.limit",
         "--format=csv,noheader"], capture_output=True, text=True, timeout=10).stdout.strip()
except Exception as e:
    info["nvidia_smi"] = f"unavailable: {type(e).__name__}"
for k, v in info.items():
    print(f"{k:<20} {v}")
tmp = sys.argv[1] + ".tmp"
with open(tmp, "w") as f:
    json.dump(info, f, indent=1)
os.replace(tmp, sys.argv[1])
EOF

# ---- tests -------------------------------------------------------------------------------------
PYTEST=("$PY" -m pytest -p no:cacheprovider -q -m cuda -o addopts="")
run_step pytest "every test marked cuda" "${PYTEST[@]}" --junitxml="$OUT/pytest_cuda.xml" tests/

SAN="${COMPUTE_SANITIZER:-$(command -v compute-sanitizer || true)}"
for d in "${CUDA_HOME:-}" "${CUDA_PATH:-}" /usr/local/cuda /opt/cuda; do
  [ -n "$SAN" ] && break
  [ -n "$d" ] && [ -x "$d/bin/compute-sanitizer" ] && SAN="$d/bin/compute-sanitizer"
done
if [ -n "$SAN" ] && [ ! -x "$SAN" ]; then SAN=""; fi
for tool in memcheck racecheck synccheck; do
  if [ -z "$SAN" ]; then
    skip_step "$tool" "compute-sanitizer not found (PATH, CUDA_HOME, /usr/local/cuda)"
    continue
  fi
  # a refusal (unsupported device, no permission) shows as a non-zero rc and the tool's words
  # in the log; the loop goes on either way
  run_step "$tool" "compute-sanitizer over the kernel tests" "$SAN" --tool "$tool" \
    --error-exitcode 3 --target-processes all "${PYTEST[@]}" tests/test_kernels.py
done

# ---- benchmarks --------------------------------------------------------------------------------
run_step kernels "" "$PY" benchmarks/kernels.py --batch 128 --out "$OUT/kernels.json"
for tf in off on; do
  run_step "models_tf32_${tf}_alexnet" "" "$PY" benchmarks/models.py --device cuda --tf32 "$tf" \
    --models alexnet --batch-sizes 128 --repeat 3 --out "$OUT/models_tf32_${tf}_alexnet.json"
  run_step "models_tf32_${tf}_resnet50" "" "$PY" benchmarks/models.py --device cuda --tf32 "$tf" \
    --models resnet50 --batch-sizes 64 --repeat 3 --out "$OUT/models_tf32_${tf}_resnet50.json"
done

# ---- SLOT: distributed (NCCL at world size 1) ----------------------------------------------------
# One process, no launcher: init_process_group("nccl") on GPU 0 (a group of one needs no MPI;
# mpi4py is used when present), the collectives on CuPy arrays against hand-computed values, and
# one DistributedDataParallel step whose gradients must equal a plain copy's (the bucketed NCCL
# all-reduce of a group of one). NCCL through cupy.cuda.nccl is checked first: where it is
# missing the step is a recorded skip, not a failure. Further distributed checks go in this slot.
NCCL_MISSING="$("$PY" 2>&1 <<'EOF' | tail -1
try:
    import minidl.distributed  # noqa: F401
except Exception as e:
    print(f"minidl.distributed not importable ({type(e).__name__})"); raise SystemExit
try:
    from cupy.cuda import nccl
    if not getattr(nccl, "available", True):
        raise ImportError("cupy.cuda.nccl.available is False")
except Exception as e:
    print(f"NCCL is not usable through cupy.cuda.nccl ({type(e).__name__}: {e})")
EOF
)"
if [ -z "$NCCL_MISSING" ]; then
  run_step nccl "init_process_group(nccl), world size 1: collectives + one DDP step" "$PY" - <<'EOF'
import time
t0 = time.perf_counter()
import cupy as cp
import numpy as np
import minidl
import minidl.distributed as dist
import minidl.functional as F
from minidl.nn.parallel import DistributedDataParallel as DDP
dist.init_process_group("nccl")
assert (dist.get_rank(), dist.get_world_size(), dist.get_backend()) == (0, 1, "nccl")
print(f"nccl group of 1 on GPU {cp.cuda.Device().id}, NCCL {cp.cuda.nccl.get_version()}",
      flush=True)
for dtype in (cp.float32, cp.float64, cp.int64):
    a = cp.arange(6, dtype=dtype).reshape(2, 3) - 2
    dist.all_reduce(a)                     # sum over one rank: unchanged
    assert (cp.asnumpy(a) == np.arange(6).reshape(2, 3) - 2).all(), dtype
a = minidl.Tensor(cp.asarray([1.0, -3.0, 8.0]))
dist.all_reduce(a, op="max")
dist.all_reduce(a, op="avg")
dist.broadcast(a, src=0)
assert cp.asnumpy(a.data).tolist() == [1.0, -3.0, 8.0]
view = cp.ones((4, 4))[:, ::2]             # non-contiguous: copied, reduced, written back
dist.all_reduce(view)
assert float(view.sum()) == 8.0
try:
    dist.all_reduce(np.zeros(2))           # a NumPy array on the nccl backend: a clear error
except dist.DistributedError as e:
    print("expected:", str(e)[:80])
else:
    raise AssertionError("nccl accepted a NumPy array")
minidl.manual_seed(0)
model = minidl.nn.Linear(8, 3).double().to("cuda")
plain = minidl.nn.Linear(8, 3).double().to("cuda")
plain.load_state_dict(model.state_dict())
ddp = DDP(model)
rng = np.random.default_rng(0)
x = minidl.Tensor(cp.asarray(rng.standard_normal((5, 8))))
y = minidl.Tensor(cp.asarray(rng.integers(0, 3, 5)))
F.cross_entropy(ddp(x), y).backward()
F.cross_entropy(plain(x), y).backward()
for (n, p), q in zip(model.named_parameters(), plain.parameters()):
    err = float(cp.abs(p.grad.data - q.grad.data).max())
    assert err == 0.0, (n, err)
assert ddp.stats["allreduce_calls"] == 1, ddp.stats
dist.barrier()
dist.destroy_process_group()
print(f"nccl world size 1: collectives and a DDP step OK in {time.perf_counter() - t0:.1f} s")
EOF
else
  skip_step nccl "$NCCL_MISSING"
fi
# ---- end of SLOT ---------------------------------------------------------------------------------

run_step alexnet "must learn" "$PY" examples/alexnet_imagenet.py --device cuda --epochs "$EPOCHS" \
  --workers 4 --out "$OUT/alexnet" --data-root "$OUT/alexnet/data"
# learned? the final ten-crop error from results.json or, if the run was cut by its timeout,
# the last epoch's centre-crop error from log.jsonl
"$PY" - "$OUT/alexnet" <<'EOF' 2>&1 | tee -a "$OUT/logs/alexnet.log"
import json, os, sys
d = sys.argv[1]
err, where = None, "no results.json or log.jsonl"
if os.path.exists(os.path.join(d, "results.json")):
    err, where = json.load(open(os.path.join(d, "results.json"))).get("val_top1_error"), "final, 10 crops"
elif os.path.exists(os.path.join(d, "log.jsonl")):
    recs = [json.loads(l) for l in open(os.path.join(d, "log.jsonl")) if '"val_top1"' in l]
    if recs:
        err, where = recs[-1]["val_top1"], f"epoch {recs[-1].get('epoch')}, centre crop (run cut short)"
print(f"alexnet: val top-1 error {err} ({where}); chance 0.9 on 10 classes; learned = below 0.7")
sys.exit(0 if err is not None and err < 0.7 else 1)
EOF
if [ "${PIPESTATUS[0]}" -eq 0 ]; then
  echo '{"step": "alexnet_learned", "rc": 0, "seconds": 0, "timed_out": false, "note": "learned (see logs/alexnet.log)"}' >> "$OUT/steps.jsonl"
else
  FAILED=1
  echo '{"step": "alexnet_learned", "rc": 1, "seconds": 0, "timed_out": false, "note": "did not learn (see logs/alexnet.log)"}' >> "$OUT/steps.jsonl"
fi

# ---- summary -----------------------------------------------------------------------------------
"$PY" - "$OUT" "$FAILED" "$(( $(date +%s) - START ))" <<'EOF'
import json, os, sys
out, failed, total = sys.argv[1], sys.argv[2] == "1", int(sys.argv[3])
steps = [json.loads(l) for l in open(os.path.join(out, "steps.jsonl")) if l.strip()]
def tail(name):
    p = os.path.join(out, "logs", name + ".log")
    if not os.path.exists(p):
        return ""
    lines = [l.strip() for l in open(p, errors="replace") if l.strip()]
    return lines[-1][:160] if lines else ""
lines = [f"gpu_check: {'FAILED' if failed else 'OK'} in {total}s"]
for s in steps:
    st = "skip" if s["rc"] is None else ("TIMEOUT" if s["timed_out"] else ("ok" if s["rc"] == 0 else f"rc={s['rc']}"))
    show_tail = st not in ("ok", "skip") or s["step"] in ("pytest", "memcheck", "racecheck", "synccheck")
    detail = " | ".join(x for x in (s["note"], tail(s["step"]) if show_tail else "") if x)
    lines.append(f"  {s['step']:<26} {st:<8} {s['seconds']:>6.1f}s  {detail}")
for name in ("env.json", "kernels.json"):
    p = os.path.join(out, name)
    if os.path.exists(p):
        d = json.load(open(p))
        if name == "env.json":
            lines.append(f"  device {d.get('device')}, driver {d.get('cuda_driver')}, cupy {d.get('cupy')}, torch {d.get('torch')}")
        else:
            lines.append(f"  copy bandwidth {d.get('copy_gbs', 0):.0f} GB/s; kernel rows: {len(d.get('results', []))}")
text = "\n".join(lines)
print(text)
for name, data in (("summary.txt", text + "\n"), ("summary.json", json.dumps(dict(ok=not failed, seconds=total, steps=steps), indent=1))):
    tmp = os.path.join(out, name + ".tmp")
    with open(tmp, "w") as f:
        f.write(data)
    os.replace(tmp, os.path.join(out, name))
EOF
exit "$FAILED"
