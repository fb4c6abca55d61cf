"""Loading a trained model for inference: from a checkpoint that ``vl-mamba fit`` wrote (its saved config
rebuilds the model), or from configs plus a checkpoint; on the GPU in bfloat16 when there is one."""

from __future__ import annotations

from pathlib import Path

import torch

from vl_mamba.training.lit_module import VLMambaLitModule


def load_module(ckpt: str | None, configs: list[str] | None = None, device: str | None = None) -> VLMambaLitModule:
    """The LightningModule with its weights, in eval mode.

    Args:
        ckpt: a Lightning checkpoint file (a sharded FSDP checkpoint directory must be consolidated first).
        configs: ``--config`` files that define the model; needed only for checkpoints without a saved config.
        device: ``cuda``, ``cpu``...; by default the GPU when there is one.
    """
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if ckpt is not None and Path(ckpt).is_dir():
        raise ValueError(
            f"{ckpt} is a sharded checkpoint directory: consolidate it first with "
            "python -m lightning.pytorch.utilities.consolidate_checkpoint"
        )
    if configs:
        from vl_mamba.training.lightning_cli import build_cli

        args = [x for c in configs for x in ("--config", c)]
        module = build_cli(args + ["--trainer.logger=false"], run=False).model
        if ckpt is not None:
            state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
            module.load_state_dict(state)
    elif ckpt is not None:
        module = VLMambaLitModule.load_from_checkpoint(ckpt, map_location="cpu", weights_only=False)
    else:
        raise ValueError("give a checkpoint (--ckpt), configs (--config), or both")
    module.eval()
    if device.startswith("cuda"):
        module = module.to(device=device, dtype=torch.bfloat16)
    else:
        module = module.to(device)
    return module
