"""Running trials: each in its own ``python -m vl_mamba ...`` subprocess, one after another or N at a time
(each with its own GPUs through ``CUDA_VISIBLE_DEVICES``). A trial's folder gets ``command.sh`` (the exact
command), ``stdout.log`` and ``stderr.log``; on success ``DONE.json``, the marker that makes a rerun skip the
trial; on failure ``FAILED.json`` (return code) and ``error.log`` (the last lines of stderr), and the sweep
goes on. Under ``srun`` (a SLURM array task of several processes) every rank runs the trial and rank 0 alone
writes the markers."""

from __future__ import annotations

import json
import os
import queue
import shlex
import subprocess
import sys
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import vl_mamba
from vl_mamba.sweeps.trials import Trial
from vl_mamba.utils.logging import get_logger, global_rank

log = get_logger(__name__)

DONE = "DONE.json"
FAILED = "FAILED.json"
ERROR_LOG = "error.log"
ERROR_LINES = 40
PROJECT_ROOT = Path(vl_mamba.__file__).resolve().parent.parent


@dataclass
class TrialResult:
    """What became of one trial."""

    name: str
    status: str
    """``done``, ``failed``, ``skipped`` (finished before) or ``pending`` (not run)."""
    returncode: int | None = None
    duration_s: float | None = None


def trial_command(trial: Trial) -> list[str]:
    """The subprocess command of a trial: this Python running ``-m vl_mamba`` with the trial's arguments."""
    return [sys.executable, "-m", "vl_mamba", *trial.args]


def trial_status(trial: Trial) -> TrialResult:
    """The trial's state from its markers: ``done``, ``failed`` or ``pending``."""
    for marker, status in ((DONE, "done"), (FAILED, "failed")):
        path = trial.directory / marker
        if path.is_file():
            record = json.loads(path.read_text())
            return TrialResult(trial.name, status, record.get("returncode"), record.get("duration_s"))
    return TrialResult(trial.name, "pending")


