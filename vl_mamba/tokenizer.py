"""``TextTokenizer``: one small interface over a Hugging Face ``tokenizers`` tokenizer (a ``tokenizer.json``
file, a directory holding one, a hub id, or a transformers fast tokenizer), with the ``<image>`` placeholder
added as a special token. GPT-NeoX-20B's, which the Mamba LMs use, is the default in configs.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

IMAGE_TOKEN = "<image>"

# ``builtin:<name>`` tokenizers: built by code, not read from a file ("module:function" returning a Tokenizer).
BUILTIN_TOKENIZERS: dict[str, str] = {
    "synthetic-shapes": "data_modules.synthetic_module:shapes_tokenizer",
}


class TextTokenizer:
    """Encode and decode text; ``image_token_id`` marks where visual tokens go.

    Args:
        backend: a ``tokenizers.Tokenizer``.
        eos_token: end-of-text token (appended after every answer).
        pad_token: padding token; ``eos_token`` when the vocabulary has none.
    """

    def __init__(self, backend: Tokenizer, eos_token: str = "<|endoftext|>", pad_token: str = "<|padding|>") -> None:
        self.backend = backend
        self.backend.no_padding()
        self.backend.no_truncation()
        self.base_vocab_size = backend.get_vocab_size(with_added_tokens=True)
        backend.add_special_tokens([IMAGE_TOKEN])
        self.image_token_id = backend.token_to_id(IMAGE_TOKEN)
        self.eos_token_id = _require(backend, eos_token, "eos_token")
        pad_id = backend.token_to_id(pad_token)
        self.pad_token_id = self.eos_token_id if pad_id is None else pad_id

    @classmethod
    def load(cls, name_or_path: str | Path | Any, **kwargs) -> TextTokenizer:
        """From a tokenizer.json file, a directory holding one, a hub id, ``builtin:<name>``, or a transformers
        fast tokenizer."""
        if isinstance(name_or_path, TextTokenizer):
            return name_or_path
        if isinstance(name_or_path, str) and name_or_path.startswith("builtin:"):
            name = name_or_path.removeprefix("builtin:")
            if name not in BUILTIN_TOKENIZERS:
                raise ValueError(f"unknown built-in tokenizer {name!r}; known: {sorted(BUILTIN_TOKENIZERS)}")
            module, function = BUILTIN_TOKENIZERS[name].split(":")
            return cls(getattr(importlib.import_module(module), function)(), **kwargs)
        if hasattr(name_or_path, "backend_tokenizer"):  # transformers PreTrainedTokenizerFast
            return cls(Tokenizer.from_str(name_or_path.backend_tokenizer.to_str()), **kwargs)
        path = Path(str(name_or_path)).expanduser()
        if path.is_file():
            return cls(Tokenizer.from_file(str(path)), **kwargs)
        if (path / "tokenizer.json").is_file():
            return cls(Tokenizer.from_file(str(path / "tokenizer.json")), **kwargs)
        if path.exists() or str(name_or_path).count("/") != 1:
            raise FileNotFoundError(f"no tokenizer.json at {path}, and {name_or_path!r} is not a hub id")
        return cls(Tokenizer.from_pretrained(str(name_or_path)), **kwargs)

    def __len__(self) -> int:
        """Number of ids, the image placeholder included."""
        return self.backend.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        """Text -> ids; ``<image>`` becomes ``image_token_id``; no special tokens are added."""
        return self.backend.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str) -> int | None:
        return self.backend.token_to_id(token)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["backend"] = self.backend.to_str()
        return state

    def __setstate__(self, state: dict) -> None:
        state["backend"] = Tokenizer.from_str(state["backend"])
        self.__dict__.update(state)


def _require(backend: Tokenizer, token: str, role: str) -> int:
    token_id = backend.token_to_id(token)
    if token_id is None:
        raise ValueError(f"the tokenizer has no {role} {token!r}; pass {role}= with one of its special tokens")
    return token_id
