"""Shard specifications -> shard lists, and sample counts from the ``sizes.json`` beside the shards.

A spec is a string or a list of strings. A string may hold several parts joined by ``::`` (WebDataset's
convention); each part is a brace pattern (``data/{00000..00099}.tar``), a glob (``data/*.tar``), a local
file, a directory (all ``*.tar``, ``*.tar.gz`` and ``*.tgz`` in it), a URL (``https://...``, ``s3://...``),
or a ``pipe:`` command. Several sources are mixed with weights by a ``{spec: weight}`` mapping.
"""

from __future__ import annotations

import glob
import json
import os
from dataclasses import dataclass
from pathlib import Path

import braceexpand

ShardSpec = str | list[str] | dict[str, float]
SHARD_SUFFIXES = (".tar", ".tar.gz", ".tgz")
SIZES_FILE = "sizes.json"


@dataclass(frozen=True)
class ShardSource:
    """One source of shards and its share of the samples."""

    name: str
    urls: list[str]
    weight: float = 1.0


def is_remote(url: str) -> bool:
    """True for ``pipe:`` commands and URLs with a scheme (``https://``, ``s3://``...)."""
    return url.startswith("pipe:") or "://" in url


def expand_shards(spec: str | list[str]) -> list[str]:
    """Expand a spec into shard URLs, in order (directories and globs are sorted).

    Raises:
        FileNotFoundError: for a local pattern that matches no file.
    """
    if isinstance(spec, (list, tuple)):
        return [url for part in spec for url in expand_shards(part)]
    urls: list[str] = []
    for part in str(spec).split("::"):
        part = part.strip()
        if not part:
            continue
        if is_remote(part):
            urls += list(braceexpand.braceexpand(part))
            continue
        for pattern in braceexpand.braceexpand(os.path.expandvars(os.path.expanduser(part))):
            urls += _expand_local(pattern)
    return urls


def _expand_local(pattern: str) -> list[str]:
    path = Path(pattern)
    if path.is_dir():
        found = sorted(str(p) for p in path.iterdir() if p.name.endswith(SHARD_SUFFIXES) and p.is_file())
        if not found:
            raise FileNotFoundError(f"no shard ({', '.join(SHARD_SUFFIXES)}) in directory {path}")
        return found
    if any(char in pattern for char in "*?["):
        found = sorted(glob.glob(pattern))
        if not found:
            raise FileNotFoundError(f"no shard matches {pattern}")
        return found
    if not path.is_file():
        raise FileNotFoundError(f"no shard at {path}")
    return [pattern]


def parse_sources(spec: ShardSpec) -> list[ShardSource]:
    """A spec, or a ``{spec: weight}`` mapping of several sources, -> sources with their shards."""
    if isinstance(spec, dict):
        if not spec:
            raise ValueError("an empty mapping of shard sources")
        sources = [ShardSource(str(name), expand_shards(name), float(weight)) for name, weight in spec.items()]
    else:
        sources = [ShardSource(str(spec), expand_shards(spec))]
    for source in sources:
        if not source.urls:
            raise ValueError(f"shard spec {source.name!r} names no shard")
        if not source.weight > 0:
            raise ValueError(f"shard source {source.name!r} has weight {source.weight}; weights must be positive")
    return sources


def sizes_location(url: str) -> str | None:
    """Where the ``sizes.json`` beside a shard is; None for ``pipe:`` commands."""
    if url.startswith("pipe:"):
        return None
    head, _, _ = url.rpartition("/")
    return f"{head}/{SIZES_FILE}" if head else SIZES_FILE


def count_samples(urls: list[str]) -> int | None:
    """Total samples of these shards according to the ``sizes.json`` files beside them.

    Returns:
        The count, or None when a shard has no entry or no ``sizes.json`` can be read.
    """
    tables: dict[str, dict[str, int] | None] = {}
    total = 0
    for url in urls:
        location = sizes_location(url)
        if location is None:
            return None
        if location not in tables:
            tables[location] = _read_sizes(location)
        table = tables[location]
        name = url.rpartition("/")[2]
        if table is None or name not in table:
            return None
        total += int(table[name])
    return total


def _read_sizes(location: str) -> dict[str, int] | None:
    try:
        if is_remote(location):
            from webdataset.gopen import gopen  # imports torch: only for remote shards

            with gopen(location) as stream:
                return json.loads(stream.read())
        return json.loads(Path(location).read_text())
    except (OSError, ValueError):
        return None
