"""Shared pieces of the benchmark scripts: CUDA-event timing with warm-up and medians, relative error
against a reference, peak memory, a rich table printed last and the JSON results file."""

from __future__ import annotations

import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table


def time_cuda(fn: Callable[[], Any], warmup: int = 3, repeats: int = 10) -> dict[str, float]:
    """Median and spread of ``fn`` in milliseconds, timed with CUDA events after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return {"median_ms": statistics.median(times), "min_ms": min(times), "max_ms": max(times)}


def sleep_cycles(ms: float) -> int:
    """Cycles of ``torch.cuda._sleep`` that hold the GPU for about ``ms`` milliseconds."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    torch.cuda._sleep(10_000_000)
    end.record()
    torch.cuda.synchronize()
    return int(10_000_000 * ms / start.elapsed_time(end))


def held_call(fn: Callable[[], Any], cycles: int) -> tuple[Any, float, float]:
    """``fn``'s result, the GPU's milliseconds for its work and the host's milliseconds to issue it, issued while a
    sleep of ``cycles`` holds the GPU: the host never waits for earlier work (unless ``fn`` itself synchronises),
    and the GPU runs ``fn``'s kernels back to back."""
    torch.cuda.synchronize()
    torch.cuda._sleep(cycles)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    t0 = time.perf_counter()
    result = fn()
    host_ms = (time.perf_counter() - t0) * 1e3
    end.record()
    torch.cuda.synchronize()
    return result, start.elapsed_time(end), host_ms


def held_medians(fn: Callable[[], Any], cycles: int, repeats: int = 5) -> tuple[float, float]:
    """Medians over ``repeats`` ``held_call``s of ``fn``: the GPU's milliseconds and the host's milliseconds."""
    calls = [held_call(fn, cycles) for _ in range(repeats)]
    return statistics.median(c[1] for c in calls), statistics.median(c[2] for c in calls)


def profile_cuda(fn: Callable[[], Any], warmup: int = 3, stacks: bool = False) -> torch.profiler.profile:
    """A torch.profiler record (CUDA kernels and host calls) of one call of ``fn``, after ``warmup`` calls; with
    ``stacks``, also the input shapes and Python stacks of the host calls."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    with torch.profiler.profile(
        activities=[torch.profiler.ProfilerActivity.CUDA, torch.profiler.ProfilerActivity.CPU],
        record_shapes=stacks, with_stack=stacks,
        # verbose: the events keep their Python stacks (without it they come back empty)
        experimental_config=torch._C._profiler._ExperimentalConfig(verbose=True) if stacks else None,
    ) as prof:
        fn()
        torch.cuda.synchronize()
    return prof


def time_cpu(fn: Callable[[], Any], warmup: int = 1, repeats: int = 5) -> dict[str, float]:
    """Median and spread of ``fn`` in milliseconds on the host clock."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return {"median_ms": statistics.median(times), "min_ms": min(times), "max_ms": max(times)}


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref|| in float64."""
    out, ref = out.detach().double(), ref.detach().double()
    return float((out - ref).norm() / ref.norm().clamp_min(1e-300))


def peak_gib() -> float:
    return torch.cuda.max_memory_allocated() / 2**30


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {
        "torch": torch.__version__, "python": platform.python_version(), "date": time.strftime("%Y-%m-%d"),
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, gpus=torch.cuda.device_count(), gpu_mem_gib=round(props.total_memory / 2**30, 1))
    return info


def report(
    title: str, rows: list[dict[str, Any]], columns: list[str], out: str | Path | None, quiet: bool = False
) -> None:
    """Write ``{"machine": ..., "rows": rows}`` as JSON (when ``out``) and print a table of ``columns`` last."""
    if out is not None:
        path = Path(out)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"title": title, "machine": machine(), "rows": rows}, indent=2, default=str))
    if quiet:
        return
    table = Table(title=title)
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*[_fmt(row.get(c, "")) for c in columns])
    Console(width=200).print(table)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
