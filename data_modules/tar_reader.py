"""Reading samples out of tar shards, tolerant of damage: a shard that cannot be opened is skipped, a tar
that breaks mid-way keeps the samples before the break, and each event is counted by a ``SkipCounter``.

Files group into samples as WebDataset groups them: consecutive members that share the name up to the
first dot of the file name (``dir/000123.jpg`` and ``dir/000123.json`` make the sample ``dir/000123`` with
the fields ``jpg`` and ``json``).
"""

from __future__ import annotations

import re
import tarfile
import zlib
from collections.abc import Iterable, Iterator
from typing import Any

from webdataset.gopen import gopen

from data_modules.skips import SkipCounter

_NAME = re.compile(r"^((?:.*/|)[^./]+)\.([^/]*)$")


def split_name(name: str) -> tuple[str | None, str | None]:
    """``dir/key.ext1.ext2`` -> (``dir/key``, ``ext1.ext2``), extension lower-cased; (None, None) without one."""
    match = _NAME.match(name)
    if match is None:
        return None, None
    return match.group(1), match.group(2).lower()


def read_tar_samples(
    urls: Iterable[str], counter: SkipCounter, max_empty_shards: int | None = None
) -> Iterator[dict[str, Any]]:
    """Samples of each shard in turn: dicts of extension -> bytes, with ``__key__`` and ``__url__``.

    Args:
        urls: shard URLs, possibly endless.
        counter: counts unreadable and truncated shards.
        max_empty_shards: raise after this many shards in a row gave no sample (an endless stream of broken
            shards would otherwise never yield); None never raises.
    """
    empty = 0
    for url in urls:
        empty += 1
        for sample in _read_shard(url, counter):
            empty = 0
            yield sample
        if max_empty_shards is not None and empty >= max_empty_shards:
            raise RuntimeError(f"{empty} shards in a row gave no sample (last: {url}): {dict(counter.totals)}")


def _read_shard(url: str, counter: SkipCounter) -> Iterator[dict[str, Any]]:
    try:
        stream = gopen(url)
    except Exception as error:
        counter.skip("unreadable_shard", url, f"{type(error).__name__}: {error}")
        return
    current: dict[str, Any] | None = None
    members = 0
    complete = False
    try:
        with tarfile.open(fileobj=stream, mode="r|*") as tar:
            for member in tar:
                tar.members = []  # a streamed tar otherwise keeps every header it has read
                members += 1
                key, extension = split_name(member.name)
                if not member.isreg() or key is None or key.rpartition("/")[2].startswith("__"):
                    continue
                if current is not None and current["__key__"] != key:
                    yield current
                    current = None
                data = tar.extractfile(member).read()
                if current is None:
                    current = {"__key__": key, "__url__": url}
                if extension in current:
                    counter.skip("duplicate_file", f"{url}:{member.name}", "second file of that name dropped")
                    continue
                current[extension] = data
        complete = True
    except (tarfile.TarError, OSError, EOFError, zlib.error) as error:
        reason = "truncated_tar" if members else "unreadable_shard"
        where = url if current is None else f"{url}:{current['__key__']}"
        counter.skip(reason, where, f"{type(error).__name__}: {error}")
        current = None
    finally:
        _close(stream, url, counter if complete else None)
    if current is not None:
        yield current


def _close(stream: Any, url: str, counter: SkipCounter | None) -> None:
    """Close a shard; a ``pipe:`` command that exits non-zero reports it here (counted after a full read only:
    a command cut short by an early close exits non-zero too)."""
    try:
        stream.close()
    except Exception as error:
        if counter is not None:
            counter.skip("unreadable_shard", url, f"{type(error).__name__}: {error}")
