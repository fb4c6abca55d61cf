"""Where vl-mamba keeps what it makes once and reuses: generated datasets, compiled kernels."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """``$VL_MAMBA_CACHE`` when that variable is set, else ``~/.cache/vl-mamba``."""
    base = os.environ.get("VL_MAMBA_CACHE")
    return Path(base).expanduser() if base else Path.home() / ".cache" / "vl-mamba"
