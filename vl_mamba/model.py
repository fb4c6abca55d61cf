"""``VLMamba``: vision encoder -> connector -> visual tokens spliced into the text -> Mamba language model.

Visual tokens replace the ``<image>`` placeholder token of a sample (or go before its text when it has
none); text-only samples pass through as text. Labels are -100 wherever no loss is due (visual tokens,
padding, and whatever the data pipeline masked). The loss is computed from the hidden states of the
positions that have a label only, so the full (batch, L, vocab) logits are never built in training.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import pad_sequence

from vl_mamba.connectors.base import Connector
from vl_mamba.decoders.base import LanguageDecoder
from vl_mamba.encoders.base import VisionEncoder

IGNORE_INDEX = -100


@dataclass
class MultimodalInputs:
    """A batch after visual tokens are spliced in."""

    embeds: Tensor
    """(batch, L, d_model)."""
    mask: Tensor
    """(batch, L) bool, True at real positions."""
    labels: Tensor | None
    """(batch, L), IGNORE_INDEX where no loss is due."""


@dataclass
class VLMambaOutput:
    loss: Tensor | None
    """Mean cross-entropy over the labelled positions."""
    logits: Tensor | None
    """(batch, L, padded vocab), only when asked for."""
    num_tokens: int
    """Number of labelled positions in the loss."""


class VLMamba(nn.Module):
    """Vision encoder + connector + language decoder.

    Args:
        encoder: produces patch features on a grid.
        connector: maps them to the decoder's width; built here with the two widths if it was not.
        decoder: the language model.
        image_token_id: id of the ``<image>`` placeholder; None puts visual tokens before every text.
    """

    def __init__(
        self,
        encoder: VisionEncoder,
        connector: Connector,
        decoder: LanguageDecoder,
        image_token_id: int | None = None,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.connector = connector
        self.decoder = decoder
        self.image_token_id = image_token_id
        connector.connect(encoder.embed_dim, decoder.d_model)

    @property
    def num_visual_tokens(self) -> int:
        return self.encoder.num_patches

    def encode_images(self, pixel_values: Tensor) -> Tensor:
        """(n, 3, H, W) -> visual tokens (n, num_patches, d_model)."""
        frozen = not any(p.requires_grad for p in self.encoder.parameters())
        with torch.set_grad_enabled(torch.is_grad_enabled() and not frozen):
            features = self.encoder(pixel_values)
        return self.connector(features, self.encoder.grid)

    def build_inputs(
        self,
        input_ids: Tensor,
        pixel_values: Tensor | None = None,
        labels: Tensor | None = None,
        attention_mask: Tensor | None = None,
        has_image: Tensor | None = None,
        padding_side: str = "right",
    ) -> MultimodalInputs:
        """Splice visual tokens into the text embeddings.

        Args:
            input_ids: (batch, T) with at most one ``image_token_id`` per sample.
            pixel_values: (n_images, 3, H, W), one image per sample that has one, in batch order.
            labels: (batch, T).
            attention_mask: (batch, T), 1 at real tokens (padding may be on either side).
            has_image: (batch,) bool; None means every sample has an image when pixel_values is given.
            padding_side: where the result is padded: ``right`` for training, ``left`` for generation.
        """
        batch = input_ids.shape[0]
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids, dtype=torch.bool)
        attention_mask = attention_mask.bool()
        if has_image is None:
            has_image = torch.full((batch,), pixel_values is not None, dtype=torch.bool, device=input_ids.device)
        n_images = int(has_image.sum())
        if n_images and (pixel_values is None or pixel_values.shape[0] != n_images):
            got = None if pixel_values is None else pixel_values.shape[0]
            raise ValueError(f"{n_images} samples have an image but pixel_values holds {got}")
        visual = self.encode_images(pixel_values) if n_images else None
        is_placeholder = None
        if self.image_token_id is not None:
            is_placeholder = (input_ids == self.image_token_id) & attention_mask
        text_ids = input_ids if is_placeholder is None else input_ids.masked_fill(is_placeholder, 0)
        text = self.decoder.embed(text_ids)
        embeds, masks, targets = [], [], []
        image_index = 0
        for i in range(batch):
            keep = attention_mask[i]
            emb, lab = text[i][keep], None if labels is None else labels[i][keep]
            where = [] if is_placeholder is None else is_placeholder[i][keep].nonzero().flatten().tolist()
            if len(where) > 1:
                raise ValueError(f"sample {i} has {len(where)} image placeholders; one image per sample is supported")
            if has_image[i]:
                vis = visual[image_index].to(emb.dtype)
                image_index += 1
                at = where[0] if where else 0
                cut = 1 if where else 0
                emb = torch.cat([emb[:at], vis, emb[at + cut :]])
                if lab is not None:
                    ignore = lab.new_full((vis.shape[0],), IGNORE_INDEX)
                    lab = torch.cat([lab[:at], ignore, lab[at + cut :]])
            elif where:
                raise ValueError(f"sample {i} has an image placeholder but no image")
            embeds.append(emb)
            masks.append(torch.ones(emb.shape[0], dtype=torch.bool, device=emb.device))
            if lab is not None:
                targets.append(lab)
        return MultimodalInputs(
            embeds=_pad(embeds, 0.0, padding_side),
            mask=_pad(masks, False, padding_side),
            labels=_pad(targets, IGNORE_INDEX, padding_side) if labels is not None else None,
        )

    def forward(
        self,
        input_ids: Tensor,
        pixel_values: Tensor | None = None,
        labels: Tensor | None = None,
        attention_mask: Tensor | None = None,
        has_image: Tensor | None = None,
        return_logits: bool = False,
    ) -> VLMambaOutput:
        """Loss over the labelled positions (next-token prediction), and the logits when asked for.

        Shapes as ``build_inputs``.
        """
        inputs = self.build_inputs(input_ids, pixel_values, labels, attention_mask, has_image)
        hidden = self.decoder.forward_hidden(inputs.embeds)
        loss, num_tokens = None, 0
        if inputs.labels is not None:
            targets = inputs.labels[:, 1:]
            selected = targets != IGNORE_INDEX
            num_tokens = int(selected.sum())
            logits = self.decoder.logits(hidden[:, :-1][selected])
            loss = F.cross_entropy(logits.float(), targets[selected], reduction="sum") / max(num_tokens, 1)
        full = self.decoder.logits(hidden) if return_logits else None
        return VLMambaOutput(loss=loss, logits=full, num_tokens=num_tokens)


def _pad(seqs: list[Tensor], value: float | bool | int, side: str) -> Tensor:
    if side == "right":
        return pad_sequence(seqs, batch_first=True, padding_value=value)
    if side != "left":
        raise ValueError(f"padding_side must be 'left' or 'right', got {side!r}")
    flipped = pad_sequence([s.flip(0) for s in seqs], batch_first=True, padding_value=value)
    return flipped.flip(1)
