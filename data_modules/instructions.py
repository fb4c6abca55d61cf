"""``InstructDataModule``: stage-2 (instruction tuning) data: LLaVA conversations (``key.json`` holding
``conversations`` of human/gpt turns, with the ``<image>`` placeholder) and their images, as ``convert-llava``
writes them; text-only samples (no image file) are allowed. LLaVA-1.5's ``vicuna_v1`` chat template by
default, with the loss on the answers only, over every turn."""

from __future__ import annotations

from data_modules.decoding import parse_conversation
from data_modules.webdataset_module import WebDatasetDataModule


class InstructDataModule(WebDatasetDataModule):
    """Conversation shards -> batches; images optional. Arguments as ``WebDatasetDataModule``."""

    default_template = "vicuna_v1"
    parser = staticmethod(parse_conversation)
