"""Where each position of a batch with visual tokens spliced in comes from, computed on the batch's device.

``plan_splice`` turns the text's padding mask, its ``<image>`` placeholders and which samples have an image into
index tensors: for each position of the spliced (batch, L) batch, the text token it takes or whether it is a
visual token or padding. It reads one set of numbers back to the host (the images counted, the longest spliced
sample, the labelled positions, and the checks), in one transfer, so that a training step waits for the GPU once
before its forward and never inside its forward or backward: gathers and an ``index_copy`` replace boolean masks,
whose results have data-dependent shapes and make the host wait at each one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

IGNORE_INDEX = -100


@dataclass
class SplicePlan:
    """Index tensors of a spliced batch of L positions."""

    source: Tensor
    """(batch, L) long: the column of the text a text position takes (0 elsewhere)."""
    is_text: Tensor
    """(batch, L) bool: positions that hold a text token."""
    mask: Tensor
    """(batch, L) bool: positions that hold a text or a visual token (not padding)."""
    visual_rows: Tensor
    """(n_images * tokens,) long: the flat positions (sample * L + position) of the visual tokens, image after
    image in batch order, each image's tokens in order."""
    num_images: int
    num_labels: int | None
    """Positions after each sample's first whose label is not ``IGNORE_INDEX`` (what a next-token loss over the
    right-padded batch counts); None without labels, or for left padding."""


def plan_splice(
    attention_mask: Tensor,
    is_placeholder: Tensor,
    has_image: Tensor,
    visual_tokens: int,
    labels: Tensor | None = None,
    padding_side: str = "right",
) -> SplicePlan:
    """Plan the splice of ``visual_tokens`` tokens per image into the text.

    An image's tokens replace its sample's placeholder, or go before the text where the sample has none.

    Args:
        attention_mask: (batch, T) bool, True at real text tokens (padding on either side).
        is_placeholder: (batch, T) bool, True at real ``<image>`` placeholders.
        has_image: (batch,) bool.
        labels: (batch, T), to count the labelled positions.
        padding_side: ``right`` or ``left``, where the spliced batch is padded.

    Raises:
        ValueError: a sample has more than one placeholder, or a placeholder but no image.
    """
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    batch, width = attention_mask.shape
    if batch == 0:
        raise ValueError("the batch is empty")
    device = attention_mask.device
    has_image = has_image.to(device=device, dtype=torch.bool)
    lengths = attention_mask.sum(1)
    placeholders = is_placeholder.sum(1)
    rank = attention_mask.cumsum(1) - 1  # each real token's place among its sample's real tokens
    at = (rank * is_placeholder).sum(1)  # where the image goes (0 without a placeholder)
    cut = (placeholders > 0) & has_image  # the placeholder itself is dropped
    spliced = lengths + has_image * visual_tokens - cut.long()
    checks = [has_image.sum(), placeholders.amax(), ((placeholders > 0) & ~has_image).any(), spliced.amax()]
    if labels is not None:
        labelled = ((labels != IGNORE_INDEX) & attention_mask & ~is_placeholder).sum(1)
        # A sample's first position predicts nothing from before it: its label is left out when it is text.
        first = attention_mask.long().argmax(1, keepdim=True)
        first_labelled = labels.gather(1, first).squeeze(1) != IGNORE_INDEX
        text_first = (lengths > 0) & ~(has_image & (at == 0))
        checks.append((labelled - (text_first & first_labelled).long()).sum())
    num_images, most_placeholders, orphan, length, *num_labels = torch.stack(
        [c.long() for c in checks]).tolist()  # the one wait for the device
    if most_placeholders > 1:
        i = int((placeholders > 1).nonzero()[0])
        raise ValueError(f"sample {i} has {int(placeholders[i])} image placeholders; one image per sample is supported")
    if orphan:
        i = int(((placeholders > 0) & ~has_image).nonzero()[0])
        raise ValueError(f"sample {i} has an image placeholder but no image")

    position = torch.arange(length, device=device).expand(batch, length)
    shift = (length - spliced).unsqueeze(1) if padding_side == "left" else torch.zeros_like(spliced).unsqueeze(1)
    position = position - shift  # the place within the sample; negative in left padding
    mask = (position >= 0) & (position < spliced.unsqueeze(1))
    start, image = at.unsqueeze(1), has_image.unsqueeze(1)
    after = image & (position >= start + visual_tokens)
    is_visual = image & (position >= start) & ~after & mask
    is_text = mask & ~is_visual
    text_rank = torch.where(after, position - visual_tokens + cut.unsqueeze(1).long(), position)
    # The columns of each sample's real tokens in order, then its padding columns (a stable sort).
    columns = torch.sort((~attention_mask).to(torch.uint8), dim=1, stable=True).indices
    source = columns.gather(1, text_rank.clamp(0, max(width - 1, 0))).masked_fill(~is_text, 0)
    with_image = torch.sort((~has_image).to(torch.uint8), stable=True).indices[:num_images]
    first_row = with_image * length + shift.squeeze(1)[with_image] + at[with_image]
    visual_rows = (first_row.unsqueeze(1) + torch.arange(visual_tokens, device=device)).flatten()
    return SplicePlan(
        source=source, is_text=is_text, mask=mask, visual_rows=visual_rows, num_images=num_images,
        num_labels=num_labels[0] if num_labels and padding_side == "right" else None,
    )
