"""``VLMambaLitModule``: training of ``VLMamba`` under Lightning.

It receives the encoder, connector and decoder by injection (YAML picks each with ``class_path`` /
``init_args``), owns the tokenizer, decides which parts train (the stage), builds the optimiser and the
schedule, logs losses and skipped-sample counts, saves RNG states with checkpoints, and refuses a
checkpoint of another architecture with one clear line.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from rich.console import Console

from vl_mamba.connectors.base import Connector
from vl_mamba.decoders.base import LanguageDecoder
from vl_mamba.encoders.base import VisionEncoder
from vl_mamba.generation import GenerationConfig, generate_tokens, left_pad
from vl_mamba.model import IGNORE_INDEX, VLMamba, VLMambaOutput
from vl_mamba.tokenizer import TextTokenizer
from vl_mamba.training.optim import param_groups, warmup_cosine
from vl_mamba.training.stages import PARTS, apply_stage, parts_table
from vl_mamba.utils.logging import get_logger

log = get_logger(__name__)


class VLMambaLitModule(pl.LightningModule):
    """VL-Mamba under Lightning.

    Args:
        encoder: vision encoder (e.g. ``vl_mamba.encoders.TimmViTEncoder``).
        connector: multimodal connector (``MLPConnector``, ``VSSMLPConnector``, ``VSSL2Connector``).
        decoder: language model (``vl_mamba.decoders.MambaDecoder``).
        tokenizer: tokenizer.json path, directory or hub id; linked to the data module.
        template: conversation template (``plain``, ``vicuna_v1``, ...); linked to the data module, and used to
            prompt the model in evaluation and chat.
        stage: ``align`` (connector), ``finetune`` (connector + LM), ``full``, or a list of parts/prefixes.
        lr: peak learning rate.
        encoder_lr: learning rate of the encoder when it trains (default: lr).
        connector_lr: learning rate of the connector (default: lr).
        decoder_lr: learning rate of the language model (default: lr).
        weight_decay: AdamW weight decay (never applied to A_log, D, dt biases, norms, biases, embeddings).
        betas: AdamW betas.
        warmup_ratio: fraction of the optimiser steps spent in linear warmup.
        min_lr_ratio: final learning rate of the cosine decay, as a fraction of the peak.
        init_connector_from: a checkpoint (e.g. stage 1's) whose connector weights start this run.
        max_new_tokens: generation length for evaluation and prediction.
    """

    def __init__(
        self,
        encoder: VisionEncoder,
        connector: Connector,
        decoder: LanguageDecoder,
        tokenizer: str = "EleutherAI/gpt-neox-20b",
        template: str = "vicuna_v1",
        stage: str | list[str] = "align",
        lr: float = 1e-3,
        encoder_lr: float | None = None,
        connector_lr: float | None = None,
        decoder_lr: float | None = None,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.999),
        warmup_ratio: float = 0.03,
        min_lr_ratio: float = 0.0,
        init_connector_from: str | None = None,
        max_new_tokens: int = 32,
    ) -> None:
        super().__init__()
        from lightning.pytorch.core.mixins.hparams_mixin import _given_hyperparameters

        # Under LightningCLI the parsed config (class paths included) is saved; otherwise the injected modules
        # are left out so that their weights are not pickled a second time.
        cli_given = _given_hyperparameters.get() is not None
        self.save_hyperparameters(ignore=[] if cli_given else ["encoder", "connector", "decoder"])
        self.tokenizer = TextTokenizer.load(tokenizer)
        rows = decoder.embedding_rows
        if self.tokenizer.base_vocab_size > rows:
            raise ValueError(
                f"the tokenizer has {self.tokenizer.base_vocab_size} ids but the decoder's embedding has {rows} "
                "rows: use the tokenizer the language model was trained with"
            )
        self.model = VLMamba(encoder, connector, decoder, image_token_id=self.tokenizer.image_token_id)
        if init_connector_from is not None:
            load_connector(self.model.connector, init_connector_from)
        apply_stage(self.model, stage)
        self.skipped: Counter[str] = Counter()

    @property
    def num_visual_tokens(self) -> int:
        return self.model.num_visual_tokens

    @property
    def image_config(self) -> dict[str, Any]:
        return self.model.encoder.data_config

    def block_classes(self) -> set[type[torch.nn.Module]]:
        """The repeated blocks of encoder and decoder: what FSDP wraps and checkpoints."""
        return {self.model.encoder.block_class, self.model.decoder.block_class}

    def checkpoint_own_blocks(self) -> set[type[torch.nn.Module]]:
        """Switch on activation checkpointing in the parts that checkpoint their own blocks
        (``checkpoints_own_blocks``) and return those blocks' classes; a strategy's wrapper takes the others.

        Only a part whose parameters all train does so: under FSDP, the decoder's own checkpointing of a frozen
        decoder failed on two GPUs (the backward's recomputation saved other tensors than the forward), so a
        frozen decoder keeps FSDP's wrapper, the path it took before."""
        own = set()
        for part in (self.model.encoder, self.model.decoder):
            if getattr(part, "checkpoints_own_blocks", False) and all(p.requires_grad for p in part.parameters()):
                part.gradient_checkpointing = True
                own.add(part.block_class)
        return own

    def train(self, mode: bool = True) -> VLMambaLitModule:
        """Frozen parts stay in eval mode while the rest trains."""
        super().train(mode)
        if mode:
            for part in PARTS:
                module = getattr(self.model, part)
                if not any(p.requires_grad for p in module.parameters()):
                    module.eval()
        return self

    def on_fit_start(self) -> None:
        if self.trainer.is_global_zero:
            Console(stderr=True).print(parts_table(self.model, title=f"stage {self.hparams.stage!r}"))

    def forward(self, batch: dict[str, Any]) -> VLMambaOutput:
        return self.model(
            batch["input_ids"],
            pixel_values=batch.get("pixel_values"),
            labels=batch.get("labels"),
            attention_mask=batch.get("attention_mask"),
            has_image=batch.get("has_image"),
        )

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        out = self(batch)
        size = batch["input_ids"].shape[0]
        self.log("train/loss", out.loss, prog_bar=True, batch_size=size)
        self.log("train/tokens", float(out.num_tokens), batch_size=size, reduce_fx="sum", on_step=True)
        self._log_skipped(batch)
        return out.loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        out = self(batch)
        self.log("val/loss", out.loss, prog_bar=True, batch_size=batch["input_ids"].shape[0], sync_dist=True)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        out = self(batch)
        self.log("test/loss", out.loss, batch_size=batch["input_ids"].shape[0], sync_dist=True)

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> list[dict[str, Any]]:
        """Answer each sample's first question: the tokens before its first labelled token are the prompt."""
        prompts = []
        for ids, labels, mask in zip(batch["input_ids"], batch["labels"], batch["attention_mask"]):
            labelled = (labels != IGNORE_INDEX).nonzero().flatten()
            end = int(labelled[0]) if len(labelled) else int(mask.sum())
            prompts.append(ids[:end])
        input_ids, attention = left_pad(prompts, self.tokenizer.pad_token_id)
        config = GenerationConfig(max_new_tokens=self.hparams.max_new_tokens)
        tokens = generate_tokens(
            self.model, input_ids, attention, batch.get("pixel_values"), batch["has_image"], config,
            (self.tokenizer.eos_token_id,), self.tokenizer.pad_token_id, self.tokenizer.base_vocab_size,
        )
        keys = batch.get("keys") or [None] * len(prompts)
        results = []
        for key, prompt, row, labels in zip(keys, prompts, tokens.tolist(), batch["labels"]):
            row = row[: row.index(self.tokenizer.eos_token_id)] if self.tokenizer.eos_token_id in row else row
            reference = [t for t in labels.tolist() if t != IGNORE_INDEX and t != self.tokenizer.eos_token_id]
            results.append({
                "key": key,
                "prompt": self.tokenizer.decode(prompt.tolist(), skip_special_tokens=False),
                "prediction": self.tokenizer.decode(row).strip(),
                "reference": self.tokenizer.decode(reference).strip(),
            })
        return results

    def _log_skipped(self, batch: dict[str, Any]) -> None:
        counts = batch.get("skipped") or {}
        for reason, count in counts.items():
            self.skipped[reason] += int(count)
        for reason, total in self.skipped.items():
            self.log(f"data/skipped/{reason}", float(total), on_step=True, on_epoch=False, batch_size=1)

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        part_lr = {
            part: value
            for part, value in (("encoder", hp.encoder_lr), ("connector", hp.connector_lr), ("decoder", hp.decoder_lr))
            if value is not None
        }
        groups = param_groups(self.model.named_parameters(), hp.lr, hp.weight_decay, part_lr)
        # One fused kernel over all parameters: on the CPU a quarter of the per-parameter loop's time (the demo's
        # 60 tensors: 0.47 against 1.8 ms a step).
        fused = self.device.type in ("cuda", "cpu")
        optimizer = torch.optim.AdamW(groups, lr=hp.lr, betas=tuple(hp.betas), fused=fused)
        total = self.trainer.estimated_stepping_batches
        if not math.isfinite(total):
            raise ValueError(
                "the number of optimiser steps is unknown: set trainer.max_steps, or give the data an epoch length"
            )
        warmup = math.ceil(hp.warmup_ratio * total)
        scheduler = warmup_cosine(optimizer, int(total), warmup, hp.min_lr_ratio)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["rng_states"] = {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": _numpy_state_to_tensors(np.random.get_state()),
            "python": random.getstate(),
        }
        checkpoint["skipped_samples"] = dict(self.skipped)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("state_dict")
        if state:
            check_architecture(self.state_dict(), state)
        rng = checkpoint.get("rng_states")
        if rng:
            torch.set_rng_state(rng["torch"])
            if rng["cuda"] and torch.cuda.is_available() and len(rng["cuda"]) == torch.cuda.device_count():
                torch.cuda.set_rng_state_all(rng["cuda"])
            np.random.set_state(_numpy_state_from_tensors(rng["numpy"]))
            random.setstate(rng["python"])
        self.skipped = Counter(checkpoint.get("skipped_samples", {}))


def _numpy_state_to_tensors(state: tuple) -> dict[str, Any]:
    """NumPy's RNG state in types that ``torch.load(weights_only=True)`` accepts."""
    name, keys, pos, has_gauss, cached = state
    return {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "cached": float(cached)}


def _numpy_state_from_tensors(state: dict[str, Any]) -> tuple:
    keys = state["keys"].numpy().astype(np.uint32)
    return state["name"], keys, state["pos"], state["has_gauss"], state["cached"]


def check_architecture(own: dict[str, torch.Tensor], loaded: dict[str, torch.Tensor]) -> None:
    """One clear error when a checkpoint's tensors do not fit this model."""
    missing = sorted(set(own) - set(loaded))
    unexpected = sorted(set(loaded) - set(own))
    wrong = sorted(k for k in set(own) & set(loaded) if tuple(own[k].shape) != tuple(loaded[k].shape))
    if not (missing or unexpected or wrong):
        return
    detail = []
    if wrong:
        k = wrong[0]
        detail.append(f"{len(wrong)} shapes differ (e.g. {k}: {tuple(loaded[k].shape)} vs {tuple(own[k].shape)})")
    if missing:
        detail.append(f"{len(missing)} tensors missing (e.g. {missing[0]})")
    if unexpected:
        detail.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
    raise ValueError("the checkpoint is of another architecture than the configured model: " + "; ".join(detail))


def load_connector(connector: Connector, path: str | Path) -> None:
    """Load connector weights from a Lightning checkpoint, a VLMamba state dict or a connector state dict."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"init_connector_from: no file at {path} (a sharded checkpoint directory must be consolidated first: "
            "python -m lightning.pytorch.utilities.consolidate_checkpoint DIR)"
        )
    raw = torch.load(path, map_location="cpu", weights_only=True)
    state = raw.get("state_dict", raw)
    for prefix in ("model.connector.", "connector."):
        sub = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        if sub:
            break
    else:
        sub = state  # a bare connector state dict
    own = connector.state_dict()
    check_architecture(own, sub)
    connector.load_state_dict(sub)
    log.info("connector weights loaded from %s (%d tensors)", path, len(sub))
