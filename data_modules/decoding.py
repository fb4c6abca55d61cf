"""From the raw files of one WebDataset sample (``{"__key__": ..., "jpg": bytes, "txt": bytes, ...}``) to
(question, answer) turns and image bytes, and from image bytes to a PIL image. Each function raises
``SkipSample`` with a reason when the sample cannot be used.

Two sample layouts are read: captions as img2dataset writes them (``key.jpg|png|webp``, ``key.txt``,
optional ``key.json``; a LLaVA conversation in ``key.json`` also works, its first answer being the caption),
and LLaVA conversations (``key.json`` holding ``conversations`` of human/gpt turns, with an image file or,
for text-only samples, without).
"""

from __future__ import annotations

import io
import json
import warnings
from typing import Any

from PIL import Image

from data_modules.skips import SkipSample
from vl_mamba.tokenizer import IMAGE_TOKEN

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff", "gif")
USER_ROLES = ("human", "user")
ASSISTANT_ROLES = ("gpt", "assistant")

Turns = list[tuple[str, str]]


def decode_text(data: bytes) -> str:
    """UTF-8 bytes -> str."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise SkipSample("bad_utf8", str(error)) from None


def decode_json(data: bytes) -> Any:
    """UTF-8 JSON bytes -> object."""
    text = decode_text(data)
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise SkipSample("bad_json", str(error)) from None


def decode_image(data: bytes, max_pixels: int, draft_size: tuple[int, int] | None = None) -> Image.Image:
    """Decode image bytes, refusing images of more than ``max_pixels`` before decoding them.

    Args:
        data: the encoded file.
        max_pixels: decompression-bomb guard on width * height, read from the header.
        draft_size: (width, height) the image will be resized to; JPEGs are then decoded at the smallest
            DCT scale that still covers it, which is much faster for large photos.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > max_pixels:
                raise SkipSample("huge_image", f"{width}x{height} > {max_pixels} pixels")
            if draft_size is not None and image.format == "JPEG":
                image.draft(None, draft_size)
            image.load()
    except SkipSample:
        raise
    except Image.DecompressionBombError as error:
        raise SkipSample("huge_image", str(error)) from None
    except Image.UnidentifiedImageError as error:
        raise SkipSample("corrupt_image", str(error)) from None
    except OSError as error:
        reason = "truncated_image" if "truncated" in str(error) else "corrupt_image"
        raise SkipSample(reason, str(error)) from None
    except Exception as error:  # PIL raises SyntaxError, ValueError, struct.error... for broken files
        raise SkipSample("corrupt_image", f"{type(error).__name__}: {error}") from None
    return image


def find_image(sample: dict[str, Any]) -> bytes | None:
    """The sample's image file, if it has one."""
    for extension in IMAGE_EXTENSIONS:
        if extension in sample:
            return sample[extension]
    return None


def conversation_turns(conversations: Any) -> Turns:
    """LLaVA ``conversations`` -> (question, answer) pairs, image placeholders removed.

    Leading answers (a conversation must start with a question) and a final unanswered question are dropped,
    as LLaVA does, and so are turns whose answer is empty.
    """
    if not isinstance(conversations, list) or not all(
        isinstance(turn, dict) and isinstance(turn.get("value"), str) for turn in conversations
    ):
        raise SkipSample("bad_conversation", "conversations must be a list of {'from', 'value'} turns")
    roles = [str(turn.get("from", "")).lower() for turn in conversations]
    if any(role not in USER_ROLES + ASSISTANT_ROLES for role in roles):
        raise SkipSample("bad_conversation", f"unknown roles in {sorted(set(roles))}")
    while roles and roles[0] in ASSISTANT_ROLES:
        roles, conversations = roles[1:], conversations[1:]
    turns = []
    for start in range(0, len(conversations) - 1, 2):
        if roles[start] not in USER_ROLES or roles[start + 1] not in ASSISTANT_ROLES:
            raise SkipSample("bad_conversation", "turns do not alternate between human and gpt")
        question = conversations[start]["value"].replace(IMAGE_TOKEN, "").strip()
        answer = conversations[start + 1]["value"].replace(IMAGE_TOKEN, "").strip()
        if answer:  # an empty answer teaches nothing but to stop
            turns.append((question, answer))
    if not turns:
        raise SkipSample("empty_conversation", f"{len(conversations)} turns, no answer")
    return turns


def parse_caption(sample: dict[str, Any]) -> tuple[Turns, bytes | None]:
    """Caption sample -> ([("", caption)], image bytes); the image is required."""
    caption = None
    if "txt" in sample:
        caption = decode_text(sample["txt"]).replace(IMAGE_TOKEN, "").strip()
    elif "json" in sample:
        meta = decode_json(sample["json"])
        if isinstance(meta, dict) and "conversations" in meta:
            caption = conversation_turns(meta["conversations"])[0][1]
        elif isinstance(meta, dict) and isinstance(meta.get("caption"), str):
            caption = meta["caption"].replace(IMAGE_TOKEN, "").strip()
    if not caption:
        raise SkipSample("missing_text", "no caption in .txt or .json")
    image = find_image(sample)
    if image is None:
        raise SkipSample("missing_image", "caption samples need an image")
    return [("", caption)], image


def parse_conversation(sample: dict[str, Any]) -> tuple[Turns, bytes | None]:
    """LLaVA conversation sample -> (turns, image bytes or None for a text-only sample)."""
    if "json" not in sample:
        raise SkipSample("missing_text", "no .json conversation")
    record = decode_json(sample["json"])
    if not isinstance(record, dict) or "conversations" not in record:
        raise SkipSample("bad_conversation", "the .json holds no 'conversations'")
    turns = conversation_turns(record["conversations"])
    image = find_image(sample)
    mentions_image = any(
        isinstance(turn, dict) and IMAGE_TOKEN in str(turn.get("value", "")) for turn in record["conversations"]
    )
    if image is None and (record.get("image") or mentions_image):
        raise SkipSample("missing_image", f"the conversation refers to image {record.get('image', '')!r}")
    return turns, image
