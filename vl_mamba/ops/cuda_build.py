"""Building and loading ``cuda_scan.cu``, the selective scan's own CUDA kernel, with nvcc.

The library is compiled on first use for the card at hand (``-arch=sm_XY`` of device 0) into
``$VL_MAMBA_CACHE/kernels`` (else ``~/.cache/vl-mamba/kernels``), under a name that hashes the source, nvcc's
version, the flags and the architecture; a build is written to a temporary name and renamed into place, so that
ranks starting together never load a half-written file. It needs no PyTorch headers: the kernel takes raw pointers
and torch's stream through ctypes, so a build takes seconds.

``selective_scan_fn`` and ``mamba_inner_fn`` (the layer body around it, ``mamba_inner_cuda``) use the kernel
wherever it takes the operands and builds, on cards of compute capability 9.0 and up unless ``VL_MAMBA_CUDA_SCAN=0``
turns it off, and on older cards where ``VL_MAMBA_CUDA_SCAN=1`` asks for it (it has been measured on H100 and H200
only). There it is faster than mamba_ssm's scan at every shape measured, and the stage-2 training step with it
reaches 34 % MFU against 26 % with mamba_ssm's layer (BENCHMARKS.md). ``selective_scan_cuda`` itself runs it
whenever called. Without nvcc, or where the build fails, ``library()`` returns None with a warning and the dispatch
keeps to mamba_ssm's kernel or the Triton scan.
"""

from __future__ import annotations

import ctypes
import functools
import os
import shutil
import subprocess
import warnings
from pathlib import Path

import torch

from vl_mamba.utils.cache import cached_build, tool_version

SOURCE = Path(__file__).with_name("cuda_scan.cu")
ENV_SWITCH = "VL_MAMBA_CUDA_SCAN"
_FLAGS = ("-O3", "--use_fast_math", "-std=c++17", "-shared", "-Xcompiler", "-fPIC")
STATES = 16
TILE = 32
CHANNELS = 32
"""The most states the kernel takes (the state axis of its saved states and of its partial dB and dC), its steps per
tile and per saved state, and its channels per block (``cuda_scan.cu``)."""
DTYPES = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}


class CudaScanArgs(ctypes.Structure):
    """``vl_cuda_scan_args`` of ``cuda_scan.cu``, field for field."""

    _fields_ = [
        *((name, ctypes.c_int64) for name in ("batch", "dim", "length", "nstate", "nchunks")),
        *((name, ctypes.c_int32) for name in ("softplus", "in_dtype", "w_dtype", "vec")),
        *((name, ctypes.c_void_p) for name in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")),
        *((name, ctypes.c_int64 * 2) for name in ("su", "sdelta", "sB", "sC", "sz")),
        *((name, ctypes.c_void_p) for name in ("out", "last", "ckpt", "dout", "dlast", "du", "ddelta", "dz")),
        *((name, ctypes.c_void_p) for name in ("dA", "dD", "dbias", "dBC")),
        *((name, ctypes.c_int64 * 2) for name in ("sout", "sdout", "sdz")),
        ("out_z", ctypes.c_void_p),
        *((name, ctypes.c_int64 * 2) for name in ("sdu", "sddelta")),
        ("group_dim", ctypes.c_int64),
        ("a_log", ctypes.c_int32),
    ]


def enabled() -> bool:
    """Whether ``selective_scan_fn`` and ``mamba_inner_fn`` may use this kernel; read at every call.
    ``VL_MAMBA_CUDA_SCAN`` set to 1 (true, yes, on) turns it on and 0 (false, no, off) off; unset, it is on for the
    cards it was measured on (compute capability 9.0 and up: H100, H200) and off elsewhere."""
    value = os.environ.get(ENV_SWITCH, "").strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    return measured_card()


@functools.cache
def measured_card() -> bool:
    """Whether device 0 is of the generation the kernel was measured faster than mamba_ssm's on (sm_90 and up)."""
    return torch.cuda.is_available() and torch.cuda.get_device_capability(0)[0] >= 9


def nvcc_path() -> str | None:
    """nvcc from ``$CUDA_HOME`` (or torch's idea of it), else from PATH."""
    homes = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")]
    try:
        from torch.utils.cpp_extension import CUDA_HOME

        homes.append(CUDA_HOME)
    except (ImportError, OSError):
        pass
    for home in filter(None, homes):
        candidate = Path(home) / "bin" / "nvcc"
        if candidate.exists():
            return str(candidate)
    return shutil.which("nvcc")


@functools.cache
def library() -> ctypes.CDLL | None:
    """The loaded kernel library for device 0's architecture, built if needed; None (with a warning) where it
    cannot be built. Built once per process."""
    if not torch.cuda.is_available():
        return None
    nvcc = nvcc_path()
    if nvcc is None:
        warnings.warn("nvcc not found (set CUDA_HOME): the selective scan's own CUDA kernel is not used", stacklevel=2)
        return None
    major, minor = torch.cuda.get_device_capability(0)
    try:
        return _load(_build(nvcc, f"sm_{major}{minor}"))
    except (OSError, subprocess.SubprocessError) as err:
        warnings.warn(f"the selective scan's CUDA kernel did not build: {str(err).strip()[-500:]}", stacklevel=2)
        return None


def _build(nvcc: str, arch: str) -> Path:
    command = [nvcc, *_FLAGS, f"-arch={arch}"]
    key = [SOURCE.read_bytes(), tool_version(nvcc), " ".join(command)]
    return cached_build(f"cuda_scan-{arch}", key, lambda out: [*command, "-o", out, str(SOURCE)])


def _load(path: Path) -> ctypes.CDLL:
    lib = ctypes.CDLL(str(path))
    lib.vl_cuda_scan.argtypes = [ctypes.POINTER(CudaScanArgs), ctypes.c_int, ctypes.c_void_p]
    lib.vl_cuda_scan.restype = ctypes.c_int
    lib.vl_cuda_scan_sum.argtypes = [ctypes.c_void_p, *[ctypes.c_int64] * 4, ctypes.c_void_p, ctypes.c_int,
                                     ctypes.POINTER(ctypes.c_int64), ctypes.c_void_p]
    lib.vl_cuda_scan_sum.restype = ctypes.c_int
    return lib
