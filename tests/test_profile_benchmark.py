"""benchmarks/profile_step.py: the parts it charges each function to, and a small run."""
import importlib.util
import json
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _module():
    spec = importlib.util.spec_from_file_location(
        "profile_step", os.path.join(ROOT, "benchmarks", "profile_step.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_functions_are_charged_to_their_parts():
    mod = _module()
    from minidl.functional import norm
    conv = os.path.join("functional", "conv.py")
    assert mod.classify(conv, "_cols_cn", 1) == "conv: im2col copies"
    assert mod.classify(conv, "_col2im_cn", 1) == "conv: col2im"
    assert mod.classify(conv, "backward", 1) == "conv: GEMMs + layout"
    # norm.py holds LRN and batch norm; a method's first line tells which "forward" it is
    lrn_fwd = norm.LocalResponseNormFunction.forward.__code__
    bn_fwd = norm.BatchNormFunction.forward.__code__
    nf = os.path.join("functional", "norm.py")
    assert mod.classify(nf, "forward", lrn_fwd.co_firstlineno) == "LRN"
    assert mod.classify(nf, "forward", bn_fwd.co_firstlineno) == "batch norm"
    assert mod.classify("tensor.py", "backward", 1) == "engine"
    assert mod.classify("ops.py", "relu", 1) == "linear, ReLU, elementwise"
    assert mod.classify("serialization.py", "save", 1) == "other"


@pytest.mark.slow  # a few small profiled steps
def test_small_profile_run_writes_json(tmp_path, capsys):
    out = tmp_path / "p.json"
    mod = _module()
    mod.main(["--model", "resnet20", "--batch-size", "2", "--steps", "1", "--out", str(out)])
    r = json.loads(out.read_text())
    shares = r["parts_share"]
    assert abs(sum(shares.values()) - 1.0) < 1e-9
    # a ResNet step is mostly convolution: its three parts hold the largest share
    conv = sum(v for k, v in shares.items() if k.startswith("conv:"))
    assert conv == max(conv, *(v for k, v in shares.items() if not k.startswith("conv:")))
    assert r["seconds_per_step"] > 0 and "batch norm" in shares
    assert "conv: im2col copies" in capsys.readouterr().out
