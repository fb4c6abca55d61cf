"""VL-Mamba: a multimodal LLM whose language model is a Mamba state-space model, fed visual tokens by a 2D
vision selective-scan connector. The model code (this package) imports no training framework."""

from vl_mamba.model import IGNORE_INDEX, VLMamba, VLMambaOutput

__version__ = "0.1.0"

__all__ = ["IGNORE_INDEX", "VLMamba", "VLMambaOutput", "__version__"]
