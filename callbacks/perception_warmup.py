"""``PerceptionWarmup``: before the fit, teach a from-scratch vision encoder to see the synthetic scenes.

The paper's model starts from a pretrained CLIP or SigLIP and keeps it frozen. The built-in demo has no
pretrained weights at hand, so this callback stands in for that pretraining: on fresh synthetic scenes it
trains the encoder, with a linear head on each patch token, to name the object centred in that patch (its
colour and shape, or "empty"). The head is thrown away afterwards; with ``stage: finetune`` the encoder then
stays frozen, as in the paper. The scenes come from their own seed, apart from the training and held-out sets.
Under DDP rank 0 runs the warm-up and broadcasts the encoder's weights to the other ranks.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from data_modules.synthetic_scenes import COLORS, SHAPES, Scene, render_scene, sample_scene
from vl_mamba.encoders.transforms import ImageTransform
from vl_mamba.utils.logging import get_logger

log = get_logger(__name__)

CLASSES: tuple[str, ...] = ("empty", *(f"{c} {s}" for c in COLORS for s in SHAPES))


def cell_labels(scene: Scene, grid: tuple[int, int]) -> Tensor:
    """The class (an index into ``CLASSES``) of each patch of a ``grid`` over the scene, row-major: the object
    whose centre lies in the patch, else 0 ("empty")."""
    rows, cols = grid
    labels = torch.zeros(rows * cols, dtype=torch.long)
    for obj in scene.objects:
        row = min(rows - 1, obj.y * rows // scene.image_size)
        col = min(cols - 1, obj.x * cols // scene.image_size)
        labels[row * cols + col] = CLASSES.index(obj.name)
    return labels


def scene_batch(
    count: int, seed: int, grid: tuple[int, int], transform: ImageTransform, image_size: int, max_objects: int
) -> tuple[Tensor, Tensor]:
    """``count`` scenes drawn from ``seed``: images (count, 3, H, W) and patch labels (count, rows * cols)."""
    images, labels = [], []
    for index in range(count):
        scene = sample_scene(random.Random(f"perception:{seed}:{index}"), image_size, max_objects)
        images.append(transform(render_scene(scene)))
        labels.append(cell_labels(scene, grid))
    return torch.stack(images), torch.stack(labels)


@dataclass(frozen=True)
class WarmupResult:
    """What the warm-up reached on held-out scenes: accuracy over all patches and over the patches that hold
    an object (the share of patches that are empty is what naming every patch "empty" would score)."""

    steps: int
    seconds: float
    patch_accuracy: float
    object_accuracy: float
    empty_share: float


def warm_up_encoder(
    encoder: nn.Module,
    images: Tensor,
    labels: Tensor,
    held_out: tuple[Tensor, Tensor],
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
) -> WarmupResult:
    """Train ``encoder`` (its output (batch, patches, width)) with a linear head to predict ``labels`` per
    patch. The encoder's ``requires_grad`` flags and train/eval mode are restored afterwards."""
    device = next(encoder.parameters()).device
    flags = [p.requires_grad for p in encoder.parameters()]
    was_training = encoder.training
    start = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = nn.Linear(encoder(images[:1].to(device)).shape[-1], len(CLASSES)).to(device)
        encoder.requires_grad_(True).train()
        params = [*encoder.parameters(), *head.parameters()]
        optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
        order = torch.randperm(len(images))
        for step in range(steps):
            at = step * batch_size % len(images)
            index = order[at : at + batch_size]
            logits = head(encoder(images[index].to(device)))
            loss = F.cross_entropy(logits.flatten(0, 1), labels[index].to(device).flatten())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    encoder.train(was_training)
    for p, flag in zip(encoder.parameters(), flags):
        p.requires_grad_(flag)
    predicted = _predict(encoder, head, held_out[0], batch_size, device)
    truth = held_out[1]
    occupied = truth > 0
    return WarmupResult(
        steps=steps,
        seconds=time.perf_counter() - start,
        patch_accuracy=(predicted == truth).float().mean().item(),
        object_accuracy=(predicted == truth)[occupied].float().mean().item(),
        empty_share=1.0 - occupied.float().mean().item(),
    )


@torch.no_grad()
def _predict(encoder: nn.Module, head: nn.Module, images: Tensor, batch_size: int, device: torch.device) -> Tensor:
    was_training = encoder.training
    encoder.eval()
    out = [head(encoder(chunk.to(device))).argmax(-1).cpu() for chunk in images.split(batch_size)]
    encoder.train(was_training)
    return torch.cat(out)


class PerceptionWarmup(pl.Callback):
    """Train the model's vision encoder on synthetic scenes before the first training step (see the module).

    It runs once per run: not again when the fit resumes from a checkpoint (the encoder's weights come from it).
    It runs in single-process fits only (the built-in demo); a distributed fit raises.

    Args:
        steps: optimiser steps.
        batch_size: scenes per step.
        lr: AdamW learning rate of the encoder and the head.
        scenes: distinct training scenes (steps beyond ``scenes / batch_size`` reuse them).
        held_out: scenes on which the result is scored.
        seed: seed of the scenes and of the head's initialisation.
        image_size: side of the drawn scenes (default: the encoder's input side).
        max_objects: at most this many objects per scene (the synthetic dataset's 4 by default).
        resize: how scenes are fitted to the encoder, as in training.
    """

    def __init__(
        self,
        steps: int = 500,
        batch_size: int = 64,
        lr: float = 3e-3,
        scenes: int = 8000,
        held_out: int = 512,
        seed: int = 0,
        image_size: int | None = None,
        max_objects: int = 4,
        resize: str = "squash",
    ) -> None:
        if steps < 1 or batch_size < 1 or scenes < 1 or held_out < 1:
            raise ValueError("steps, batch_size, scenes and held_out must be at least 1")
        self.steps, self.batch_size, self.lr = steps, batch_size, lr
        self.scenes, self.held_out, self.seed = scenes, held_out, seed
        self.image_size, self.max_objects, self.resize = image_size, max_objects, resize
        self.result: WarmupResult | None = None
        self.done = False

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.done or trainer.ckpt_path is not None:
            return
        encoder = pl_module.model.encoder
        if trainer.is_global_zero:
            self._warm_up(encoder)
        if trainer.world_size > 1:
            # One warm-up, on rank 0; the others take its encoder (all ranks must hold the same frozen encoder).
            for tensor in encoder.state_dict().values():
                torch.distributed.broadcast(tensor, src=0)
        self.done = True

    def _warm_up(self, encoder: nn.Module) -> None:
        grid = tuple(encoder.grid)
        config = encoder.data_config
        size = self.image_size or config["input_size"][-1]
        transform = ImageTransform(config, resize=self.resize)
        images, labels = scene_batch(self.scenes, self.seed, grid, transform, size, self.max_objects)
        held_out = scene_batch(self.held_out, self.seed + 1, grid, transform, size, self.max_objects)
        self.result = warm_up_encoder(
            encoder, images, labels, held_out, self.steps, self.batch_size, self.lr, self.seed
        )
        r = self.result
        log.info(
            "perception warm-up: %d steps in %.1f s; held-out patches named %.1f %% (object patches %.1f %%, "
            "empty %.1f %% of all)",
            r.steps, r.seconds, 100 * r.patch_accuracy, 100 * r.object_accuracy, 100 * r.empty_share,
        )

    def state_dict(self) -> dict[str, Any]:
        return {"done": self.done}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.done = bool(state_dict.get("done", False))
