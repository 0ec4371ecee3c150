"""Compile every ``kernels/*.cu`` with NVRTC for sm_80 and sm_90 and report registers and spills.

    python -m minidl.cuda.nvrtc_check [--arch sm_80 --arch sm_90] [files...]

NVRTC is the compiler CuPy uses at run time, and it needs no GPU, so this runs on CI. It is
called directly (``cupy.cuda.nvrtc``; CuPy's public compile helpers query the device), asking
for a cubin so ptxas runs, with ``-Xptxas=-v`` so ptxas reports each entry point's registers and
spill stores/loads. nvcc is not a substitute: it force-includes the CUDA runtime headers and
accepts what NVRTC rejects (INFINITY, int64_t, std::).

Prints one table row per (kernel, arch) and exits non-zero on a compile error, on any register
spill, or on a violation of docs/design.md's kernel rules that no compiler catches
(:func:`minidl.cuda.source.lint`: double literals in float code, #include, ...). Exit code 2 when
NVRTC itself is not usable. NVRTC comes from CuPy's bindings (``cupy-cuda13x`` plus
``nvidia-cuda-nvrtc``, or ``cupy-cuda13x[ctk]``) or, without CuPy, from NVIDIA's
``cuda-bindings`` plus ``nvidia-cuda-nvrtc`` -- the smallest install that works.
"""
import argparse
import os
import re
import sys

from minidl.cuda import source as _source

DEFAULT_ARCHS = ("sm_80", "sm_90")
OPTIONS = ("-std=c++17",)


class _BindingsNVRTC:
    """``cuda.bindings.nvrtc`` (NVIDIA's cuda-bindings package) behind the small interface of
    ``cupy.cuda.nvrtc`` used here, so the check also runs with just ``cuda-bindings`` and
    ``nvidia-cuda-nvrtc`` installed (no CuPy)."""

    class NVRTCError(RuntimeError):
        pass

    def __init__(self, mod):
        self._m = mod

    def _ok(self, res):
        err = res[0] if isinstance(res, tuple) else res
        if err != self._m.nvrtcResult.NVRTC_SUCCESS:
            raise self.NVRTCError(str(err))
        return res[1] if isinstance(res, tuple) and len(res) > 1 else None

    def getVersion(self):
        res = self._m.nvrtcVersion()
        self._ok(res)
        return res[1], res[2]

    def createProgram(self, src, name, headers, include_names):
        return self._ok(self._m.nvrtcCreateProgram(src.encode(), name.encode(), 0, [], []))

    def compileProgram(self, prog, options):
        opts = [o.encode() for o in options]
        self._ok(self._m.nvrtcCompileProgram(prog, len(opts), opts))

    def getProgramLog(self, prog):
        n = self._ok(self._m.nvrtcGetProgramLogSize(prog))
        buf = b" " * n
        self._ok(self._m.nvrtcGetProgramLog(prog, buf))
        return buf.decode(errors="replace")

    def getCUBIN(self, prog):
        n = self._ok(self._m.nvrtcGetCUBINSize(prog))
        buf = b" " * n
        self._ok(self._m.nvrtcGetCUBIN(prog, buf))
        return buf

    def destroyProgram(self, prog):
        self._m.nvrtcDestroyProgram(prog)


def nvrtc_module():
    """NVRTC bindings: ``cupy.cuda.nvrtc``, else ``cuda.bindings.nvrtc``; or (None, reason)."""
    reasons = []
    from minidl import backend
    if backend.cupy_module() is not None:
        try:
            from cupy.cuda import nvrtc
            nvrtc.getVersion()  # a missing libnvrtc.so raises at first use
            return nvrtc, None
        except Exception as e:
            reasons.append(f"cupy.cuda.nvrtc: {type(e).__name__}: {e}")
    else:
        reasons.append("CuPy is not importable")
    try:
        from cuda.bindings import nvrtc as bnv
        wrapped = _BindingsNVRTC(bnv)
        wrapped.getVersion()
        return wrapped, None
    except Exception as e:
        reasons.append(f"cuda.bindings.nvrtc: {type(e).__name__}: {e}")
    return None, "NVRTC is not usable (" + "; ".join(reasons) + ")"


