"""Bad samples: shards holding one sample of each kind of damage are read to the end; each bad sample is
skipped and counted under its reason (in the batches' ``skipped`` counts), CMYK and 16-bit images are used,
reports are rate-limited, and data that is wholly bad stops with an error instead of spinning."""

from __future__ import annotations

import io
import json
import logging
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data_modules import CaptionDataModule, InstructDataModule, write_shard
from data_modules import pipeline as pipeline_module
from data_modules.skips import SkipCounter


def image_bytes(mode: str = "RGB", size: tuple[int, int] = (48, 40), fmt: str = "JPEG") -> bytes:
    rng = np.random.default_rng(0)
    if mode == "I;16":
        image = Image.fromarray(rng.integers(0, 65535, size[::-1], dtype=np.uint16))
    else:
        image = Image.fromarray(rng.integers(0, 255, (*size[::-1], 3), dtype=np.uint8)).convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


def conversation(image: bool = True, answer: str = "It is a cat.") -> bytes:
    question = ("<image>\n" if image else "") + "What is this?"
    return json.dumps(
        {"conversations": [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]}
    ).encode()


def read_all(module_class: type, shards: str, **kwargs) -> tuple[list[str], Counter]:
    module = module_class(
        val_shards=shards,
        tokenizer=kwargs.pop("tokenizer"),
        image_config={"input_size": (3, 32, 32)},
        batch_size=3,
        num_workers=0,
        **kwargs,
    )
    module.setup("validate")
    keys, skipped = [], Counter()
    for batch in module.val_dataloader():
        keys += batch["keys"]
        skipped.update(batch["skipped"])
        assert batch["pixel_values"] is None or batch["pixel_values"].shape[1:] == (3, 32, 32)
    return keys, skipped


