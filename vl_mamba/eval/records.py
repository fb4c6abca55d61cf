"""``EvalSample``: the one record every benchmark reader yields, and ``Base64Image``, the image source of
benchmarks that ship their images inside a table (MMBench).

A sample holds what generation needs (the prompt and where its image is) and what scoring needs (the reference
answers, a category for the breakdown, and benchmark-specific fields in ``metadata``). Samples are plain,
picklable data, so they can be sharded across ranks and sent to data-loader workers.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image


@dataclass(frozen=True)
class Base64Image:
    """An image stored as base64 text; calling it decodes the image."""

    data: str
    """The base64-encoded image file (PNG, JPEG, ...)."""

    def __call__(self) -> Image.Image:
        """Decode to an RGB image."""
        with Image.open(io.BytesIO(base64.b64decode(self.data))) as image:
            return image.convert("RGB")

    def __repr__(self) -> str:
        return f"Base64Image(<{len(self.data)} chars>)"


ImageSource = Path | Base64Image | None
"""Where a sample's image is: a file, base64 text, or nothing (a text-only question)."""


@dataclass
class EvalSample:
    """One benchmark question, the same shape for every benchmark."""

    question_id: int | str
    """The benchmark's own id (answer files are keyed by it); unique within the benchmark."""
    prompt: str
    """The text given to the model: question (with hint and options where the benchmark has them) and the
    benchmark's prompt suffix on its own line. No image placeholder: the model puts the visual tokens."""
    image: ImageSource = None
    """The image file, base64 text, or None."""
    question: str = ""
    """The bare question text, as the benchmark writes it."""
    answers: list[str] = field(default_factory=list)
    """Reference answers: the human answers (VQAv2, TextVQA, vqa-jsonl), or one item: the gold answer (GQA),
    "yes"/"no" (POPE, MME) or the option letter (ScienceQA, MMBench). Empty when the split's answers are not
    public (VQAv2 test-dev, MMBench test) or the benchmark is graded elsewhere (MM-Vet)."""
    category: str | None = None
    """The group a breakdown reports: answer type (VQAv2), category (vqa-jsonl), split (POPE), subtask (MME),
    subject (ScienceQA), category (MMBench)."""
    metadata: dict[str, Any] = field(default_factory=dict)
    """Benchmark-specific fields the metric or answer writer needs (see each reader)."""

    def load_image(self) -> Image.Image | None:
        """The image as RGB, or None for a text-only question."""
        if self.image is None:
            return None
        if isinstance(self.image, Base64Image):
            return self.image()
        with Image.open(self.image) as image:
            return image.convert("RGB")
