"""Grid expansion and the command-line form of config values: a grid ``{key: [values]}`` becomes the list of
trials' overrides (the cartesian product minus the excluded combinations), and each override becomes one
``--key=value`` argument that LightningCLI (jsonargparse) parses back into the same value."""

from __future__ import annotations

import itertools
import math
from typing import Any

import yaml


def expand_grid(grid: dict[str, list[Any]], exclude: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Every combination of the grid's values, in key order (the last key varies fastest).

    Args:
        grid: config key -> values (an empty grid gives one trial without overrides).
        exclude: partial combinations; a trial that has every pair of one of them is dropped.
    """
    keys = list(grid)
    combos = [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))]
    return [c for c in combos if not any(_matches(c, entry) for entry in exclude or [])]


def _matches(combo: dict[str, Any], entry: dict[str, Any]) -> bool:
    """Whether ``combo`` has every key-value pair of ``entry``."""
    return all(key in combo and combo[key] == value for key, value in entry.items())


def cli_value(value: Any) -> str:
    """The text after ``--key=`` that parses back to ``value``: YAML, in flow style for lists and mappings, with
    strings quoted only where they would read as something else (``'true'``, ``'{a: 1}'``)."""
    text = yaml.safe_dump(value, default_flow_style=True, width=math.inf)
    return text.removesuffix("\n...\n").removesuffix("\n")


def override_args(overrides: dict[str, Any]) -> list[str]:
    """``{key: value}`` -> ``["--key=value", ...]`` in order."""
    return [f"--{key}={cli_value(value)}" for key, value in overrides.items()]
