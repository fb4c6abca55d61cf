"""``ImageTransform``: PIL image -> normalised tensor, as an encoder's ``data_config`` asks.

Any PIL mode comes in (RGBA, palette, CMYK, greyscale, 16-bit and float greyscale) and leaves as RGB. The
image is fitted to the encoder's square input in one of three ways: ``pad`` (LLaVA-1.5: pad to a square
with the mean colour, then resize: nothing is cut off), ``squash`` (resize, ignoring the aspect ratio), or
``crop`` (resize the short side, centre crop).
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch
from PIL import Image
from torch import Tensor

_INTERPOLATION = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
    "lanczos": Image.Resampling.LANCZOS,
}


class ImageTransform:
    """Callable PIL image -> (3, H, W) float tensor.

    Args:
        data_config: ``input_size`` (3, H, W), ``mean``, ``std`` and ``interpolation`` (an encoder's
            ``data_config``).
        resize: ``pad``, ``squash`` or ``crop``.
    """

    def __init__(self, data_config: dict[str, Any], resize: Literal["pad", "squash", "crop"] = "pad") -> None:
        if resize not in ("pad", "squash", "crop"):
            raise ValueError(f"resize must be 'pad', 'squash' or 'crop', got {resize!r}")
        _, self.height, self.width = data_config["input_size"]
        self.mean = tuple(float(m) for m in data_config.get("mean", (0.5, 0.5, 0.5)))
        self.std = tuple(float(s) for s in data_config.get("std", (0.5, 0.5, 0.5)))
        self.interpolation = _INTERPOLATION[data_config.get("interpolation", "bicubic")]
        self.resize = resize

    def __call__(self, image: Image.Image) -> Tensor:
        image = to_rgb(image)
        if self.resize == "pad":
            image = _pad_to_square(image, tuple(int(round(m * 255)) for m in self.mean))
            image = image.resize((self.width, self.height), self.interpolation)
        elif self.resize == "squash":
            image = image.resize((self.width, self.height), self.interpolation)
        else:
            scale = max(self.width / image.width, self.height / image.height)
            size = (max(self.width, round(image.width * scale)), max(self.height, round(image.height * scale)))
            image = image.resize(size, self.interpolation)
            left, top = (size[0] - self.width) // 2, (size[1] - self.height) // 2
            image = image.crop((left, top, left + self.width, top + self.height))
        array = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
        mean = torch.tensor(self.mean).view(3, 1, 1)
        std = torch.tensor(self.std).view(3, 1, 1)
        return (array - mean) / std

    def __repr__(self) -> str:
        return f"ImageTransform({self.height}x{self.width}, resize={self.resize}, mean={self.mean}, std={self.std})"


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode to 8-bit RGB; 16-bit and float greyscale are rescaled by their range, alpha goes on white."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        array = np.asarray(image, dtype=np.float64)
        lo, hi = float(array.min()), float(array.max())
        array = (array - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(array)
        image = Image.fromarray(array.astype(np.uint8), mode="L")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _pad_to_square(image: Image.Image, fill: tuple[int, ...]) -> Image.Image:
    w, h = image.size
    if w == h:
        return image
    side = max(w, h)
    canvas = Image.new("RGB", (side, side), fill)
    canvas.paste(image, ((side - w) // 2, (side - h) // 2))
    return canvas
