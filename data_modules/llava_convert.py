"""Converting LLaVA's JSON (LCS-558K captions, mix-665K conversations) and its image folder into WebDataset
shards: ``NNNNN.tar`` holding ``key.json`` (the record) and ``key.jpg|png|...`` (the image file as it is),
plus ``sizes.json``.

Record i always goes to shard i // shard_size under the key ``f"{i:09d}"`` (the position in the JSON: unique
and dot-free, unlike some LLaVA ids, which stay in the JSON). Shards are written in parallel under temporary
names and renamed when complete; then a small per-shard report is written to ``convert_state/``, which
marks the shard done. A killed conversion, run again with the same arguments, redoes exactly the shards not
marked done, so no sample is lost or written twice. Missing, corrupt and invalid records are skipped and
listed in ``convert_report.json``.
"""

from __future__ import annotations

import hashlib
import io
import json
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from itertools import chain
from pathlib import Path
from typing import Any

from PIL import Image

from data_modules.shard_writer import TMP_SUFFIX, write_json, write_shard, write_sizes

STATE_DIR = "convert_state"
REPORT_FILE = "convert_report.json"
_FORMAT_EXTENSIONS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif", "BMP": "bmp", "TIFF": "tiff"}


@dataclass
class ShardResult:
    """What one shard's conversion wrote and skipped."""

    index: int
    name: str
    records: int
    samples: int
    missing: list[str] = field(default_factory=list)
    """Image paths that do not exist."""
    corrupt: list[str] = field(default_factory=list)
    """``path: error`` for images that do not decode."""
    invalid: list[str] = field(default_factory=list)
    """``key: why`` for records without a usable conversation."""


@dataclass
class ConversionReport:
    """The whole conversion."""

    records: int
    shards: dict[str, int]
    """Shard file name -> samples (the content of sizes.json)."""
    resumed_shards: int
    """Shards found complete from an earlier run."""
    missing: list[str]
    corrupt: list[str]
    invalid: list[str]

    @property
    def samples(self) -> int:
        return sum(self.shards.values())


