"""The test suite's own rules, checked on its source: a test that cannot fail is worse than none.

* no ``return`` inside a ``@given`` test (the draw passes unchecked: use ``assume()``);
* no ``pytest.importorskip`` of torch or Pillow (``conftest.require`` fails in CI instead);
* no ``except Exception: pytest.skip(...)`` (an import error of our own code must fail);
* ``conftest.require`` skips locally and fails in CI.
"""
import ast
import glob
import os

import conftest
import pytest
from conftest import require

HERE = os.path.dirname(os.path.abspath(__file__))
FILES = sorted(glob.glob(os.path.join(HERE, "*.py")))


def _trees():
    for f in FILES:
        with open(f) as fh:
            yield os.path.basename(f), ast.parse(fh.read(), f)


def _is_given(dec):
    f = dec.func if isinstance(dec, ast.Call) else dec
    return getattr(f, "id", getattr(f, "attr", None)) == "given"


def _own_nodes(fn):
    """The nodes of a function body, not descending into nested functions or lambdas."""
    stack = list(fn.body)
    while stack:
        n = stack.pop()
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        yield n
        stack.extend(ast.iter_child_nodes(n))


def test_no_return_inside_hypothesis_tests():
    bad = [f"{name}:{n.lineno} ({fn.name})" for name, tree in _trees()
           for fn in ast.walk(tree)
           if isinstance(fn, ast.FunctionDef) and any(map(_is_given, fn.decorator_list))
           for n in _own_nodes(fn) if isinstance(n, ast.Return)]
    assert not bad, f"return inside @given tests (use hypothesis.assume): {bad}"


def test_no_importorskip_of_cross_check_dependencies():
    bad = []
    for name, tree in _trees():
        for n in ast.walk(tree):
            if isinstance(n, ast.Call) and getattr(n.func, "attr", None) == "importorskip" \
                    and n.args and isinstance(n.args[0], ast.Constant) \
                    and str(n.args[0].value).split(".")[0] in ("torch", "PIL"):
                bad.append(f"{name}:{n.lineno} importorskip({n.args[0].value!r})")
    assert not bad, ("write `from conftest import require` and `torch = require(\"torch\")`: "
                     f"a skip locally, a failure in CI when it is missing: {bad}")


def test_no_skip_on_a_broad_exception():
    bad = []
    for name, tree in _trees():
        for h in ast.walk(tree):
            if not isinstance(h, ast.ExceptHandler):
                continue
            broad = h.type is None or getattr(h.type, "id", None) in ("Exception", "BaseException")
            skips = any(isinstance(c, ast.Call) and getattr(c.func, "attr", None) == "skip"
                        for c in ast.walk(h))
            if broad and skips:
                bad.append(f"{name}:{h.lineno}")
    assert not bad, f"a broad except that skips hides failures: {bad}"


def test_require_skips_locally_and_fails_in_ci(monkeypatch):
    missing = "minidl_no_such_module_for_the_test"
    monkeypatch.delenv("CI", raising=False)
    assert not conftest.in_ci()
    with pytest.raises(pytest.skip.Exception, match=missing):
        require(missing)
    for value in ("true", "1", "yes"):
        monkeypatch.setenv("CI", value)
        assert conftest.in_ci()
        with pytest.raises(pytest.fail.Exception, match=f"CI: {missing}"):
            require(missing)
    monkeypatch.setenv("CI", "false")
    assert not conftest.in_ci()
    assert require("json").dumps([1]) == "[1]"


def test_torch_opt_out_is_explicit(monkeypatch):
    monkeypatch.setenv("CI", "true")
    monkeypatch.setenv("MINIDL_TEST_NO_TORCH", "1")
    with pytest.raises(pytest.skip.Exception, match="MINIDL_TEST_NO_TORCH"):
        require("torch")
