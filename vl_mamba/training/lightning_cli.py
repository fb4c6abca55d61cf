"""The project's LightningCLI: ``vl-mamba fit|validate|test|predict --config a.yaml [--config b.yaml] ...``.

Configs compose (later files win) and are parsed in omegaconf mode, so YAML may interpolate ``${...}``.
Values shared by model and data live in one place: the model's tokenizer is linked to the data module, and
the encoder's preprocessing and number of visual tokens are linked after the model exists. The full
resolved config is saved beside the checkpoints of every run.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import torch
from jsonargparse import namespace_to_dict
from lightning.pytorch import LightningDataModule
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from vl_mamba.training.lit_module import VLMambaLitModule

ARCHITECTURE_KEYS = ("encoder", "connector", "decoder", "tokenizer", "template")


class VLMambaCLI(LightningCLI):
    def _parse_ckpt_path(self) -> None:
        """With ``--ckpt_path``, the configured architecture must be the checkpoint's; training settings
        (learning rates, stage, ...) come from the configuration, not silently from the checkpoint."""
        subcommand = self.config.get("subcommand")
        if not subcommand:
            return
        ckpt_path = self.config[subcommand].get("ckpt_path")
        if not ckpt_path or not Path(ckpt_path).is_file():
            return
        saved = torch.load(ckpt_path, map_location="cpu", weights_only=True).get("hyper_parameters") or {}
        configured = namespace_to_dict(self.config[subcommand]["model"])
        differences = [
            line for key in ARCHITECTURE_KEYS if key in saved
            for line in _differences(saved[key], configured.get(key), key)
        ]
        if differences:
            raise ValueError(
                "the checkpoint is of another architecture than the configured model: "
                + "; ".join(differences[:4]) + (" ..." if len(differences) > 4 else "")
            )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("model.tokenizer", "data.init_args.tokenizer")
        parser.link_arguments("model.template", "data.init_args.template")
        parser.link_arguments(
            "model", "data.init_args.image_config", compute_fn=_image_config, apply_on="instantiate"
        )
        parser.link_arguments(
            "model", "data.init_args.num_visual_tokens", compute_fn=_num_visual_tokens, apply_on="instantiate"
        )


def _differences(saved: Any, configured: Any, path: str) -> list[str]:
    """Where two nested config values differ, as ``path: checkpoint X, config Y`` lines."""
    if isinstance(saved, dict) and isinstance(configured, dict):
        keys = sorted(set(saved) | set(configured))
        return [line for k in keys for line in _differences(saved.get(k), configured.get(k), f"{path}.{k}")]
    if saved != configured and not (isinstance(saved, (list, tuple)) and list(saved) == list(configured or [])):
        return [f"{path}: checkpoint {saved!r}, config {configured!r}"]
    return []


def _image_config(model: VLMambaLitModule) -> dict:
    return model.image_config


def _num_visual_tokens(model: VLMambaLitModule) -> int:
    return model.num_visual_tokens


def build_cli(argv: list[str] | None = None, run: bool = True) -> VLMambaCLI:
    """The CLI over ``argv`` (None: the command line)."""
    return VLMambaCLI(
        VLMambaLitModule,
        LightningDataModule,
        subclass_mode_data=True,
        args=None if argv == sys.argv[1:] else argv,
        run=run,
        parser_kwargs={"parser_mode": "omegaconf"},
        save_config_kwargs={"overwrite": True},
    )


def run_lightning_cli(argv: list[str]) -> None:
    """Run the CLI; mistakes in the configuration end with one line on stderr (VL_MAMBA_DEBUG=1: traceback)."""
    try:
        build_cli(argv)
    except (ValueError, FileNotFoundError, TypeError) as error:
        if os.environ.get("VL_MAMBA_DEBUG"):
            raise
        sys.stderr.write(f"vl-mamba: error: {_root_cause(error)}\n")
        raise SystemExit(2) from None


def _root_cause(error: BaseException) -> str:
    while error.__cause__ is not None and isinstance(error.__cause__, (ValueError, FileNotFoundError, TypeError)):
        error = error.__cause__
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
