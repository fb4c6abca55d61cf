"""WebDataset data for VL-Mamba: LightningDataModules for caption (stage 1) and instruction (stage 2) shards,
conversation templates, collation, the LLaVA-to-shards converter and shard statistics. Batches are dicts;
their keys are described in ``data_modules.webdataset_module``.

Names are imported on first use, so that ``vl-mamba data convert-llava`` starts without loading torch and
Lightning.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "CaptionDataModule": "data_modules.captions",
    "collate": "data_modules.collate",
    "Example": "data_modules.encoding",
    "SampleEncoder": "data_modules.encoding",
    "encode_conversation": "data_modules.encoding",
    "InstructDataModule": "data_modules.instructions",
    "ShardLoader": "data_modules.loader",
    "ShardDataset": "data_modules.pipeline",
    "write_shard": "data_modules.shard_writer",
    "write_sizes": "data_modules.shard_writer",
    "ShardSource": "data_modules.shards",
    "count_samples": "data_modules.shards",
    "expand_shards": "data_modules.shards",
    "parse_sources": "data_modules.shards",
    "SkipCounter": "data_modules.skips",
    "SkipSample": "data_modules.skips",
    "TEMPLATES": "data_modules.templates",
    "ConversationTemplate": "data_modules.templates",
    "get_template": "data_modules.templates",
    "register_template": "data_modules.templates",
    "DEFAULT_IMAGE_CONFIG": "data_modules.webdataset_module",
    "WebDatasetDataModule": "data_modules.webdataset_module",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'data_modules' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)


def __dir__() -> list[str]:
    return __all__