class Rejected(Exception):
    """A record that cannot become a sample; ``kind`` is ``missing``, ``corrupt`` or ``invalid``."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind


def sample_key(index: int) -> str:
    """The key of the record at ``index`` in the JSON."""
    return f"{index:09d}"


def shard_name(index: int) -> str:
    return f"{index:05d}.tar"


def read_image(path: Path) -> tuple[str, bytes]:
    """Read an image file and check that it decodes; returns (extension from its format, bytes)."""
    if not path.is_file():
        raise Rejected("missing", str(path))
    data = path.read_bytes()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            image_format = image.format
            if image_format == "JPEG":
                image.draft(None, (64, 64))  # decodes every block, at 1/8 scale: fast, and truncation shows
            image.load()
    except Exception as error:
        raise Rejected("corrupt", f"{path}: {type(error).__name__}: {error}") from None
    return _FORMAT_EXTENSIONS.get(image_format, str(image_format).lower()), data


def record_files(index: int, record: Any, image_dir: Path) -> dict[str, bytes]:
    """A LLaVA record -> the files of its sample ({"json": ..., image extension: ...})."""
    key = sample_key(index)
    if not isinstance(record, dict):
        raise Rejected("invalid", f"{key}: not a JSON object")
    conversations = record.get("conversations")
    if not isinstance(conversations, list) or not conversations:
        raise Rejected("invalid", f"{key}: no conversations")
    files = {"json": json.dumps(record, ensure_ascii=False).encode("utf-8")}
    image = record.get("image")
    if image is not None:
        if not isinstance(image, str):
            raise Rejected("invalid", f"{key}: 'image' must be one path, got {type(image).__name__}")
        extension, data = read_image(image_dir / image)
        files[extension] = data
    return files


@dataclass
class ShardTask:
    index: int
    start: int
    records: list[Any]
    image_dir: Path
    out_dir: Path


def convert_shard(task: ShardTask) -> ShardResult:
    """Write one shard (temporary name, then renamed), then its report, which marks it done."""
    result = ShardResult(task.index, shard_name(task.index), records=len(task.records), samples=0)

    def samples() -> Iterator[tuple[str, dict[str, bytes]]]:
        for offset, record in enumerate(task.records):
            try:
                files = record_files(task.start + offset, record, task.image_dir)
            except Rejected as rejected:
                getattr(result, rejected.kind).append(str(rejected))
                continue
            yield sample_key(task.start + offset), files

    path = task.out_dir / result.name
    sample_list = samples()
    first = next(sample_list, None)
    if first is not None:
        result.samples = write_shard(path, chain([first], sample_list))
    write_json(task.out_dir / STATE_DIR / f"{task.index:05d}.json", asdict(result))
    return result


def convert_llava(
    json_path: str | Path,
    image_dir: str | Path,
    out_dir: str | Path,
    shard_size: int = 10_000,
    workers: int = 1,
    on_shard: Callable[[ShardResult], None] | None = None,
    on_plan: Callable[[int, int], None] | None = None,
) -> ConversionReport:
    """Convert (or resume converting) a LLaVA JSON and its images into shards in ``out_dir``.

    Args:
        json_path: LLaVA's JSON list of records (``id``, optional ``image``, ``conversations``).
        image_dir: the folder that the records' ``image`` paths are relative to.
        out_dir: where shards, ``sizes.json``, ``convert_report.json`` and ``convert_state/`` go.
        shard_size: records per shard (fewer samples when some are skipped).
        workers: processes writing shards in parallel (1: in this process).
        on_shard: called after each shard written in this run.
        on_plan: called once with (shards to write, records in them) before writing starts.
    """
    json_path, image_dir, out_dir = Path(json_path), Path(image_dir), Path(out_dir)
    if shard_size < 1 or workers < 1:
        raise ValueError(f"shard_size and workers must be positive, got {shard_size} and {workers}")
    raw = json_path.read_bytes()
    records = json.loads(raw)
    if not isinstance(records, list):
        raise ValueError(f"{json_path} must hold a JSON list of records")
    state = out_dir / STATE_DIR
    state.mkdir(parents=True, exist_ok=True)
    _check_same_input(state, hashlib.sha256(raw).hexdigest(), len(records), shard_size)
    for stale in [*out_dir.glob(f"*{TMP_SUFFIX}"), *state.glob(f"*{TMP_SUFFIX}")]:
        stale.unlink()  # left by a killed run

    done: dict[int, ShardResult] = {}
    tasks = []
    for index, start in enumerate(range(0, len(records), shard_size)):
        previous = _load_result(out_dir, index)
        if previous is not None:
            done[index] = previous
        else:
            tasks.append(ShardTask(index, start, records[start : start + shard_size], image_dir, out_dir))
    resumed = len(done)
    if on_plan is not None:
        on_plan(len(tasks), sum(len(task.records) for task in tasks))
    for result in _run(tasks, workers):
        done[result.index] = result
        if on_shard is not None:
            on_shard(result)

    results = [done[index] for index in sorted(done)]
    report = ConversionReport(
        records=len(records),
        shards={r.name: r.samples for r in results if r.samples},
        resumed_shards=resumed,
        missing=[m for r in results for m in r.missing],
        corrupt=[c for r in results for c in r.corrupt],
        invalid=[i for r in results for i in r.invalid],
    )
    write_sizes(out_dir, report.shards)
    write_json(out_dir / REPORT_FILE, {**asdict(report), "samples": report.samples})
    return report


def _run(tasks: list[ShardTask], workers: int) -> Iterator[ShardResult]:
    if workers == 1:
        for task in tasks:
            yield convert_shard(task)
        return
    pending = iter(tasks)
    executor = ProcessPoolExecutor(max_workers=workers)
    running: set[Future] = set()
    try:
        while True:
            while len(running) < 2 * workers and (task := next(pending, None)) is not None:
                running.add(executor.submit(convert_shard, task))
            if not running:
                break
            finished, running = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                yield future.result()
    except BaseException:
        executor.shutdown(wait=False, cancel_futures=True)
        raise
    executor.shutdown()


def _check_same_input(state: Path, digest: str, records: int, shard_size: int) -> None:
    config = {"sha256": digest, "records": records, "shard_size": shard_size}
    path = state / "config.json"
    if path.exists():
        previous = json.loads(path.read_text())
        if previous != config:
            raise ValueError(
                f"{state.parent} holds a conversion of other input or shard size ({previous}); "
                "resume with the same --json and --shard-size, or choose a new --out"
            )
    else:
        write_json(path, config)


def _load_result(out_dir: Path, index: int) -> ShardResult | None:
    path = out_dir / STATE_DIR / f"{index:05d}.json"
    if not path.exists():
        return None
    result = ShardResult(**json.loads(path.read_text()))
    if result.samples and not (out_dir / result.name).exists():
        return None
    return result
