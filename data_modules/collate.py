"""Collation: encoded samples -> one right-padded batch, in the format ``VLMamba`` and the training module
take (see ``collate``)."""

from __future__ import annotations

from typing import Any

import torch
from torch.nn.utils.rnn import pad_sequence

from data_modules.encoding import Example
from vl_mamba.model import IGNORE_INDEX


def collate(examples: list[Example], pad_token_id: int) -> dict[str, Any]:
    """Pad and stack a list of samples.

    Returns:
        ``input_ids`` (B, T) long, padded with ``pad_token_id``; ``attention_mask`` (B, T) bool, True at real
        tokens; ``labels`` (B, T) long, IGNORE_INDEX except on answer tokens; ``pixel_values``
        (n_images, 3, H, W) float for the samples that have an image, in batch order, or None when none has;
        ``has_image`` (B,) bool; ``keys`` the B sample keys.
    """
    if not examples:
        raise ValueError("cannot collate an empty batch")
    input_ids = pad_sequence([e.input_ids for e in examples], batch_first=True, padding_value=pad_token_id)
    labels = pad_sequence([e.labels for e in examples], batch_first=True, padding_value=IGNORE_INDEX)
    masks = [torch.ones(len(e.input_ids), dtype=torch.bool) for e in examples]
    images = [e.pixel_values for e in examples if e.pixel_values is not None]
    return {
        "input_ids": input_ids,
        "attention_mask": pad_sequence(masks, batch_first=True, padding_value=False),
        "labels": labels,
        "pixel_values": torch.stack(images) if images else None,
        "has_image": torch.tensor([e.pixel_values is not None for e in examples], dtype=torch.bool),
        "keys": [e.key for e in examples],
    }