def gpu_slots(gpus: list[str] | None, parallel: int) -> list[list[str] | None]:
    """The GPUs of each of ``parallel`` worker slots: ``gpus`` cut into contiguous, nearly equal groups.

    Args:
        gpus: device ids to share out, or None to leave ``CUDA_VISIBLE_DEVICES`` alone.
        parallel: number of trials at once.
    """
    if parallel < 1:
        raise ValueError(f"parallel must be at least 1, got {parallel}")
    if not gpus:
        return [None] * parallel
    if parallel > len(gpus):
        raise ValueError(f"{parallel} trials at once need at least {parallel} GPUs; got {gpus}")
    return [gpus[i * len(gpus) // parallel : (i + 1) * len(gpus) // parallel] for i in range(parallel)]


def run_trial(
    trial: Trial,
    gpus: list[str] | None = None,
    timeout_s: float | None = None,
    threads: int | None = None,
) -> TrialResult:
    """Run one trial unless its ``DONE.json`` exists; never raises for a failing run.

    Args:
        trial: the trial.
        gpus: its devices: sets ``CUDA_VISIBLE_DEVICES`` and appends ``--trainer.devices=<count>``.
        timeout_s: stop the run after this many seconds (it is then reported as failed).
        threads: ``OMP_NUM_THREADS`` of the run, unless the environment sets it already.
    """
    done = trial.directory / DONE
    if done.is_file():
        record = json.loads(done.read_text())
        if record.get("args") != list(trial.args):
            log.warning("%s finished before with other arguments; delete %s to run it again", trial.name, done)
        return TrialResult(trial.name, "skipped", record.get("returncode"), record.get("duration_s"))
    rank = global_rank()
    suffix = "" if rank == 0 else f".rank{rank}"  # under srun, every rank captures its own output
    command = trial_command(trial) + ([f"--trainer.devices={len(gpus)}"] if gpus else [])
    trial.directory.mkdir(parents=True, exist_ok=True)
    if rank == 0:
        for stale in (FAILED, ERROR_LOG):
            (trial.directory / stale).unlink(missing_ok=True)
        (trial.directory / "command.sh").write_text(_command_script(command, gpus))
    log.info("%s: started%s", trial.name, f" on GPUs {','.join(gpus)}" if gpus else "")
    stderr_path = trial.directory / f"stderr{suffix}.log"
    start = time.monotonic()
    returncode, timed_out = _execute(command, trial.directory / f"stdout{suffix}.log", stderr_path,
                                     _environment(gpus, threads), timeout_s)
    result = TrialResult(trial.name, "done" if returncode == 0 and not timed_out else "failed", returncode,
                         round(time.monotonic() - start, 2))
    if rank == 0:
        _write_markers(trial, result, gpus, stderr_path, timed_out, timeout_s)
    if result.status == "done":
        log.info("%s: done in %.1f s", trial.name, result.duration_s)
    else:
        last = next((line for line in reversed(_tail(stderr_path, ERROR_LINES).splitlines()) if line.strip()), "")
        log.error("%s: failed (%s) after %.1f s: %s; see %s", trial.name,
                  "timed out" if timed_out else f"return code {returncode}", result.duration_s, last.strip()[:200],
                  trial.directory / ERROR_LOG)
    return result


def _execute(
    command: list[str], stdout_path: Path, stderr_path: Path, env: dict[str, str], timeout_s: float | None
) -> tuple[int, bool]:
    """Run ``command`` with its output in the two files; returns the return code and whether it timed out."""
    with open(stdout_path, "w") as stdout, open(stderr_path, "w") as stderr:
        process = subprocess.Popen(command, stdout=stdout, stderr=stderr, env=env)
        try:
            return process.wait(timeout=timeout_s), False
        except subprocess.TimeoutExpired:
            process.kill()
            return process.wait(), True
        except BaseException:  # Ctrl-C: no orphan keeps training
            process.kill()
            process.wait()
            raise


def _write_markers(
    trial: Trial,
    result: TrialResult,
    gpus: list[str] | None,
    stderr_path: Path,
    timed_out: bool,
    timeout_s: float | None,
) -> None:
    """``DONE.json`` after a success; ``FAILED.json`` and ``error.log`` (the end of stderr) after a failure."""
    record = {"returncode": result.returncode, "duration_s": result.duration_s,
              "finished": time.strftime("%Y-%m-%d %H:%M:%S"), "args": list(trial.args), "gpus": gpus}
    if result.status == "done":
        (trial.directory / DONE).write_text(json.dumps(record, indent=1) + "\n")
        return
    record["timed_out"] = timed_out
    (trial.directory / FAILED).write_text(json.dumps(record, indent=1) + "\n")
    tail = _tail(stderr_path, ERROR_LINES)
    if timed_out:
        tail += f"\n[stopped after the {timeout_s} s timeout]\n"
    (trial.directory / ERROR_LOG).write_text(tail)


def run_trials(
    trials: list[Trial],
    parallel: int = 1,
    gpus: list[str] | None = None,
    timeout_s: float | None = None,
) -> list[TrialResult]:
    """Run the trials, ``parallel`` at a time, each slot on its share of ``gpus``; results in trial order.

    Trials at once share the CPU cores: each gets ``cores // parallel`` threads (``OMP_NUM_THREADS``) unless the
    environment sets that already.
    """
    slots = gpu_slots(gpus, parallel)
    if parallel == 1:
        return [run_trial(t, slots[0], timeout_s) for t in trials]
    threads = max(1, (os.cpu_count() or 1) // parallel)
    free: queue.Queue[list[str] | None] = queue.Queue()
    for slot in slots:
        free.put(slot)

    def work(trial: Trial) -> TrialResult:
        """Run ``trial`` on the next free slot's GPUs."""
        slot = free.get()
        try:
            return run_trial(trial, slot, timeout_s, threads)
        finally:
            free.put(slot)

    with ThreadPoolExecutor(max_workers=parallel) as pool:
        return list(pool.map(work, trials))


def _environment(gpus: list[str] | None, threads: int | None) -> dict[str, str]:
    """This process's environment, with the project importable, the trial's GPUs visible and its thread count."""
    env = dict(os.environ)
    if threads is not None:
        env.setdefault("OMP_NUM_THREADS", str(threads))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PROJECT_ROOT), env.get("PYTHONPATH")) if p)
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
    return env


def _command_script(command: list[str], gpus: list[str] | None) -> str:
    """A shell script that reruns the trial by hand from the same directory."""
    prefix = f"CUDA_VISIBLE_DEVICES={','.join(gpus)} " if gpus else ""
    return f"#!/bin/sh\ncd {shlex.quote(os.getcwd())}\n{prefix}{shlex.join(command)}\n"


def _tail(path: Path, lines: int) -> str:
    """The last ``lines`` lines of a text file."""
    with open(path, errors="replace") as f:
        return "".join(deque(f, maxlen=lines))
