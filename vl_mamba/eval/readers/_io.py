"""File helpers shared by the benchmark readers: JSON / JSON-lines loading and finding a benchmark's files
among the places the official releases and LLaVA's eval layout put them."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

PathLike = str | Path


def read_json(path: Path) -> Any:
    """Load one JSON document."""
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Load a JSON-lines file (one object per line; blank lines are skipped)."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def find_existing(root: Path, candidates: Sequence[PathLike]) -> Path | None:
    """The first of ``root / candidate`` that exists, or None."""
    for candidate in candidates:
        path = root / candidate
        if path.exists():
            return path
    return None


def locate(root: Path, given: PathLike | None, candidates: Sequence[PathLike], what: str) -> Path:
    """Find a benchmark file or folder.

    Args:
        root: the benchmark's folder.
        given: a path the user named (relative to ``root`` unless absolute); it must exist.
        candidates: paths relative to ``root`` to try, in order, when ``given`` is None.
        what: what is looked for, for the error message.

    Raises:
        FileNotFoundError: nothing found; the message lists every place tried.
    """
    if given is not None:
        path = root / given
        if not path.exists():
            raise FileNotFoundError(f"{what}: {path} does not exist")
        return path
    path = find_existing(root, candidates)
    if path is None:
        tried = ", ".join(str(root / c) for c in candidates)
        raise FileNotFoundError(f"{what} not found under {root}; looked for: {tried}")
    return path
