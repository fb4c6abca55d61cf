"""The project's one logger: rich-formatted, INFO on global rank 0 and WARNING elsewhere, so that a run on
many GPUs prints each message once. Library code logs through ``get_logger(__name__)``; nothing prints."""

from __future__ import annotations

import logging
import os

from rich.console import Console
from rich.logging import RichHandler

_ROOT = "vl_mamba"
_RANK_VARIABLES = ("RANK", "SLURM_PROCID", "LOCAL_RANK", "JSM_NAMESPACE_RANK")


def global_rank() -> int:
    """This process's rank from the launcher's environment (0 when not distributed)."""
    for name in _RANK_VARIABLES:
        value = os.environ.get(name)
        if value is not None and value.isdigit():
            return int(value)
    return 0


def get_logger(name: str = _ROOT) -> logging.Logger:
    """A child of the ``vl_mamba`` logger, which gets one rich handler the first time it is asked for."""
    root = logging.getLogger(_ROOT)
    if not getattr(root, "_vl_mamba_configured", False):
        handler = RichHandler(console=Console(stderr=True), show_path=False, rich_tracebacks=False)
        handler.setFormatter(logging.Formatter("%(message)s", datefmt="[%X]"))
        root.addHandler(handler)
        root.setLevel(logging.INFO if global_rank() == 0 else logging.WARNING)
        root.propagate = False
        root._vl_mamba_configured = True
    if name == _ROOT or name.startswith(_ROOT + "."):
        return logging.getLogger(name)
    return logging.getLogger(f"{_ROOT}.{name}")
