"""Sharded evaluation gives the number one pass gives: every metric's state merges (``merge_state``), and
``compute()`` under a real 2-process gloo group reduces across ranks, including a rank that saw nothing and
acc+ pairs and circular groups split between ranks."""

import json
import os
from collections.abc import Callable

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from _helpers import free_port, join_gloo_group

from vl_mamba.eval.metrics import (
    ExactMatchAccuracy,
    MMBenchCircularAccuracy,
    MMEMetrics,
    POPEMetrics,
    ScienceQAAccuracy,
    VQAAccuracy,
)

# (factory, list of update kwargs); the batches are what ranks would see, and groups are split across them.
CASES: dict[str, tuple[Callable, list[dict]]] = {
    "vqa": (
        lambda: VQAAccuracy(categories=["a", "b"]),
        [
            {"preds": ["cat", "two"], "answers": [["cat"] * 2 + ["x"] * 8, ["2"] * 10], "categories": ["a", "b"]},
            {"preds": ["dog"], "answers": [["dog"] * 3 + ["x"] * 7], "categories": ["a"]},
            {"preds": ["no", "1"], "answers": [["yes"] * 10, ["1"]], "categories": ["b", None]},
        ],
    ),
    "exact": (
        ExactMatchAccuracy,
        [{"preds": ["Yes.", "no"], "targets": ["yes", "yes"]}, {"preds": ["left"], "targets": ["Left"]}],
    ),
    "pope": (
        POPEMetrics,
        [
            {"preds": ["yes", "no"], "labels": ["yes", "yes"], "splits": ["random", "popular"]},
            {"preds": ["No.", "yes", "yes"], "labels": ["no", "no", "yes"], "splits": ["random"] * 2 + ["adversarial"]},
        ],
    ),
    "mme": (
        MMEMetrics,
        [
            {"preds": ["yes", "no"], "labels": ["yes", "yes"], "subtasks": ["color", "OCR"], "images": ["1", "2"]},
            {"preds": ["no", "no"], "labels": ["no", "no"], "subtasks": ["color", "OCR"], "images": ["1", "2"]},
            {"preds": ["yes", "no"], "labels": ["yes", "no"], "subtasks": ["color"] * 2, "images": ["3", "3"]},
        ],
    ),
    "scienceqa": (
        ScienceQAAccuracy,
        [
            {"preds": ["A", "B"], "answers": ["A", "A"], "has_image": [True, False]},
            {"preds": ["The answer is C."], "answers": ["C"], "has_image": [True]},
        ],
    ),
    "mmbench": (
        MMBenchCircularAccuracy,
        [
            {"preds": ["A", "B"], "answers": ["A", "B"], "groups": [1, 2]},
            {"preds": ["C", "C"], "answers": ["C", "D"], "groups": [1, 2]},
            {"preds": ["A"], "answers": ["A"], "groups": [3]},
        ],
    ),
}


def _as_floats(value: torch.Tensor | dict) -> dict[str, float]:
    if isinstance(value, torch.Tensor):
        return {"value": float(value)}
    return {key: float(item) for key, item in value.items()}


def _one_pass(name: str) -> dict[str, float]:
    factory, batches = CASES[name]
    metric = factory()
    for batch in batches:
        metric.update(**batch)
    return _as_floats(metric.compute())


@pytest.mark.parametrize("name", sorted(CASES))
def test_merge_state_equals_one_pass(name):
    factory, batches = CASES[name]
    first, second = factory(), factory()
    first.update(**batches[0])
    for batch in batches[1:]:
        second.update(**batch)
    first.merge_state(second)
    assert _as_floats(first.compute()) == pytest.approx(_one_pass(name))


def _rank_main(rank: int, world_size: int, port: int, out_dir: str) -> None:
    join_gloo_group(rank, world_size, port)
    results = {}
    for name, (factory, batches) in CASES.items():
        # rank 0 takes batch 0, rank 1 the rest: uneven shards, groups split across ranks
        metric = factory()
        for batch in batches[:1] if rank == 0 else batches[1:]:
            metric.update(**batch)
        results[name] = _as_floats(metric.compute())
        # everything on rank 0, nothing on rank 1 (a rank with no questions)
        metric = factory()
        if rank == 0:
            for batch in batches:
                metric.update(**batch)
        results[f"{name}/empty-rank"] = _as_floats(metric.compute())
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(results, f)
    dist.destroy_process_group()


@pytest.mark.filterwarnings("ignore:The ``compute`` method")
def test_ddp_gloo_two_ranks_equal_one_pass(tmp_path):
    if not dist.is_available() or "fork" not in mp.get_all_start_methods():
        pytest.skip("needs torch.distributed and the fork start method")
    # fork: the children inherit the imported modules instead of importing torch again
    mp.start_processes(_rank_main, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True, start_method="fork")
    for rank in range(2):
        results = json.loads((tmp_path / f"rank{rank}.json").read_text())
        for name in CASES:
            expected = _one_pass(name)
            assert results[name] == pytest.approx(expected), (rank, name)
            assert results[f"{name}/empty-rank"] == pytest.approx(expected), (rank, name)
