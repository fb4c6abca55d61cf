"""Training under Lightning: the LightningModule, stages, optimiser groups, the FSDP strategy and the CLI."""

from vl_mamba.training.lit_module import VLMambaLitModule
from vl_mamba.training.strategies import VLMambaFSDPStrategy

__all__ = ["VLMambaFSDPStrategy", "VLMambaLitModule"]
