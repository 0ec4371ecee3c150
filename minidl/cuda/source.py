"""Finding the kernel sources and reading their entry points.

The CUDA sources live in ``<repo>/kernels/*.cu`` (a checkout) and are installed as package data
of ``minidl.kernels`` (an installed minidl); :func:`kernel_dir` finds whichever exists, the
checkout first. :func:`parse_kernels` reads the ``extern "C" __global__ void name(...)`` entry
points of a source and the C type of every parameter -- what the emulator's launch trampolines
and its argument checks are generated from. :func:`lint` checks the kernel rules of
docs/design.md that no compiler enforces.
"""
import os
import re
from dataclasses import dataclass

import numpy as np

_HERE = os.path.dirname(os.path.abspath(__file__))


def kernel_dir():
    """The directory holding the ``*.cu`` files: ``<repo>/kernels`` or the installed package."""
    repo = os.path.normpath(os.path.join(_HERE, "..", "..", "kernels"))
    if os.path.isdir(repo) and any(f.endswith(".cu") for f in os.listdir(repo)):
        return repo
    try:
        import minidl.kernels as pkg  # installed as package data (setup.py)
        return os.path.dirname(os.path.abspath(pkg.__file__))
    except ImportError:
        pass
    raise FileNotFoundError(
        f"no kernel sources: neither {repo} nor an installed minidl.kernels package has *.cu files")


def kernel_files():
    """Sorted absolute paths of every ``*.cu`` kernel source."""
    d = kernel_dir()
    return [os.path.join(d, f) for f in sorted(os.listdir(d)) if f.endswith(".cu")]


def resolve(name):
    """A path for ``name``: an existing path as given, else a file in :func:`kernel_dir`."""
    if os.path.isfile(name):
        return os.path.abspath(name)
    p = os.path.join(kernel_dir(), name)
    if not os.path.isfile(p):
        raise FileNotFoundError(f"kernel source {name!r} not found (looked in {kernel_dir()})")
    return p


# C type of a parameter -> (NumPy dtype, is_pointer). Qualifiers are stripped before lookup.
_SCALARS = {
    "float": np.float32, "double": np.float64,
    "int": np.int32, "signed int": np.int32, "unsigned": np.uint32, "unsigned int": np.uint32,
    "long long": np.int64, "long long int": np.int64, "signed long long": np.int64,
    "unsigned long long": np.uint64, "unsigned long long int": np.uint64,
    "short": np.int16, "unsigned short": np.uint16,
    "char": np.int8, "signed char": np.int8, "unsigned char": np.uint8, "bool": np.bool_,
}
_QUALIFIERS = {"const", "volatile", "__restrict__", "__restrict", "restrict"}


@dataclass(frozen=True)
class Param:
    """One kernel parameter: its C text, name, base type, NumPy dtype, pointer-ness, constness."""
    ctype: str      # as written, e.g. "const float* __restrict__"
    name: str
    base: str       # "float", "long long", ...
    dtype: type     # numpy scalar type
    pointer: bool
    const: bool     # pointee is const (the kernel does not write through it)

    def c_decl_type(self):
        """The type to cast a trampoline argument to (qualifiers that matter kept)."""
        return (("const " if self.const else "") + self.base + ("*" if self.pointer else ""))


@dataclass(frozen=True)
class KernelSig:
    name: str
    params: tuple
    line: int


def strip_comments(src):
    """Source with // and /* */ comments replaced by spaces (line numbers kept)."""
    def repl(m):
        s = m.group(0)
        if s.startswith("/"):
            return re.sub(r"[^\n]", " ", s)
        return s
    pat = r'//[^\n]*|/\*.*?\*/|"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\''
    return re.sub(pat, repl, src, flags=re.S)


_ENTRY = re.compile(
    r'extern\s+"C"\s+__global__\s+(?:__launch_bounds__\s*\([^)]*\)\s*)?void\s+'
    r'(?:__launch_bounds__\s*\([^)]*\)\s*)?([A-Za-z_]\w*)\s*\(([^)]*)\)', re.S)


