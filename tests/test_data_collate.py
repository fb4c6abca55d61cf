"""Collation: the batch format (shapes, dtypes, padding, masks, images in batch order), and a batch built from
raw samples feeding a tiny ``VLMamba`` with the right number of labelled tokens and lengths within max_length."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from data_modules.collate import collate
from data_modules.decoding import parse_conversation
from data_modules.encoding import Example, SampleEncoder
from data_modules.templates import get_template
from vl_mamba.encoders import ImageTransform
from vl_mamba.model import IGNORE_INDEX


def example(key: str, length: int, image_value: float | None) -> Example:
    ids = torch.arange(10, 10 + length)
    labels = ids.clone()
    labels[: length // 2] = IGNORE_INDEX
    pixels = None if image_value is None else torch.full((3, 8, 8), image_value)
    return Example(key=key, input_ids=ids, labels=labels, pixel_values=pixels)


def test_collate_pads_right_and_keeps_images_in_batch_order() -> None:
    batch = collate([example("a", 5, 1.0), example("b", 3, None), example("c", 7, 3.0)], pad_token_id=1)
    assert batch["input_ids"].shape == (3, 7) and batch["input_ids"].dtype == torch.long
    assert batch["labels"].shape == (3, 7) and batch["labels"].dtype == torch.long
    assert batch["attention_mask"].dtype == torch.bool
    assert batch["attention_mask"].sum(1).tolist() == [5, 3, 7]
    assert batch["input_ids"][1, 3:].tolist() == [1] * 4
    assert batch["labels"][1, 3:].tolist() == [IGNORE_INDEX] * 4
    assert batch["input_ids"][0, :5].tolist() == list(range(10, 15))
    assert batch["has_image"].tolist() == [True, False, True]
    assert batch["pixel_values"].shape == (2, 3, 8, 8)
    assert batch["pixel_values"][:, 0, 0, 0].tolist() == [1.0, 3.0]
    assert batch["keys"] == ["a", "b", "c"]


def test_collate_without_images_gives_none() -> None:
    batch = collate([example("a", 4, None), example("b", 2, None)], pad_token_id=0)
    assert batch["pixel_values"] is None
    assert not batch["has_image"].any()
    with pytest.raises(ValueError):
        collate([], pad_token_id=0)


def raw_sample(key: str, with_image: bool, turns: int) -> dict:
    conversations = []
    for turn in range(turns):
        question = ("<image>\n" if turn == 0 and with_image else "") + f"Question {turn} about the scene?"
        conversations += [{"from": "human", "value": question}, {"from": "gpt", "value": f"Answer number {turn}."}]
    sample = {"__key__": key, "json": json.dumps({"conversations": conversations}).encode()}
    if with_image:
        buffer = io.BytesIO()
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 70, 3), dtype=np.uint8)).save(buffer, "PNG")
        sample["png"] = buffer.getvalue()
    return sample


def test_batches_feed_vlmamba(text_tokenizer) -> None:
    pytest.importorskip("timm")
    from vl_mamba.connectors import VSSL2Connector
    from vl_mamba.decoders import MambaDecoder
    from vl_mamba.encoders import TimmViTEncoder
    from vl_mamba.model import VLMamba

    torch.manual_seed(0)
    encoder = TimmViTEncoder(img_size=56, model_kwargs={"embed_dim": 32, "depth": 2, "num_heads": 2, "mlp_ratio": 2.0})
    decoder = MambaDecoder(d_model=32, n_layer=2, vocab_size=50277)
    model = VLMamba(encoder, VSSL2Connector(scan="bi"), decoder, image_token_id=text_tokenizer.image_token_id)
    max_length = 64
    sample_encoder = SampleEncoder(
        parse_conversation,
        text_tokenizer,
        get_template("vicuna_v1"),
        ImageTransform(encoder.data_config),
        max_length=max_length,
        num_visual_tokens=model.num_visual_tokens,
    )
    samples = [raw_sample("a", True, 1), raw_sample("b", False, 2), raw_sample("c", True, 4)]
    batch = collate([sample_encoder(s) for s in samples], text_tokenizer.pad_token_id)
    assert batch["pixel_values"].shape == (2, 3, 56, 56)

    inputs = model.build_inputs(
        batch["input_ids"], batch["pixel_values"], batch["labels"], batch["attention_mask"], batch["has_image"]
    )
    lengths = inputs.mask.sum(1)
    text_lengths = batch["attention_mask"].sum(1)
    visual = model.num_visual_tokens
    assert lengths.tolist() == (text_lengths + batch["has_image"].long() * (visual - 1)).tolist()
    assert int(lengths.max()) <= max_length
    assert int(lengths[2]) == max_length  # the four-turn sample was cut to fit exactly

    out = model(**{k: batch[k] for k in ("input_ids", "pixel_values", "labels", "attention_mask", "has_image")})
    assert torch.isfinite(out.loss)
    assert out.num_tokens == int((batch["labels"] != IGNORE_INDEX).sum())
