"""Trial names: short, filesystem-safe and deterministic, made of the trial's overrides, e.g.
``connector=VSSL2Connector__scan=uni__seed=0``. A key is shown by its label (given in the spec, or its last
part: ``model.connector.init_args.scan`` -> ``scan``, ``model.connector.class_path`` -> ``connector``); a class
path or file path value by its last part. Names that would collide, or run too long, get a hash of the
overrides, so one set of overrides always maps to one folder."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import PurePosixPath
from typing import Any

from vl_mamba.sweeps.grid import cli_value

MAX_LENGTH = 100
BASE_NAME = "base"
_UNSAFE = re.compile(r"[^A-Za-z0-9._+=-]+")
_DOTTED_NAME = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)+$")
_SKIPPED_PARTS = ("init_args", "class_path", "dict_kwargs")


def default_labels(keys: list[str], labels: dict[str, str] | None = None) -> dict[str, str]:
    """Key -> its label in names: the given one, else the shortest tail of the key that no other key shares."""
    labels = dict(labels or {})
    parts = {k: [p for p in k.split(".") if p not in _SKIPPED_PARTS] or [k] for k in keys}
    depth = 1
    while True:
        tails = {k: ".".join(parts[k][-depth:]) for k in keys}
        clashes = {t for t in tails.values() if list(tails.values()).count(t) > 1}
        if not clashes or depth >= max((len(p) for p in parts.values()), default=1):
            break
        depth += 1
    return {k: labels.get(k, tails[k]) for k in keys}


def short_value(value: Any) -> str:
    """A value as it appears in a name: class paths and file paths by their last part, others as on the CLI."""
    text = cli_value(value)
    if isinstance(value, str):
        if _DOTTED_NAME.match(value):
            text = value.rsplit(".", 1)[-1]
        elif "/" in value:
            text = PurePosixPath(value).stem or value
    return text


def safe(text: str) -> str:
    """Replace what is unsafe in a file name (anything but letters, digits and ``._+=-``) with ``-``."""
    return _UNSAFE.sub("-", text).strip("-") or "-"


def overrides_hash(overrides: dict[str, Any], length: int = 8) -> str:
    """A short stable hash of the overrides."""
    blob = json.dumps(overrides, sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:length]


def trial_name(overrides: dict[str, Any], labels: dict[str, str]) -> str:
    """``label=value`` pairs joined by ``__`` (``base`` without overrides); long names end in a hash."""
    if not overrides:
        return BASE_NAME
    name = "__".join(f"{safe(labels.get(k, k))}={safe(short_value(v))}" for k, v in overrides.items())
    if len(name) > MAX_LENGTH:
        name = f"{name[: MAX_LENGTH - 9]}-{overrides_hash(overrides)}"
    return name


def trial_names(combos: list[dict[str, Any]], labels: dict[str, str] | None = None) -> list[str]:
    """Names of all trials of a sweep, unique (names that collide get a hash of their overrides)."""
    keys = list(combos[0]) if combos else []
    full_labels = default_labels(keys, labels)
    names = [trial_name(c, full_labels) for c in combos]
    return [
        f"{n}-{overrides_hash(c)}" if names.count(n) > 1 else n for n, c in zip(names, combos)
    ]
