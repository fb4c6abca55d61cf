"""Reading a run's logged scalars back: CSVLogger's ``metrics.csv`` and TensorBoard event files, found anywhere
under a directory. A run is a directory that holds either; its scalars are ``{tag: [(step, value), ...]}``
sorted by step (the last value logged at a step wins), and ``final_values`` gives each tag's last value. The
sweep results and ``vl-mamba plot`` both read logs through this module.
"""

from __future__ import annotations

import csv
from pathlib import Path

from vl_mamba.utils.logging import get_logger

log = get_logger(__name__)

Scalars = dict[str, list[tuple[int, float]]]
"""tag -> [(step, value), ...], sorted by step."""

CSV_FILE = "metrics.csv"
EVENTS_GLOB = "events.out.tfevents.*"
NOT_SCALARS = ("step",)


def find_runs(root: str | Path, skip: tuple[str, ...] = ()) -> list[Path]:
    """Directories under ``root`` (itself included) that hold a ``metrics.csv`` or TensorBoard event files.

    Args:
        root: where to look.
        skip: directory names not to descend into (e.g. the plots output folder).
    """
    root = Path(root)
    found = {p.parent for p in root.rglob(CSV_FILE)} | {p.parent for p in root.rglob(EVENTS_GLOB)}
    return sorted(p for p in found if not any(part in skip for part in p.relative_to(root).parts))


def read_metrics_csv(path: str | Path) -> Scalars:
    """Scalars of a CSVLogger ``metrics.csv`` (rows are sparse: each holds the tags logged at one step)."""
    scalars: dict[str, dict[int, float]] = {}
    with open(path, newline="") as f:
        for row_index, row in enumerate(csv.DictReader(f)):
            step = _as_float(row.get("step"))
            at = int(step) if step is not None else row_index
            for tag, text in row.items():
                value = _as_float(text)
                if tag is None or tag in NOT_SCALARS or value is None:
                    continue
                scalars.setdefault(tag, {})[at] = value
    return {tag: sorted(points.items()) for tag, points in scalars.items()}


def read_tensorboard(directory: str | Path) -> Scalars:
    """Scalars of the TensorBoard event files in ``directory`` (several files, e.g. of a resumed run, merge)."""
    try:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    except ImportError as error:
        raise ImportError("reading TensorBoard event files needs tensorboard: pip install tensorboard") from error
    accumulator = EventAccumulator(str(directory), size_guidance={"scalars": 0})
    accumulator.Reload()
    scalars = {}
    for tag in accumulator.Tags().get("scalars", []):
        points = {int(event.step): float(event.value) for event in accumulator.Scalars(tag)}
        scalars[tag] = sorted(points.items())
    return scalars


def read_run(directory: str | Path) -> Scalars:
    """A run's scalars: its ``metrics.csv`` and its event files (a tag found in both is taken from the CSV)."""
    directory = Path(directory)
    scalars: Scalars = {}
    if (directory / CSV_FILE).is_file():
        scalars.update(read_metrics_csv(directory / CSV_FILE))
    if any(directory.glob(EVENTS_GLOB)):
        try:
            events = read_tensorboard(directory)
        except ImportError as error:
            log.warning("%s: %s", directory, error)
            events = {}
        for tag, points in events.items():
            scalars.setdefault(tag, points)
    return scalars


def read_latest_run(root: str | Path) -> Scalars:
    """The scalars of the most recently written run under ``root`` (empty when there is none)."""
    runs = find_runs(root)
    if not runs:
        return {}
    return read_run(max(runs, key=_last_write))


def final_values(scalars: Scalars) -> dict[str, float]:
    """Each tag's value at its last logged step."""
    return {tag: points[-1][1] for tag, points in scalars.items() if points}


def _last_write(run: Path) -> float:
    """When a run's logs were last written (modification time)."""
    files = [run / CSV_FILE, *run.glob(EVENTS_GLOB)]
    return max(f.stat().st_mtime for f in files if f.is_file())


def _as_float(text: str | None) -> float | None:
    """A CSV cell as a number; None when empty or not a number."""
    if text is None or text == "":
        return None
    try:
        return float(text)
    except ValueError:
        return None
