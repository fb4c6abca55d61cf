"""Language decoders: the Mamba-1 LM and the interface any other decoder implements."""

from vl_mamba.decoders.base import LanguageDecoder
from vl_mamba.decoders.config import MambaConfig
from vl_mamba.decoders.mamba_block import LayerState, MambaBlock, MambaMixer, RMSNorm
from vl_mamba.decoders.mamba_lm import MambaDecoder

__all__ = ["LanguageDecoder", "LayerState", "MambaBlock", "MambaConfig", "MambaDecoder", "MambaMixer", "RMSNorm"]
