"""Where vl-mamba keeps what it makes once and reuses: generated datasets, compiled kernels."""

from __future__ import annotations

import hashlib
import os
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path


def cache_root() -> Path:
    """``$VL_MAMBA_CACHE`` when that variable is set, else ``~/.cache/vl-mamba``."""
    base = os.environ.get("VL_MAMBA_CACHE")
    return Path(base).expanduser() if base else Path.home() / ".cache" / "vl-mamba"


def cached_build(stem: str, key_parts: list[str | bytes], compile_to: Callable[[str], list[str]],
                 timeout: int = 600) -> Path:
    """The shared library ``kernels/<stem>-<hash>.so`` of the cache, compiled unless the cache holds it.

    ``key_parts`` (source, compiler version, flags, target machine) name the build: one that differs in any of them
    gets a file of its own. ``compile_to(path)`` is the compiler's command line writing to ``path``; the build goes
    to a temporary name in the same folder and is renamed into place, so processes that start together (the ranks
    of a data-parallel run) never load a half-written file.

    Raises:
        subprocess.SubprocessError: the compiler failed (its error output as the message) or timed out.
        OSError: the compiler could not be run or the cache could not be written.
    """
    key = hashlib.sha256()
    for part in key_parts:
        key.update(part.encode() if isinstance(part, str) else part)
        key.update(b"\0")
    out_dir = cache_root() / "kernels"
    target = out_dir / f"{stem}-{key.hexdigest()[:16]}.so"
    if target.exists():
        return target
    out_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{stem}-", suffix=".so", dir=out_dir)
    os.close(fd)
    try:
        subprocess.run(compile_to(tmp), check=True, capture_output=True, text=True, timeout=timeout)
        os.replace(tmp, target)
    except subprocess.CalledProcessError as err:
        raise subprocess.SubprocessError(err.stderr or str(err)) from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def tool_version(path: str) -> str:
    """What ``path --version`` prints (empty where it cannot be run), for build keys."""
    try:
        return subprocess.run([path, "--version"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return ""
