"""Reading Mamba language-model checkpoints: from a local directory or a Hugging Face hub id, in the
state-spaces format (``config.json`` + ``pytorch_model.bin``) or transformers' ``*-hf`` format
(``config.json`` + ``model.safetensors``, possibly sharded), mapped onto ``MambaDecoder``'s parameter names.

Tensors are read with ``torch.load(weights_only=True)`` or safetensors: a checkpoint never runs code.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from torch import Tensor

from vl_mamba.decoders.config import MambaConfig

_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
_INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


def resolve_checkpoint(name_or_path: str | Path, revision: str | None = None) -> Path:
    """A local directory holding ``config.json`` and the weights; hub ids are downloaded (or found in the cache)."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise ValueError(f"{path} is a file: pass the directory that holds config.json and the weights")
    if str(name_or_path).startswith((".", "/", "~")) or str(name_or_path).count("/") != 1:
        raise FileNotFoundError(f"no checkpoint directory at {path}, and {name_or_path!r} is not a hub id (owner/name)")
    from huggingface_hub import snapshot_download

    patterns = ["config.json", "*.safetensors", "*.bin", "*.index.json"]
    return Path(snapshot_download(str(name_or_path), revision=revision, allow_patterns=patterns))


def read_config(directory: Path) -> MambaConfig:
    config_file = directory / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{directory} has no config.json")
    return MambaConfig.from_dict(json.loads(config_file.read_text()))


def read_state_dict(directory: Path) -> dict[str, Tensor]:
    """All tensors of the checkpoint in ``directory``, safetensors preferred, shards merged."""
    for index_name in _INDEX_FILES:
        index = directory / index_name
        if index.is_file():
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            state: dict[str, Tensor] = {}
            for shard in shards:
                state.update(_read_file(directory / shard))
            return state
    for name in _WEIGHT_FILES:
        if (directory / name).is_file():
            return _read_file(directory / name)
    raise FileNotFoundError(f"{directory} has none of {_WEIGHT_FILES + _INDEX_FILES}")


def _read_file(path: Path) -> dict[str, Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # files in torch's legacy (non-zip) format cannot be memory-mapped
        return torch.load(path, map_location="cpu", weights_only=True)


_HF_RENAMES = ((re.compile(r"^backbone\.embeddings\."), "backbone.embedding."),)


def to_state_spaces_names(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Rename transformers ``MambaForCausalLM`` keys to mamba_ssm's; state-spaces keys pass unchanged."""
    out = {}
    for key, value in state.items():
        for pattern, repl in _HF_RENAMES:
            key = pattern.sub(repl, key)
        out[key] = value
    return out


def write_state_spaces(directory: str | Path, config: MambaConfig, state: dict[str, Tensor]) -> Path:
    """Write ``config.json`` and ``pytorch_model.bin`` as state-spaces publishes them."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config.to_state_spaces_dict(), indent=2))
    torch.save({k: v.detach().cpu() for k, v in state.items()}, directory / "pytorch_model.bin")
    return directory
