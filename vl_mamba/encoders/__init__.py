"""Vision encoders: the interface, the timm ViT encoder (CLIP, SigLIP, any timm ViT), a small convolutional
encoder for training from scratch, and image preprocessing."""

from vl_mamba.encoders.base import VisionEncoder
from vl_mamba.encoders.conv import ConvEncoder
from vl_mamba.encoders.timm_vit import TimmViTEncoder, save_timm_checkpoint
from vl_mamba.encoders.transforms import ImageTransform, to_rgb

__all__ = ["ConvEncoder", "ImageTransform", "TimmViTEncoder", "VisionEncoder", "save_timm_checkpoint", "to_rgb"]
