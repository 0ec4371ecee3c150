"""Smoke test of benchmarks/ops_cpu.py: the --quick run works and writes its JSON."""
import importlib.util
import json
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_ops_cpu_quick_run_writes_json(tmp_path, capsys, monkeypatch):
    # main() sets the BLAS thread variables; monkeypatch restores them afterwards
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.setenv(var, os.environ.get(var, ""))
    spec = importlib.util.spec_from_file_location(
        "ops_cpu", os.path.join(ROOT, "benchmarks", "ops_cpu.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "r.json"
    mod.main(["--quick", "--no-torch", "--threads", "1", "--json", str(out)])
    data = json.loads(out.read_text())
    names = [r["name"] for r in data["results"]]
    assert {"conv2 g1", "lrn1", "pool1", "prelu3"} <= set(names)
    assert all(r["minidl_fwd_bwd_s"] > 0 for r in data["results"])
    assert data["environment"]["threads"] == 1
    assert "conv2 g1" in capsys.readouterr().out
