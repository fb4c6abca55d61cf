"""Shared test fixtures: the repository root, the GPT-NeoX-20B tokenizer in ../shared/assets (tests that need it
are skipped, with the reason, when it is absent), and the selective scans cut into blocks of channels."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
TOKENIZER_PATH = REPO_ROOT / ".." / "shared" / "assets" / "tokenizers" / "gpt-neox-20b.json"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The repository root."""
    return REPO_ROOT


@pytest.fixture(scope="session")
def tokenizer_path() -> Path:
    """The GPT-NeoX-20B ``tokenizer.json`` (skips the test when it is not there)."""
    path = TOKENIZER_PATH.resolve()
    if not path.is_file():
        pytest.skip(f"GPT-NeoX-20B tokenizer not found at {path} (expected in ../shared/assets/tokenizers)")
    return path


@pytest.fixture(scope="session")
def text_tokenizer(tokenizer_path: Path):
    """A ``TextTokenizer`` over GPT-NeoX-20B, loaded once per test run."""
    from vl_mamba.tokenizer import TextTokenizer

    return TextTokenizer.load(tokenizer_path)


@pytest.fixture
def channel_blocks(monkeypatch, request):
    """Blocks of channels on worker threads for every scan, however small (the PyTorch scan's and the compiled
    kernel's): ``request.param`` torch threads (so blocks) on the calling thread, restored afterwards."""
    import torch

    monkeypatch.setattr("vl_mamba.ops.selective_scan._PART_ELEMENTS", 1)
    monkeypatch.setattr("vl_mamba.ops.selective_scan._PART_CHANNELS", 1)
    monkeypatch.setattr("vl_mamba.ops.scan_cpu._PART_ELEMENTS", 1)
    threads = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(threads)
