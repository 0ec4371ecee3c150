"""What ``import minidl`` provides and what it does not import (minidl/__init__.py)."""
import json
import os
import subprocess
import sys

import minidl

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_all_names_exist_and_subpackages_are_attributes():
    assert len(set(minidl.__all__)) == len(minidl.__all__)
    for name in minidl.__all__:
        assert hasattr(minidl, name), name
    for sub in ("functional", "nn", "optim", "data", "models", "train", "cuda"):
        assert sub in minidl.__all__
        assert getattr(minidl, sub).__name__ == f"minidl.{sub}"
    assert minidl.train.train_one_epoch is not None


def test_import_minidl_loads_no_optional_dependency():
    code = ("import json, sys, minidl; "
            "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules} & "
            "{'cupy', 'torch', 'matplotlib', 'PIL', 'tqdm', 'mpi4py', 'safetensors'})))")
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True).stdout
    # cupy may be importable on a GPU machine: backend imports it (guarded) by design
    assert set(json.loads(out)) <= {"cupy"}
