"""Building and loading ``cpu_scan.c``, the selective scan's CPU kernel, with the machine's C compiler.

The library is compiled on first use for the processor at hand (``-march=native``, and glibc's vector maths where
it links) into ``$VL_MAMBA_CACHE/kernels`` (else ``~/.cache/vl-mamba/kernels``), under a name that hashes the
source, the compiler, the flags and the processor's features, so that a cache shared by the nodes of a cluster
never hands one node a build for another's instruction set. A build is written to a temporary name and renamed
into place, so processes that start together (data-parallel ranks) cannot load a half-written file.

Nothing here is required: without a compiler, or where no build passes the check at load, ``library()`` returns
None with a warning and the scan runs ``selective_scan_torch``. ``VL_MAMBA_CPU_KERNEL=0`` turns the kernel off.
"""

from __future__ import annotations

import ctypes
import functools
import os
import platform
import shutil
import subprocess
import warnings
from pathlib import Path

from vl_mamba.utils.cache import cached_build, tool_version

SOURCE = Path(__file__).with_name("cpu_scan.c")
ENV_SWITCH = "VL_MAMBA_CPU_KERNEL"
_COMMON_FLAGS = ("-std=gnu11", "-O3", "-fPIC", "-shared", "-fopenmp-simd", "-fno-math-errno", "-fno-trapping-math")
# Tried in order until one builds and loads: vector maths (glibc's libmvec, x86-64), then the host's instruction
# set alone, then a portable build.
_VARIANTS = (
    (("-march=native", "-DVL_VECTOR_MATH"), ("-lmvec", "-lm")),
    (("-march=native",), ("-lm",)),
    ((), ("-lm",)),
)


class ScanArgs(ctypes.Structure):
    """``vl_scan_args`` of ``cpu_scan.c``, field for field."""

    _fields_ = [
        *((name, ctypes.c_int64) for name in ("batch", "dim", "length", "n", "groups", "chunk", "d0", "d1")),
        *((name, ctypes.c_void_p) for name in ("u", "dt", "A", "B", "C", "D", "z")),
        ("su", ctypes.c_int64 * 3),
        ("sdt", ctypes.c_int64 * 3),
        ("sB", ctypes.c_int64 * 4),
        ("sC", ctypes.c_int64 * 4),
        ("sz", ctypes.c_int64 * 3),
        *((name, ctypes.c_void_p) for name in ("out", "last", "starts", "g", "glast")),
        ("sg", ctypes.c_int64 * 3),
        *((name, ctypes.c_void_p) for name in ("gu", "gdt", "gz", "gA", "gD", "gB", "gC")),
    ]


def enabled() -> bool:
    """Whether the kernel may be used at all (``VL_MAMBA_CPU_KERNEL`` is not 0)."""
    return os.environ.get(ENV_SWITCH, "1").strip().lower() not in ("0", "false", "no", "off")


@functools.cache
def library() -> ctypes.CDLL | None:
    """The loaded kernel library, built if needed; None (with a warning) where no build works. Built once per
    process, whatever ``VL_MAMBA_CPU_KERNEL`` says (``enabled`` is its switch)."""
    compiler = shutil.which(os.environ.get("CC", "cc"))
    if compiler is None:
        warnings.warn("no C compiler found (set CC): the CPU selective scan runs in PyTorch", stacklevel=2)
        return None
    errors = []
    for flags, libs in _VARIANTS:
        if "-march=native" in flags and platform.machine().lower() not in ("x86_64", "amd64", "aarch64", "arm64"):
            continue
        if "-DVL_VECTOR_MATH" in flags and platform.machine().lower() not in ("x86_64", "amd64"):
            continue
        try:
            lib = _load(_build(compiler, flags, libs))
        except (OSError, subprocess.SubprocessError) as err:
            errors.append(f"{' '.join(flags) or 'portable'}: {str(err).strip()[-300:]}")
            continue
        from vl_mamba.ops.scan_cpu import self_check  # here, not at the top: scan_cpu imports this module

        problem = self_check(lib)
        if problem is None:
            return lib
        errors.append(f"{' '.join(flags) or 'portable'}: {problem}")
    warnings.warn("the CPU selective-scan kernel is not used (" + "; ".join(errors) + ")", stacklevel=2)
    return None


def _build(compiler: str, flags: tuple[str, ...], libs: tuple[str, ...]) -> Path:
    """The library for these flags, compiled unless the cache already holds it."""
    command = [compiler, *_COMMON_FLAGS, *flags]
    key = [SOURCE.read_bytes(), tool_version(compiler), " ".join(command + list(libs)), _processor_features(),
           platform.machine()]
    return cached_build("cpu_scan", key, lambda out: [*command, "-o", out, str(SOURCE), *libs], timeout=300)


def _load(path: Path) -> ctypes.CDLL:
    lib = ctypes.CDLL(str(path))
    for name in ("vl_scan_forward_f32", "vl_scan_backward_f32", "vl_scan_forward_f64", "vl_scan_backward_f64"):
        fn = getattr(lib, name)
        fn.argtypes = [ctypes.POINTER(ScanArgs)]
        fn.restype = ctypes.c_int
    lib.vl_scan_lanes.restype = ctypes.c_int
    return lib


def _processor_features() -> str:
    """The processor's feature flags (Linux), else what the platform module tells."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor()