def compile_file(path, arch, nvrtc=None):
    """Compile one file for one arch. Returns (ok, log, entries) where entries is a list of
    dicts {kernel, registers, spill_stores, spill_loads, stack, shared}."""
    if nvrtc is None:
        nvrtc, why = nvrtc_module()
        if nvrtc is None:
            raise RuntimeError(why)
    with open(path, encoding="utf-8") as f:
        src = f.read()
    prog = nvrtc.createProgram(src, os.path.basename(path), [], [])
    try:
        try:
            nvrtc.compileProgram(prog, [f"-arch={arch}", "-Xptxas=-v", *OPTIONS])
            ok = True
        except Exception:  # NVRTCError of either binding: the log says why
            ok = False
        log = nvrtc.getProgramLog(prog)
        if isinstance(log, bytes):
            log = log.decode(errors="replace")
        log = log.rstrip("\x00")
        if ok:
            nvrtc.getCUBIN(prog)  # the cubin exists: ptxas ran for the real arch
    finally:
        nvrtc.destroyProgram(prog)
    return ok, log, parse_ptxas(log)


def parse_ptxas(log):
    """ptxas -v output -> [{kernel, registers, spill_stores, spill_loads, stack, shared}]."""
    entries, cur = [], None
    for line in log.splitlines():
        m = re.search(r"Compiling entry function '([^']+)'", line)
        if m:
            cur = {"kernel": m.group(1), "registers": None, "spill_stores": 0, "spill_loads": 0,
                   "stack": 0, "shared": 0}
            entries.append(cur)
            continue
        if cur is None:
            continue
        m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads",
                      line)
        if m:
            cur["stack"], cur["spill_stores"], cur["spill_loads"] = map(int, m.groups())
        m = re.search(r"Used (\d+) registers", line)
        if m:
            cur["registers"] = int(m.group(1))
            s = re.search(r"(\d+) bytes smem", line)
            cur["shared"] = int(s.group(1)) if s else 0
    return entries


def check(files=None, archs=DEFAULT_ARCHS, out=sys.stdout):
    """Run the check; return (exit_code, rows)."""
    nvrtc, why = nvrtc_module()
    if nvrtc is None:
        print(f"nvrtc_check: {why}; install cuda-bindings and nvidia-cuda-nvrtc (the smallest "
              "set), or cupy-cuda13x and nvidia-cuda-nvrtc", file=out)
        return 2, []
    files = list(files) if files else _source.kernel_files()
    major, minor = nvrtc.getVersion()
    print(f"NVRTC {major}.{minor}; archs {', '.join(archs)}; options -Xptxas=-v "
          f"{' '.join(OPTIONS)}", file=out)
    rows, failed = [], False
    for path in files:
        name = os.path.basename(path)
        for line, msg in _source.lint(path):
            print(f"RULE  {name}:{line}: {msg}", file=out)
            failed = True
        for arch in archs:
            ok, log, entries = compile_file(path, arch, nvrtc)
            if not ok:
                failed = True
                print(f"ERROR {name} ({arch}):\n{log}", file=out)
                continue
            for e in entries:
                e.update(file=name, arch=arch)
                rows.append(e)
    if rows:
        hdr = f"{'file':<12} {'kernel':<26} {'arch':<6} {'regs':>4} {'spill st':>8} {'spill ld':>8} {'stack':>5} {'smem':>5}"
        print(hdr, file=out)
        print("-" * len(hdr), file=out)
        for r in rows:
            flag = "  <-- SPILL" if r["spill_stores"] or r["spill_loads"] else ""
            print(f"{r['file']:<12} {r['kernel']:<26} {r['arch']:<6} {r['registers']:>4} "
                  f"{r['spill_stores']:>8} {r['spill_loads']:>8} {r['stack']:>5} "
                  f"{r['shared']:>5}{flag}", file=out)
    spills = [r for r in rows if r["spill_stores"] or r["spill_loads"]]
    if spills:
        failed = True
        print(f"FAIL: {len(spills)} kernel(s) spill registers", file=out)
    print("FAIL" if failed else f"OK: {len(rows)} entry points compiled, no spills", file=out)
    return (1 if failed else 0), rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("files", nargs="*", help="kernel sources (default: every kernels/*.cu)")
    ap.add_argument("--arch", action="append", help="sm_XX (repeatable; default sm_80, sm_90)")
    args = ap.parse_args(argv)
    code, _ = check(args.files or None, tuple(args.arch) if args.arch else DEFAULT_ARCHS)
    return code


if __name__ == "__main__":
    sys.exit(main())
