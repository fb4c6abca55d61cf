"""The demo's perception warm-up: patch labels of a scene, the encoder really learns to name objects, and the
callback runs once per run (on rank 0 under DDP, its encoder then shared with every rank)."""

from __future__ import annotations

import json
import os
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from _helpers import free_port, join_gloo_group

from callbacks.perception_warmup import CLASSES, PerceptionWarmup, cell_labels, scene_batch, warm_up_encoder
from data_modules.synthetic_scenes import Scene, SceneObject
from vl_mamba.encoders import ConvEncoder
from vl_mamba.encoders.transforms import ImageTransform


def _object(shape: str, color: str, x: int, y: int) -> SceneObject:
    return SceneObject(shape=shape, color=color, size="small", x=x, y=y, r=3)


def test_cell_labels_name_the_object_centred_in_each_patch() -> None:
    scene = Scene(image_size=32, gap=2, objects=(_object("circle", "red", 4, 4), _object("square", "blue", 30, 17)))
    labels = cell_labels(scene, (4, 4))
    expected = torch.zeros(16, dtype=torch.long)
    expected[0] = CLASSES.index("red circle")
    expected[2 * 4 + 3] = CLASSES.index("blue square")  # row 17 * 4 // 32 = 2, column 30 * 4 // 32 = 3
    assert torch.equal(labels, expected)
    halves = torch.tensor([CLASSES.index("red circle"), CLASSES.index("blue square")])
    assert torch.equal(cell_labels(scene, (1, 2)), halves)


def test_warm_up_teaches_a_small_encoder_to_name_objects() -> None:
    torch.manual_seed(0)
    encoder = ConvEncoder(img_size=32, channels=(16, 32, 64), frozen=True).eval()
    transform = ImageTransform(encoder.data_config, resize="squash")
    images, labels = scene_batch(4096, 0, encoder.grid, transform, 32, 4)
    held_out = scene_batch(256, 1, encoder.grid, transform, 32, 4)
    before = [p.detach().clone() for p in encoder.parameters()]
    result = warm_up_encoder(encoder, images, labels, held_out, steps=300, batch_size=64, lr=3e-3, seed=0)
    # 15 kinds of object: naming them at random scores about 7 %.
    assert result.object_accuracy > 0.5, result
    assert result.patch_accuracy > result.empty_share, result
    assert any(not torch.equal(a, b) for a, b in zip(before, encoder.parameters()))
    assert not any(p.requires_grad for p in encoder.parameters())  # flags and mode as they were
    assert not encoder.training


def _module() -> SimpleNamespace:
    return SimpleNamespace(model=SimpleNamespace(encoder=ConvEncoder(img_size=16, channels=(8, 16))))


def test_callback_runs_once_and_not_on_resume() -> None:
    callback = PerceptionWarmup(steps=2, batch_size=4, scenes=8, held_out=4)
    module = _module()
    weights = [p.detach().clone() for p in module.model.encoder.parameters()]
    callback.on_fit_start(SimpleNamespace(ckpt_path="last.ckpt", world_size=1, is_global_zero=True), module)
    assert callback.result is None and not callback.done
    assert all(torch.equal(a, b) for a, b in zip(weights, module.model.encoder.parameters()))

    callback.on_fit_start(SimpleNamespace(ckpt_path=None, world_size=1, is_global_zero=True), module)
    assert callback.done and callback.result is not None and callback.result.steps == 2
    restored = PerceptionWarmup()
    restored.load_state_dict(callback.state_dict())
    assert restored.done


def _rank_main(rank: int, port: int, out_dir: str) -> None:
    join_gloo_group(rank, 2, port)
    torch.manual_seed(rank)  # each rank starts from other weights, as unsynchronised frozen weights would
    callback = PerceptionWarmup(steps=3, batch_size=4, scenes=8, held_out=4)
    module = _module()
    callback.on_fit_start(SimpleNamespace(ckpt_path=None, world_size=2, is_global_zero=rank == 0), module)
    state = {k: v.tolist() for k, v in module.model.encoder.state_dict().items()}
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump({"done": callback.done, "warmed": callback.result is not None, "state": state}, f)
    dist.destroy_process_group()


def test_callback_on_two_ranks_warms_up_once_and_shares_the_encoder(tmp_path) -> None:
    """Under DDP rank 0 warms the encoder up and every rank ends with its weights (gloo, two processes)."""
    if not dist.is_available() or "fork" not in mp.get_all_start_methods():
        pytest.skip("needs torch.distributed and the fork start method")
    mp.start_processes(_rank_main, args=(free_port(), str(tmp_path)), nprocs=2, join=True, start_method="fork")
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["done"] for r in ranks] == [True, True]
    assert [r["warmed"] for r in ranks] == [True, False]
    assert ranks[0]["state"] == ranks[1]["state"]


def test_callback_refuses_bad_settings() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        PerceptionWarmup(steps=0)
