"""``CaptionDataModule``: stage-1 (alignment) data: image-caption shards as img2dataset writes them
(``key.jpg|png|webp`` with ``key.txt``, optional ``key.json``), or LLaVA-558K shards from ``convert-llava``
(the caption is the conversation's answer). LLaVA's ``plain`` template by default: the image, then the
caption, with the loss on the caption and its eos."""

from __future__ import annotations

from data_modules.decoding import parse_caption
from data_modules.webdataset_module import WebDatasetDataModule


class CaptionDataModule(WebDatasetDataModule):
    """Caption shards -> batches; every sample needs an image. Arguments as ``WebDatasetDataModule``."""

    default_template = "plain"
    parser = staticmethod(parse_caption)
