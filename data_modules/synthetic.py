"""The built-in synthetic visual-question dataset of the demo: images of coloured shapes with questions about
colour, shape, count, relative position and existence, written as LLaVA-style instruction shards (training), a
``vqa-jsonl`` benchmark directory (held-out evaluation) and a word-level ``tokenizer.json``. ``generate_synthetic``
writes one into a directory; ``ensure_synthetic`` makes it on first use in a cache directory keyed by its
arguments and reuses it afterwards; ``main`` is ``vl-mamba data synthetic``. Output layout::

    manifest.json         arguments, file names and answer counts; written last, so its presence marks a
                          complete dataset
    tokenizer.json        word-level tokenizer of the closed vocabulary
    train/00000.tar ...   key.png + key.json ({"id", "conversations", "categories", "scene"}), 1000 per shard
    train/sizes.json      {"00000.tar": 1000, ...}
    eval/questions.jsonl  {"question_id", "image", "text", "category"}
    eval/answers.jsonl    {"question_id", "answers": 10 copies of the answer, "answer_type"}
    eval/scenes.jsonl     {"image", "scene"}: the description each answer was derived from
    eval/images/000000.png ...
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.progress import Progress

from data_modules.synthetic_questions import CATEGORIES, TEMPLATES, all_texts, check_kinds
from data_modules.synthetic_tokenizer import build_tokenizer, save_tokenizer, vocabulary
from data_modules.synthetic_writer import ProgressFn, write_eval, write_train
from vl_mamba.utils.cache import cache_root
from vl_mamba.utils.logging import get_logger

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
log = get_logger(__name__)


@dataclass(frozen=True)
class SyntheticPaths:
    """Where the parts of a generated dataset are.

    Attributes:
        root: the dataset directory.
        train_shards: the training tar shards, in order.
        sizes: ``train/sizes.json`` (shard file name -> samples).
        eval_dir: the ``vqa-jsonl`` evaluation directory.
        tokenizer: ``tokenizer.json``.
        manifest: ``manifest.json``.
    """

    root: Path
    train_shards: tuple[Path, ...]
    sizes: Path
    eval_dir: Path
    tokenizer: Path
    manifest: Path

    @property
    def train_pattern(self) -> str:
        """The training shards as one brace pattern, e.g. ``/data/train/{00000..00019}.tar``."""
        return str(self.root / _brace_pattern(len(self.train_shards)))

    @classmethod
    def from_root(cls, root: str | Path) -> SyntheticPaths:
        """Paths of a complete dataset directory (one holding ``manifest.json``)."""
        root = Path(root)
        manifest = json.loads((root / MANIFEST).read_text())
        return cls(
            root=root,
            train_shards=tuple(root / "train" / name for name in manifest["train"]["shards"]),
            sizes=root / manifest["train"]["sizes"],
            eval_dir=root / manifest["eval"]["dir"],
            tokenizer=root / manifest["tokenizer"]["path"],
            manifest=root / MANIFEST,
        )


def _brace_pattern(shards: int) -> str:
    return "train/00000.tar" if shards == 1 else f"train/{{00000..{shards - 1:05d}}}.tar"


def default_cache_dir() -> Path:
    """``$VL_MAMBA_CACHE/synthetic`` when that variable is set, else ``~/.cache/vl-mamba/synthetic``."""
    return cache_root() / "synthetic"


def generate_synthetic(
    out_dir: str | Path,
    train_samples: int = 20000,
    eval_questions: int = 1000,
    image_size: int = 64,
    seed: int = 0,
    shard_size: int = 1000,
    turns: int = 3,
    max_objects: int = 4,
    kinds: Sequence[str] | None = None,
    extra_texts: Sequence[str] = (),
    workers: int | None = None,
    overwrite: bool = False,
    progress: ProgressFn | None = None,
) -> SyntheticPaths:
    """Write a synthetic dataset to ``out_dir``; the same arguments always give the same bytes.

    The files are written into a temporary sibling directory that is renamed to ``out_dir`` once complete, so
    an interrupted run leaves no partial dataset behind.

    Args:
        out_dir: the dataset directory; it must not exist (or be empty) unless ``overwrite``.
        train_samples: training images, each one sample of ``turns`` question-answer turns.
        eval_questions: held-out questions, ``turns`` per evaluation image.
        image_size: side of the square images in pixels.
        seed: seed of both splits; evaluation images never repeat a training image.
        shard_size: samples per training shard.
        turns: questions per image, each of a different category (1 to 5).
        max_objects: most shapes in an image (counts range over ``0..max_objects``).
        kinds: ask only these kinds of question (``synthetic_questions.TEMPLATES`` keys, e.g. ``["count_all"]``);
            all by default.
        extra_texts: texts whose words the tokenizer must also know (e.g. a chat template's system prompt).
        workers: processes drawing images; by default up to 4, as many as there are cores.
        overwrite: replace an existing ``out_dir``.
        progress: called with ``(phase, done, total)`` as samples are written.
    """
    out_dir = Path(out_dir).expanduser()
    if _occupied(out_dir) and not overwrite:
        raise FileExistsError(f"{out_dir} exists; pass overwrite=True (--overwrite) to replace it")
    args = _arguments(
        train_samples, eval_questions, image_size, seed, shard_size, turns, max_objects, extra_texts, kinds
    )
    workers = min(4, os.cpu_count() or 1) if workers is None else workers
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(out_dir)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    start = time.perf_counter()
    common = {
        "seed": seed, "turns": turns, "image_size": image_size, "max_objects": max_objects, "workers": workers,
        "kinds": None if kinds is None else tuple(kinds),
    }
    try:
        shards, signatures, train_stats = write_train(
            tmp / "train", train_samples, shard_size=shard_size, progress=progress, **common
        )
        eval_stats = write_eval(tmp / "eval", eval_questions, exclude=signatures, progress=progress, **common)
        tokenizer = build_tokenizer(all_texts(max_objects), extra_texts)
        save_tokenizer(tokenizer, tmp / "tokenizer.json")
        manifest = {
            "format": "vl-mamba-synthetic",
            "version": FORMAT_VERSION,
            "args": args,
            "train": {
                "shards": [p.name for p in shards],
                "pattern": _brace_pattern(len(shards)),
                "sizes": "train/sizes.json",
                **train_stats.to_dict(),
            },
            "eval": {"dir": "eval", "layout": "vqa-jsonl", **eval_stats.to_dict()},
            "tokenizer": {
                "path": "tokenizer.json",
                "vocab_size": tokenizer.get_vocab_size(with_added_tokens=True),
                "vocabulary_sha256": _vocabulary_digest(args),
            },
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
        _move_into_place(tmp, out_dir, overwrite)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info(
        "synthetic dataset: %d training samples, %d evaluation questions in %.1f s -> %s",
        train_stats.samples,
        eval_stats.questions,
        time.perf_counter() - start,
        out_dir,
    )
    return SyntheticPaths.from_root(out_dir)


def ensure_synthetic(
    cache_dir: str | Path | None = None,
    train_samples: int = 20000,
    eval_questions: int = 1000,
    image_size: int = 64,
    seed: int = 0,
    shard_size: int = 1000,
    turns: int = 3,
    max_objects: int = 4,
    kinds: Sequence[str] | None = None,
    extra_texts: Sequence[str] = (),
    workers: int | None = None,
    progress: ProgressFn | None = None,
) -> SyntheticPaths:
    """The dataset of these arguments in ``cache_dir``, generated there the first time it is asked for.

    Each argument set has its own subdirectory (its name ends with a digest of the arguments and of the
    tokenizer's vocabulary, which grows when a conversation template is registered), whose ``manifest.json``
    records them; a directory whose manifest does not match is generated again. Several
    processes may call this at once: each writes a temporary directory, and the first rename wins.

    Args:
        cache_dir: parent of the dataset directories; ``default_cache_dir()`` by default.
        train_samples, eval_questions, image_size, seed, shard_size, turns, max_objects, kinds, extra_texts,
            workers, progress: as in ``generate_synthetic``.
    """
    cache_dir = default_cache_dir() if cache_dir is None else Path(cache_dir).expanduser()
    args = _arguments(
        train_samples, eval_questions, image_size, seed, shard_size, turns, max_objects, extra_texts, kinds
    )
    key = [FORMAT_VERSION, args, _vocabulary_digest(args)]
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:10]
    root = cache_dir / f"{image_size}px-{train_samples}-{eval_questions}-seed{seed}-{digest}"
    if _matches(root, args):
        return SyntheticPaths.from_root(root)
    try:
        return generate_synthetic(root, **args, workers=workers, overwrite=root.exists(), progress=progress)
    except FileExistsError:
        if _matches(root, args):  # another process finished first
            return SyntheticPaths.from_root(root)
        raise


def _arguments(
    train_samples: int,
    eval_questions: int,
    image_size: int,
    seed: int,
    shard_size: int,
    turns: int,
    max_objects: int,
    extra_texts: Sequence[str],
    kinds: Sequence[str] | None = None,
) -> dict:
    """The arguments that decide the output, checked, as recorded in the manifest."""
    if train_samples < 1 or eval_questions < 1 or shard_size < 1:
        raise ValueError("train_samples, eval_questions and shard_size must be positive")
    if image_size < 32:
        raise ValueError(f"image_size {image_size} is too small to draw recognisable shapes (32 at least)")
    categories = check_kinds(kinds)
    if not 1 <= turns <= len(categories):
        raise ValueError(f"turns must be in 1..{len(categories)} (the categories asked), got {turns}")
    if not 1 <= max_objects <= 9:
        raise ValueError(f"max_objects must be in 1..9, got {max_objects}")
    return {
        "train_samples": train_samples,
        "eval_questions": eval_questions,
        "image_size": image_size,
        "seed": seed,
        "shard_size": shard_size,
        "turns": turns,
        "max_objects": max_objects,
        "extra_texts": list(extra_texts),
        **({} if kinds is None else {"kinds": sorted(kinds)}),  # absent for all kinds: older caches stay valid
    }


def _vocabulary_digest(args: dict) -> str:
    tokens = vocabulary(all_texts(args["max_objects"]), args["extra_texts"])
    return hashlib.sha256(json.dumps(tokens).encode()).hexdigest()


def _matches(root: Path, args: dict) -> bool:
    """Whether ``root`` holds a complete dataset of these arguments and of today's vocabulary."""
    try:
        manifest = json.loads((root / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    return (
        manifest.get("version") == FORMAT_VERSION
        and manifest.get("args") == args
        and manifest.get("tokenizer", {}).get("vocabulary_sha256") == _vocabulary_digest(args)
    )


def _occupied(path: Path) -> bool:
    return path.exists() and (not path.is_dir() or any(path.iterdir()))


def _move_into_place(tmp: Path, out_dir: Path, overwrite: bool) -> None:
    """Rename ``tmp`` to ``out_dir``; an existing ``out_dir`` is set aside first when ``overwrite``."""
    if out_dir.is_dir() and not any(out_dir.iterdir()):
        out_dir.rmdir()
    if _occupied(out_dir):
        if not overwrite:
            raise FileExistsError(f"{out_dir} appeared while generating")
        old = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}"
        os.replace(out_dir, old)
        shutil.rmtree(old, ignore_errors=True)
    try:
        os.rename(tmp, out_dir)
    except OSError as error:  # another process renamed its copy first
        raise FileExistsError(f"{out_dir} appeared while generating") from error


def _remove_stale_temporaries(out_dir: Path) -> None:
    """Delete temporary directories of ``out_dir`` left by processes that no longer run."""
    for path in out_dir.parent.glob(f".{out_dir.name}.tmp-*"):
        pid = path.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def main(argv: list[str]) -> int:
    """``vl-mamba data synthetic``: generate the synthetic dataset into ``--out`` (or the cache)."""
    defaults = {name: p.default for name, p in inspect.signature(generate_synthetic).parameters.items()}
    parser = argparse.ArgumentParser(
        prog="vl-mamba data synthetic",
        description="Generate the synthetic visual-question dataset: training shards, a vqa-jsonl evaluation "
        "directory and a word-level tokenizer.",
    )
    parser.add_argument("--out", type=Path, help="dataset directory (default: a subdirectory of the cache)")
    options = {
        "train_samples": "training images, one sample of --turns questions each",
        "eval_questions": "held-out questions",
        "image_size": "image side in pixels",
        "seed": "seed of both splits",
        "shard_size": "samples per training shard",
        "turns": f"questions per image, each of a different category, 1 to {len(CATEGORIES)}",
        "max_objects": "most shapes in an image",
    }
    for name, help_text in options.items():
        default = defaults[name]
        parser.add_argument(
            "--" + name.replace("_", "-"), type=int, default=default, help=f"{help_text}; default {default}"
        )
    parser.add_argument(
        "--kinds",
        type=lambda text: [k.strip() for k in text.split(",") if k.strip()],
        default=None,
        help=f"ask only these kinds of question, comma-separated (default: all): {', '.join(TEMPLATES)}",
    )
    parser.add_argument("--workers", type=int, default=None, help="drawing processes (default: up to 4)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out directory")
    args = parser.parse_args(argv)
    chosen = {name: getattr(args, name) for name in options} | {"kinds": args.kinds}
    console = Console()
    try:
        if args.out is not None and not args.overwrite and _matches(args.out, _arguments(**chosen, extra_texts=())):
            console.print(f"{args.out} already holds this dataset")
            return 0
        with Progress(console=console, transient=True) as bar:
            tasks: dict[str, int] = {}

            def progress(phase: str, done: int, total: int) -> None:
                if phase not in tasks:
                    tasks[phase] = bar.add_task(f"{phase} samples" if phase == "train" else f"{phase} questions")
                bar.update(tasks[phase], completed=done, total=total)

            common = {"workers": args.workers, "progress": progress}
            if args.out is None:
                paths = ensure_synthetic(**chosen, **common)
            else:
                paths = generate_synthetic(args.out, **chosen, **common, overwrite=args.overwrite)
    except (FileExistsError, ValueError) as error:
        console.print(f"[red]error:[/red] {error}")
        return 1
    console.print(f"train shards  {paths.train_pattern}")
    console.print(f"evaluation    {paths.eval_dir} (vqa-jsonl)")
    console.print(f"tokenizer     {paths.tokenizer}")
    return 0
