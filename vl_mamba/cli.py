"""The ``vl-mamba`` command.

``fit``, ``validate``, ``test`` and ``predict`` go to the project's LightningCLI; the other subcommands
(``data``, ``chat``, ``eval``, ``sweep``, ``plot``) are small programs of their own, imported only when used.
"""

from __future__ import annotations

import importlib
import sys

# subcommand -> "module:function"; each function takes the remaining arguments and returns an exit code.
COMMANDS: dict[str, tuple[str, str]] = {
    "data": ("data_modules.commands:main", "data tools: convert-llava, stats, synthetic"),
    "chat": ("vl_mamba.commands.chat:main", "ask a trained model about an image"),
    "eval": ("vl_mamba.commands.evaluate:main", "score a trained model on VQA benchmarks"),
    "sweep": ("vl_mamba.sweeps.command:main", "run a grid of trials (configs/sweeps/*.yaml), collect results"),
    "plot": ("vl_mamba.plotting.command:main", "training curves and benchmark tables of a run folder as PNGs"),
}

LIGHTNING_SUBCOMMANDS = ("fit", "validate", "test", "predict")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in COMMANDS:
        target, _ = COMMANDS[argv[0]]
        module, function = target.split(":")
        return int(getattr(importlib.import_module(module), function)(argv[1:]) or 0)
    if argv and argv[0] in ("-h", "--help") or not argv:
        _print_help()
        return 0
    from vl_mamba.training.lightning_cli import run_lightning_cli

    run_lightning_cli(argv)
    return 0


def _print_help() -> None:
    lines = ["usage: vl-mamba {fit,validate,test,predict," + ",".join(COMMANDS) + "} ...", ""]
    lines += [f"  {name:<10} LightningCLI {name} (see: vl-mamba {name} --help)" for name in LIGHTNING_SUBCOMMANDS]
    lines += [f"  {name:<10} {help_text}" for name, (_, help_text) in COMMANDS.items()]
    sys.stdout.write("\n".join(lines) + "\n")
