"""``VLMambaFSDPStrategy``: Lightning's FSDP with the wrap and checkpoint policies taken from the model.

Each Mamba block and each ViT block becomes an FSDP unit (and, when asked, an activation-checkpointed
unit); the classes come from the LightningModule's ``block_classes()``, so the YAML names no classes and
a new encoder or decoder is wrapped correctly the moment it declares its ``block_class``. A part that
checkpoints its own blocks better than a wrapper around each block can (``MambaDecoder``, when it trains: one
tensor kept per block) does so; FSDP's checkpoint wrapper takes the other blocks.
"""

from __future__ import annotations

from typing import Literal

from lightning.pytorch.strategies import FSDPStrategy
from torch import nn


class VLMambaFSDPStrategy(FSDPStrategy):
    """FSDP with per-block wrapping.

    Args:
        wrap_blocks: make each encoder and decoder block an FSDP unit.
        checkpoint_blocks: recompute each block's activations in the backward pass.
        sharding_strategy: ``FULL_SHARD``, ``SHARD_GRAD_OP``, ``HYBRID_SHARD`` or ``NO_SHARD``.
        state_dict_type: ``sharded`` (one file per rank, fast, resumable) or ``full`` (one consolidated file).
        cpu_offload: keep sharded parameters in CPU memory.
        limit_all_gathers: rate-limit all-gathers to bound memory.
    """

    def __init__(
        self,
        wrap_blocks: bool = True,
        checkpoint_blocks: bool = False,
        sharding_strategy: Literal["FULL_SHARD", "SHARD_GRAD_OP", "HYBRID_SHARD", "NO_SHARD"] = "FULL_SHARD",
        state_dict_type: Literal["sharded", "full"] = "sharded",
        cpu_offload: bool = False,
        limit_all_gathers: bool = True,
    ) -> None:
        super().__init__(
            sharding_strategy=sharding_strategy,
            state_dict_type=state_dict_type,
            cpu_offload=cpu_offload,
            limit_all_gathers=limit_all_gathers,
        )
        self.wrap_blocks = wrap_blocks
        self.checkpoint_blocks = checkpoint_blocks

    def _setup_model(self, model: nn.Module) -> nn.Module:
        from torch.distributed.fsdp.wrap import ModuleWrapPolicy

        classes = set(getattr(self.lightning_module, "block_classes", set)())
        if classes and self.wrap_blocks:
            self.kwargs["auto_wrap_policy"] = ModuleWrapPolicy(classes)
        wrapped = self._wrapper_checkpointed(classes)
        if wrapped:
            self._activation_checkpointing_kwargs = {"check_fn": lambda module: isinstance(module, wrapped)}
        return super()._setup_model(model)

    def _wrapper_checkpointed(self, classes: set[type[nn.Module]]) -> tuple[type[nn.Module], ...]:
        """With ``checkpoint_blocks``, switch on the own checkpointing of the parts that have one and return the
        other block classes, for FSDP's checkpoint wrapper; without it, nothing."""
        if not self.checkpoint_blocks:
            return ()
        own = getattr(self.lightning_module, "checkpoint_own_blocks", set)()
        return tuple(classes - own)


def register() -> None:
    """Make ``--trainer.strategy=vl_mamba_fsdp`` name this strategy (class paths work too)."""
    from lightning.pytorch.strategies import StrategyRegistry

    if "vl_mamba_fsdp" not in StrategyRegistry:
        StrategyRegistry.register(
            "vl_mamba_fsdp", VLMambaFSDPStrategy, description="FSDP with per-block wrapping of VL-Mamba"
        )


register()
