"""Which parts of the model train in each stage, and the table that says so at the start of a run.

Stages: ``align`` (stage 1: the connector only), ``finetune`` (stage 2: connector and language model),
``full`` (everything), or an explicit list of part names or parameter-name prefixes
(e.g. ``[connector, decoder.backbone.layers.63]``).
"""

from __future__ import annotations

from collections import Counter

from rich.table import Table
from torch import nn

STAGES: dict[str, tuple[str, ...]] = {
    "align": ("connector",),
    "finetune": ("connector", "decoder"),
    "full": ("encoder", "connector", "decoder"),
}
PARTS = ("encoder", "connector", "decoder")


def trainable_prefixes(stage: str | list[str]) -> tuple[str, ...]:
    """Parameter-name prefixes (relative to ``VLMamba``) that train in ``stage``."""
    if isinstance(stage, str):
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}: use one of {sorted(STAGES)} or a list of parts/prefixes")
        return STAGES[stage]
    if not stage:
        raise ValueError("stage is an empty list: nothing would train")
    return tuple(stage)


def apply_stage(model: nn.Module, stage: str | list[str]) -> int:
    """Set requires_grad by stage; returns the number of trainable parameters. Raises if nothing trains."""
    prefixes = trainable_prefixes(stage)
    names = [name for name, _ in model.named_parameters()]
    unmatched = [p for p in prefixes if not any(_matches(n, p) for n in names)]
    if unmatched:
        raise ValueError(f"stage {stage!r}: no parameter matches {unmatched}; parts are {list(PARTS)}")
    total = 0
    for name, param in model.named_parameters():
        param.requires_grad_(any(_matches(name, p) for p in prefixes))
        total += param.numel() if param.requires_grad else 0
    if total == 0:
        raise ValueError(f"stage {stage!r} leaves nothing to train")
    return total


def _matches(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def parts_table(model: nn.Module, title: str = "model parts") -> Table:
    """A rich table with each part's parameter count, trainable count and dtypes."""
    table = Table(title=title)
    for column in ("part", "parameters", "trainable", "frozen", "dtype"):
        table.add_column(column, justify="right" if column in ("parameters", "trainable", "frozen") else "left")
    grand = Counter()
    for part in PARTS:
        module = getattr(model, part, None)
        if module is None:
            continue
        seen, counts, dtypes = set(), Counter(), Counter()
        for param in module.parameters():
            if id(param) in seen:
                continue
            seen.add(id(param))
            counts["all"] += param.numel()
            counts["trainable" if param.requires_grad else "frozen"] += param.numel()
            dtypes[str(param.dtype).replace("torch.", "")] += param.numel()
        grand.update(counts)
        status = "trainable" if counts["frozen"] == 0 else "frozen" if counts["trainable"] == 0 else "partly"
        table.add_row(
            f"{part} ({type(module).__name__}, {status})", _human(counts["all"]), _human(counts["trainable"]),
            _human(counts["frozen"]), ", ".join(sorted(dtypes)),
        )
    table.add_row("total", _human(grand["all"]), _human(grand["trainable"]), _human(grand["frozen"]), "")
    return table


def _human(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return str(n)
