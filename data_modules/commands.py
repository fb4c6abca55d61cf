"""``vl-mamba data``: data preparation commands.

- ``convert-llava --json X.json --images DIR --out DIR [--shard-size N] [--workers N]``: LLaVA JSON and
  images -> shards and ``sizes.json`` (resumable: run the same command again after a kill);
- ``stats DIR [--tokenizer T] [--max-samples N] [--json FILE]``: what a shard set holds;
- ``synthetic ...``: tiny synthetic shard sets (``data_modules.synthetic``).
"""

from __future__ import annotations

import argparse
import importlib
import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

console = Console()
SHOWN = 10  # missing / corrupt / invalid entries printed; convert_report.json lists all


def main(argv: list[str]) -> int:
    """Run a ``vl-mamba data`` subcommand; returns the exit code."""
    if argv and argv[0] == "synthetic":
        return _synthetic(argv[1:])
    args = _parser().parse_args(argv)
    if args.command == "convert-llava":
        return convert_llava_command(args)
    return stats_command(args)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vl-mamba data", description="Prepare WebDataset shards.")
    commands = parser.add_subparsers(dest="command", required=True)
    convert = commands.add_parser("convert-llava", help="LLaVA JSON + image folder -> shards and sizes.json")
    convert.add_argument("--json", required=True, type=Path, help="LLaVA JSON (e.g. blip_laion_cc_sbu_558k.json)")
    convert.add_argument("--images", required=True, type=Path, help="folder the records' image paths start from")
    convert.add_argument("--out", required=True, type=Path, help="output folder (resumes what it holds)")
    convert.add_argument("--shard-size", type=int, default=10_000, help="records per shard (default 10000)")
    convert.add_argument("--workers", type=int, default=1, help="parallel processes (default 1)")
    stats = commands.add_parser("stats", help="samples, tokens and image sizes of a shard set")
    stats.add_argument("shards", help="folder of shards, pattern or file")
    stats.add_argument("--tokenizer", default=None, help="tokenizer.json path or hub id, to count text tokens")
    stats.add_argument("--max-samples", type=int, default=None, help="read at most this many samples")
    stats.add_argument("--json", type=Path, default=None, help="also write the numbers to this JSON file")
    commands.add_parser("synthetic", help="tiny synthetic shard sets (see: vl-mamba data synthetic --help)")
    return parser


def _synthetic(argv: list[str]) -> int:
    try:
        module = importlib.import_module("data_modules.synthetic")
    except ModuleNotFoundError as error:
        if error.name != "data_modules.synthetic":
            raise
        console.print("[red]vl-mamba data synthetic: data_modules/synthetic.py is not installed")
        return 2
    return int(module.main(argv) or 0)


def convert_llava_command(args: argparse.Namespace) -> int:
    """``convert-llava``: convert with a progress bar, then print what was skipped."""
    from data_modules.llava_convert import REPORT_FILE, convert_llava

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("records"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("converting", total=None)

        def on_plan(shards: int, records: int) -> None:
            progress.update(task, total=records, description=f"converting {shards} shards")

        report = convert_llava(
            args.json,
            args.images,
            args.out,
            shard_size=args.shard_size,
            workers=args.workers,
            on_shard=lambda result: progress.advance(task, result.records),
            on_plan=on_plan,
        )
    table = Table(title=f"convert-llava -> {args.out}")
    table.add_column("records", justify="right")
    table.add_column("samples", justify="right")
    table.add_column("shards", justify="right")
    table.add_column("resumed shards", justify="right")
    table.add_column("missing images", justify="right")
    table.add_column("corrupt images", justify="right")
    table.add_column("invalid records", justify="right")
    table.add_row(
        *map(str, (report.records, report.samples, len(report.shards), report.resumed_shards)),
        *map(str, (len(report.missing), len(report.corrupt), len(report.invalid))),
    )
    console.print(table)
    for title, entries in (("missing", report.missing), ("corrupt", report.corrupt), ("invalid", report.invalid)):
        for entry in entries[:SHOWN]:
            console.print(f"[yellow]{title}:[/] {entry}", markup=True, highlight=False)
        if len(entries) > SHOWN:
            console.print(f"[yellow]... {len(entries) - SHOWN} more {title}; see {args.out / REPORT_FILE}")
    return 0


def stats_command(args: argparse.Namespace) -> int:
    """``stats``: print (and optionally save) the description of a shard set."""
    from data_modules.stats import collect_stats
    from vl_mamba.tokenizer import TextTokenizer

    tokenizer = TextTokenizer.load(args.tokenizer) if args.tokenizer else None
    with console.status(f"reading {args.shards}"):
        stats = collect_stats(args.shards, tokenizer=tokenizer, max_samples=args.max_samples)
    if args.json is not None:
        args.json.write_text(json.dumps(stats, indent=1) + "\n")
    table = Table(title=f"shards: {args.shards}", show_header=False)
    table.add_column("what")
    table.add_column("value", justify="right")
    for name, value in stats.items():
        table.add_row(name.replace("_", " "), _format(value))
    console.print(table)
    return 0


def _format(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, dict):
        return "  ".join(f"{k} {_format(v)}" for k, v in value.items()) or "-"
    if isinstance(value, float):
        return f"{value:,.1f}"
    return f"{value:,}" if isinstance(value, int) else str(value)
