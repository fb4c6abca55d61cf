"""One sample's way from raw files to model inputs: parse the text, render it with a conversation template,
tokenise it with labels on the answers only, truncate it to ``max_length`` counting the visual tokens (which
are never cut), and decode and transform the image. ``SampleEncoder`` is the picklable callable that the
loader's workers run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from data_modules.decoding import Turns, decode_image
from data_modules.skips import SkipSample
from data_modules.templates import ConversationTemplate
from vl_mamba.encoders import ImageTransform
from vl_mamba.model import IGNORE_INDEX
from vl_mamba.tokenizer import TextTokenizer

SampleParser = Callable[[dict[str, Any]], tuple[Turns, "bytes | None"]]


@dataclass
class Example:
    """One encoded sample."""

    key: str
    input_ids: Tensor
    """(L,) long, at most one ``image_token_id``."""
    labels: Tensor
    """(L,) long, IGNORE_INDEX except on answer tokens and the eos after each answer."""
    pixel_values: Tensor | None
    """(3, H, W) float, or None for a text-only sample."""


def encode_conversation(
    turns: Turns,
    template: ConversationTemplate,
    tokenizer: TextTokenizer,
    has_image: bool,
    max_length: int,
    num_visual_tokens: int = 0,
) -> tuple[list[int], list[int]]:
    """Render and tokenise a conversation; truncate it from the right so that it fits ``max_length``.

    The ``<image>`` placeholder counts as ``num_visual_tokens`` tokens, since the model replaces it with them:
    an image sample keeps ``max_length - num_visual_tokens + 1`` ids.

    Returns:
        input_ids and labels, two lists of the same length.

    Raises:
        SkipSample: ``too_long`` when the placeholder or every answer token falls past the limit.
    """
    input_ids: list[int] = []
    labels: list[int] = []
    for text, is_answer in template.segments(turns, has_image):
        ids = tokenizer.encode(text)
        if is_answer and template.eos_after_answer:
            ids.append(tokenizer.eos_token_id)
        input_ids += ids
        labels += ids if is_answer else [IGNORE_INDEX] * len(ids)
    limit = max_length - num_visual_tokens + 1 if has_image else max_length
    if has_image:
        placeholders = input_ids.count(tokenizer.image_token_id)
        if placeholders != 1:
            raise ValueError(f"template {template} put {placeholders} image placeholders in a sample")
        if input_ids.index(tokenizer.image_token_id) >= limit:
            raise SkipSample("too_long", f"max_length {max_length} cannot hold {num_visual_tokens} visual tokens")
    input_ids, labels = input_ids[:limit], labels[:limit]
    if all(label == IGNORE_INDEX for label in labels):
        raise SkipSample("too_long", f"no answer token within max_length {max_length}")
    return input_ids, labels


class SampleEncoder:
    """Callable raw sample -> ``Example``; raises ``SkipSample`` for a bad one.

    Args:
        parser: raw sample -> (turns, image bytes or None), e.g. ``parse_caption``.
        tokenizer: text tokenizer with the ``<image>`` placeholder.
        template: conversation template.
        transform: PIL image -> (3, H, W) tensor.
        max_length: most tokens per sample, visual tokens included.
        num_visual_tokens: how many tokens one image becomes in the model.
        max_image_pixels: images with more pixels are skipped before decoding.
    """

    def __init__(
        self,
        parser: SampleParser,
        tokenizer: TextTokenizer,
        template: ConversationTemplate,
        transform: ImageTransform,
        max_length: int,
        num_visual_tokens: int = 0,
        max_image_pixels: int = 50_000_000,
    ) -> None:
        if max_length <= num_visual_tokens:
            raise ValueError(f"max_length {max_length} must exceed num_visual_tokens {num_visual_tokens}")
        self.parser = parser
        self.tokenizer = tokenizer
        self.template = template
        self.transform = transform
        self.max_length = max_length
        self.num_visual_tokens = num_visual_tokens
        self.max_image_pixels = max_image_pixels

    def __call__(self, sample: dict[str, Any]) -> Example:
        turns, image_bytes = self.parser(sample)
        has_image = image_bytes is not None
        input_ids, labels = encode_conversation(
            turns, self.template, self.tokenizer, has_image, self.max_length, self.num_visual_tokens
        )
        pixel_values = None
        if has_image:
            draft = (self.transform.width, self.transform.height)
            image = decode_image(image_bytes, self.max_image_pixels, draft_size=draft)
            try:
                pixel_values = self.transform(image)
            except Exception as error:  # a mode or layout that decodes but does not convert
                raise SkipSample("corrupt_image", f"{type(error).__name__}: {error}") from None
        return Example(
            key=sample.get("__key__", ""),
            input_ids=torch.tensor(input_ids, dtype=torch.long),
            labels=torch.tensor(labels, dtype=torch.long),
            pixel_values=pixel_values,
        )
