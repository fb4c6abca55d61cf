"""The interface every language decoder offers to ``VLMamba``: embeddings, hidden states, logits, recurrent
state for generation, and the block class that FSDP wraps and activation checkpointing applies to."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch
from torch import Tensor, nn


class LanguageDecoder(nn.Module, ABC):
    """A causal language model that can read embeddings in place of token ids."""

    d_model: int
    """Width of the embeddings it reads (the connector's output width)."""
    vocab_size: int
    """Tokenizer vocabulary size (the logits may have padding rows beyond it)."""
    embedding_rows: int
    """Rows of the input embedding (and of the logits): the vocabulary padded up."""
    checkpoints_own_blocks: bool = False
    """True where ``gradient_checkpointing = True`` makes the decoder checkpoint its blocks itself, better than a
    generic wrapper around each block would; FSDP's ``checkpoint_blocks`` then uses it."""

    @abstractmethod
    def embed(self, input_ids: Tensor) -> Tensor:
        """(batch, L) -> (batch, L, d_model)."""

    @abstractmethod
    def forward_hidden(self, inputs_embeds: Tensor, states: Any = None, mask: Tensor | None = None) -> Tensor:
        """(batch, L, d_model) -> final hidden states after the last norm, (batch, L, d_model)."""

    @abstractmethod
    def logits(self, hidden: Tensor) -> Tensor:
        """(..., d_model) -> (..., padded vocab)."""

    @abstractmethod
    def allocate_states(self, batch: int, device: torch.device, dtype: torch.dtype) -> Any:
        """Empty recurrent state for ``batch`` sequences."""

    @abstractmethod
    def step(self, inputs_embeds: Tensor, states: Any) -> Tensor:
        """One position for every sequence: (batch, d_model) -> logits (batch, padded vocab)."""

    @property
    @abstractmethod
    def block_class(self) -> type[nn.Module]:
        """The repeated block: the unit of FSDP wrapping and activation checkpointing."""

    def forward(
        self, input_ids: Tensor | None = None, inputs_embeds: Tensor | None = None, mask: Tensor | None = None
    ) -> Tensor:
        """Token ids (batch, L) or embeddings (batch, L, d_model) -> logits (batch, L, padded vocab)."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.embed(input_ids)
        return self.logits(self.forward_hidden(inputs_embeds, mask=mask))