def _parse_param(text, kernel, path):
    toks = re.findall(r"[A-Za-z_]\w*|\*|&", text)
    if not toks or toks[-1] in ("*", "&"):
        raise SyntaxError(f"{path}: kernel {kernel}: cannot parse parameter {text.strip()!r}")
    name = toks[-1]
    stars = [t for t in toks[:-1] if t == "*"]
    if "&" in toks or len(stars) > 1:
        raise SyntaxError(f"{path}: kernel {kernel}: parameter {text.strip()!r}: only scalars "
                          "and single pointers can be kernel parameters here")
    before_star = toks[:toks.index("*")] if stars else toks[:-1]
    const = "const" in before_star
    base = " ".join(t for t in toks[:-1] if t not in _QUALIFIERS and t != "*")
    if base not in _SCALARS:
        raise SyntaxError(f"{path}: kernel {kernel}: parameter {name!r} has type {base!r}; "
                          f"supported: {sorted(_SCALARS)}")
    return Param(" ".join(toks[:-1]), name, base, _SCALARS[base], bool(stars), const)


def parse_kernels(path_or_source, path="<source>"):
    """The entry points of a kernel source: ``{name: KernelSig}`` in order of appearance."""
    src = path_or_source
    if os.path.isfile(path_or_source):
        path = path_or_source
        with open(path_or_source, encoding="utf-8") as f:
            src = f.read()
    code = strip_comments(src)
    out = {}
    for m in _ENTRY.finditer(code):
        name, plist = m.group(1), m.group(2).strip()
        params = () if plist in ("", "void") else tuple(
            _parse_param(p, name, path) for p in plist.split(","))
        if name in out:
            raise SyntaxError(f"{path}: kernel {name} defined twice")
        out[name] = KernelSig(name, params, code.count("\n", 0, m.start()) + 1)
    return out


def extern_shared_names(src):
    """Names declared ``extern __shared__ T name[];`` (the dynamic shared memory arrays)."""
    code = strip_comments(src)
    return sorted(set(re.findall(
        r"extern\s+__shared__\s+[^;\[\]]*?\b([A-Za-z_]\w*)\s*\[\s*\]\s*;", code)))


_LINT_RULES = [
    (r"^\s*#\s*include\b", "#include (kernels are self-contained; NVRTC has no system headers)"),
    (r"\bINFINITY\b|\bNAN\b|\bHUGE_VALF?\b",
     "INFINITY/NAN macros (use __int_as_float(0x7f800000) / 0x7fc00000)"),
    (r"\b(?:u?int(?:8|16|32|64)_t)\b", "fixed-width <stdint.h> types (use int / long long / unsigned)"),
    (r"\bstd\s*::|\busing\s+namespace\b", "std:: (NVRTC has no C++ standard library)"),
    (r"__CUDA_ARCH__", "__CUDA_ARCH__-dependent code"),
    (r"\basm\s*\(|\basm\s+volatile", "inline PTX"),
    (r"\btex[123]D\b|\bcudaTextureObject_t\b", "textures"),
    (r"(?<![\w.])(?:\d+\.\d*|\.\d+)(?:[eE][-+]?\d+)?(?![\w.])",
     "a double literal in float code (write 0.5f; double kernels convert with T(0.5))"),
]


def lint(path):
    """Violations of docs/design.md's kernel rules that compilers do not catch: ``[(line, msg)]``.

    Literal checks skip lines of ``double``-specialised helpers that say so with a trailing
    ``// double`` comment.
    """
    with open(path, encoding="utf-8") as f:
        src = f.read()
    raw_lines = src.split("\n")
    code_lines = strip_comments(src).split("\n")
    problems = []
    for i, line in enumerate(code_lines, 1):
        for pat, msg in _LINT_RULES:
            m = re.search(pat, line)
            if m:
                if "double literal" in msg and raw_lines[i - 1].rstrip().endswith("// double"):
                    continue
                problems.append((i, f"{msg}: {m.group(0).strip()!r}"))
    return problems