def cut_inside_member(path: Path, member_name: str) -> None:
    """Truncate a tar file in the middle of one member's data."""
    with tarfile.open(path) as tar:
        member = tar.getmember(member_name)
    data = path.read_bytes()
    path.write_bytes(data[: member.offset_data + member.size // 2])


def test_caption_shards_with_every_kind_of_damage(tmp_path: Path, tokenizer_path: Path) -> None:
    jpeg = image_bytes()
    samples = [
        ("good", {"jpg": jpeg, "txt": b"a plain photo"}),
        ("cmyk", {"jpg": image_bytes("CMYK"), "txt": b"a CMYK photo"}),
        ("deep", {"png": image_bytes("I;16", fmt="PNG"), "txt": b"a 16-bit scan"}),
        ("rgba", {"png": image_bytes("RGBA", fmt="PNG"), "txt": b"a transparent drawing"}),
        ("meta", {"webp": image_bytes(fmt="WEBP"), "json": json.dumps({"caption": "from the json"}).encode()}),
        ("corrupt", {"jpg": b"\xff\xd8\xff\xe0 not really a jpeg" * 20, "txt": b"broken"}),
        ("truncated", {"jpg": jpeg[: len(jpeg) // 2], "txt": b"half an image"}),
        ("huge", {"png": image_bytes(size=(1200, 1000), fmt="PNG"), "txt": b"too many pixels"}),
        ("no_text", {"jpg": jpeg}),
        ("empty_text", {"jpg": jpeg, "txt": b"   "}),
        ("latin1", {"jpg": jpeg, "txt": "caf\xe9 au lait".encode("latin-1")}),
        ("bad_meta", {"jpg": jpeg, "json": b"{'caption': not json"}),
        ("no_image", {"txt": b"a caption alone"}),
        ("good2", {"jpg": jpeg, "txt": b"another photo"}),
    ]
    write_shard(tmp_path / "00000.tar", samples)
    write_shard(tmp_path / "00001.tar", [(f"cut{i}", {"jpg": jpeg, "txt": b"fine"}) for i in range(4)])
    cut_inside_member(tmp_path / "00001.tar", "cut2.jpg")

    keys, skipped = read_all(
        CaptionDataModule, str(tmp_path / "*.tar"), tokenizer=str(tokenizer_path), max_image_pixels=1_000_000
    )
    assert keys == ["good", "cmyk", "deep", "rgba", "meta", "good2", "cut0", "cut1"]
    assert skipped == {
        "corrupt_image": 1,
        "truncated_image": 1,
        "huge_image": 1,
        "missing_text": 2,
        "bad_utf8": 1,
        "bad_json": 1,
        "missing_image": 1,
        "truncated_tar": 1,
    }


def test_conversation_shards_with_every_kind_of_damage(tmp_path: Path, tokenizer_path: Path) -> None:
    png = image_bytes(fmt="PNG")
    turns = lambda *pairs: json.dumps({"conversations": [{"from": f, "value": v} for f, v in pairs]}).encode()  # noqa: E731
    samples = [
        ("good", {"png": png, "json": conversation()}),
        ("text_only", {"json": conversation(image=False)}),
        ("leading_gpt", {"png": png, "json": turns(("gpt", "hi"), ("human", "<image>\nWhat?"), ("gpt", "A cat."))}),
        ("bad_json", {"png": png, "json": b'{"conversations": [ '}),
        ("latin1", {"png": png, "json": '{"conversations": "caf\xe9"}'.encode("latin-1")}),
        ("no_turns", {"png": png, "json": b'{"conversations": []}'}),
        ("no_answer", {"png": png, "json": turns(("human", "<image>\nWhat?"), ("gpt", "   "))}),
        ("question_only", {"png": png, "json": turns(("human", "<image>\nWhat?"))}),
        ("not_a_list", {"png": png, "json": b'{"conversations": "hello"}'}),
        ("odd_roles", {"png": png, "json": turns(("human", "a"), ("human", "b"))}),
        (
            "lost_image",
            {
                "json": json.dumps(
                    {"image": "coco/1.jpg", "conversations": json.loads(conversation())["conversations"]}
                ).encode()
            },
        ),
        ("no_json", {"png": png}),
        ("good2", {"png": png, "json": conversation(answer="Another.")}),
    ]
    write_shard(tmp_path / "00000.tar", samples)
    keys, skipped = read_all(InstructDataModule, str(tmp_path / "00000.tar"), tokenizer=str(tokenizer_path))
    assert keys == ["good", "text_only", "leading_gpt", "good2"]
    assert skipped == {
        "bad_json": 1,
        "bad_utf8": 1,
        "empty_conversation": 3,
        "bad_conversation": 2,
        "missing_image": 1,
        "missing_text": 1,
    }


def test_reports_are_rate_limited() -> None:
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("vl_mamba.data_modules.skips")
    logger.addHandler(handler)
    try:
        counter = SkipCounter(report_interval=3600.0)
        for _ in range(50):
            counter.skip("corrupt_image", "shard:key", "bad bytes")
        counter.skip("bad_json", "shard:key2")
        assert len(records) == 2  # the first of each reason only, within the interval
        assert counter.totals == {"corrupt_image": 50, "bad_json": 1}
        assert counter.take() == {"corrupt_image": 50, "bad_json": 1}
        assert counter.take() == {}
        chatty = SkipCounter(report_interval=0.0)
        for _ in range(3):
            chatty.skip("bad_json")
        assert len(records) == 5
    finally:
        logger.removeHandler(handler)


def test_wholly_bad_data_stops_with_an_error(tmp_path: Path, tokenizer_path: Path, monkeypatch) -> None:
    write_shard(tmp_path / "00000.tar", [(f"k{i}", {"jpg": b"garbage", "txt": b"x"}) for i in range(6)])
    monkeypatch.setattr(pipeline_module, "MAX_CONSECUTIVE_SKIPS", 5)
    with pytest.raises(RuntimeError, match="in a row"):
        read_all(CaptionDataModule, str(tmp_path / "00000.tar"), tokenizer=str(tokenizer_path))
