"""Writing WebDataset shards safely: a shard is written under a temporary name and renamed when complete, so
a reader (or a resumed conversion) never sees half a shard; ``sizes.json`` (shard name -> samples) is
written the same way. Sample keys must not contain dots, since WebDataset cuts file names at the first dot.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from collections.abc import Iterable
from pathlib import Path

from data_modules.shards import SIZES_FILE

TMP_SUFFIX = ".tmp"


def check_key(key: str) -> str:
    """Return ``key`` if it is a valid sample key (non-empty, no dot, no path separator)."""
    if not key or "." in key or "/" in key or key.startswith("__"):
        raise ValueError(f"bad sample key {key!r}: keys must be non-empty, without dots or '/', not start with __")
    return key


def write_shard(path: str | Path, samples: Iterable[tuple[str, dict[str, bytes]]]) -> int:
    """Write ``(key, {extension: bytes})`` samples to a tar at ``path``, atomically.

    Returns:
        The number of samples written.
    """
    path = Path(path)
    tmp = path.with_name(path.name + TMP_SUFFIX)
    count = 0
    try:
        with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
            for key, files in samples:
                check_key(key)
                for extension, data in files.items():
                    info = tarfile.TarInfo(f"{key}.{extension}")
                    info.size = len(data)
                    info.mode = 0o444
                    tar.addfile(info, io.BytesIO(data))
                count += 1
    except BaseException:
        tmp.unlink(missing_ok=True)  # a killed process leaves it instead; readers never see either
        raise
    atomic_replace(tmp, path)
    return count


def write_sizes(directory: str | Path, sizes: dict[str, int]) -> Path:
    """Write ``sizes.json`` (shard file name -> number of samples) into ``directory``, atomically."""
    path = Path(directory) / SIZES_FILE
    write_json(path, dict(sorted(sizes.items())))
    return path


def write_json(path: str | Path, value: object) -> None:
    """Write ``value`` as JSON at ``path`` through a temporary file."""
    path = Path(path)
    tmp = path.with_name(path.name + TMP_SUFFIX)
    tmp.write_text(json.dumps(value, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    atomic_replace(tmp, path)


def atomic_replace(tmp: Path, path: Path) -> None:
    """Flush ``tmp`` to disk, then rename it to ``path``."""
    with open(tmp, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, path)
