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

from vl_mamba.connectors.base import Connector
from vl_mamba.decoders.base import LanguageDecoder
from vl_mamba.encoders.base import VisionEncoder
from vl_mamba.ops.cross_entropy import cross_entropy_sum
from vl_mamba.splicing import IGNORE_INDEX, plan_splice


@dataclass
class MultimodalInputs:
    """A batch after visual tokens are spliced in."""

    embeds: Tensor
    """(batch, L, d_model)."""
    mask: Tensor
    """(batch, L) bool, True at real positions."""
    labels: Tensor | None
    """(batch, L), IGNORE_INDEX where no loss is due."""
    num_labels: int | None = None
    """Labelled positions after each sample's first (those a next-token loss counts); right padding only."""


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
        if input_ids.shape[1] == 0:  # one padding column, so that every gather below has a column to read
            input_ids, attention_mask = F.pad(input_ids, (0, 1)), F.pad(attention_mask, (0, 1))
            labels = None if labels is None else F.pad(labels, (0, 1), value=IGNORE_INDEX)
        if has_image is None:
            has_image = torch.full((batch,), pixel_values is not None, dtype=torch.bool, device=input_ids.device)
        # The images go to the device before the host waits for the splice's numbers (plan_splice).
        visual = self.encode_images(pixel_values) if pixel_values is not None and len(pixel_values) else None
        is_placeholder = torch.zeros_like(attention_mask)
        if self.image_token_id is not None:
            is_placeholder = (input_ids == self.image_token_id) & attention_mask
        plan = plan_splice(attention_mask, is_placeholder, has_image, 0 if visual is None else visual.shape[1],
                           labels, padding_side)
        given = 0 if pixel_values is None else pixel_values.shape[0]
        if plan.num_images != given:
            raise ValueError(f"{plan.num_images} samples have an image but pixel_values holds {given}")
        # Visual and padding positions read id 0 (a placeholder's id may lie past the embedding), then hold 0.
        embeds = self.decoder.embed(input_ids.gather(1, plan.source).masked_fill(~plan.is_text, 0))
        embeds = embeds.masked_fill(~plan.is_text.unsqueeze(-1), 0.0)
        if plan.num_images:
            flat = embeds.reshape(-1, embeds.shape[-1])
            flat = flat.index_copy(0, plan.visual_rows, visual.reshape(-1, flat.shape[-1]).to(flat.dtype))
            embeds = flat.view_as(embeds)
        targets = None
        if labels is not None:
            targets = labels.gather(1, plan.source).masked_fill(~plan.is_text, IGNORE_INDEX)
        return MultimodalInputs(embeds=embeds, mask=plan.mask, labels=targets, num_labels=plan.num_labels)

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
            loss, num_tokens = self._loss(hidden, inputs.labels, inputs.num_labels), inputs.num_labels
        full = self.decoder.logits(hidden) if return_logits else None
        return VLMambaOutput(loss=loss, logits=full, num_tokens=num_tokens)

    def _loss(self, hidden: Tensor, labels: Tensor, count: int) -> Tensor:
        """Mean next-token cross-entropy over the ``count`` labelled positions of right-padded ``labels``.

        The positions are found by a stable sort rather than a boolean mask, whose result's size the host would
        wait for; only their hidden states go through the LM head."""
        batch, length = labels.shape
        labelled = (labels[:, 1:] != IGNORE_INDEX).flatten()
        order = torch.sort((~labelled).to(torch.uint8), stable=True).indices[:count]  # row-major (sample, position)
        rows = order + order // max(length - 1, 1)  # (sample, position) over L - 1 columns -> sample * L + position
        logits = self.decoder.logits(hidden.reshape(batch * length, -1).index_select(0, rows))
        targets = labels.flatten().index_select(0, rows + 1)
        return cross_entropy_sum(logits, targets) / max(count, 1)
