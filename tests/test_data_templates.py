"""Conversation templates and tokenisation: the exact text each template produces, labels on answers (and the
eos after each) only, one image placeholder where LLaVA puts it, and truncation that counts visual tokens."""

from __future__ import annotations

import pytest

from data_modules.encoding import encode_conversation
from data_modules.skips import SkipSample
from data_modules.templates import (
    TEMPLATES,
    ConversationTemplate,
    generation_prompt,
    get_template,
    register_template,
)
from vl_mamba.model import IGNORE_INDEX

TURNS = [("What is in the picture?", "A black cat."), ("Where is it sitting?", "On a red sofa.")]


def labelled(ids: list[int], labels: list[int]) -> list[int]:
    assert len(ids) == len(labels)
    for token, label in zip(ids, labels):
        assert label in (IGNORE_INDEX, token)
    return [label for label in labels if label != IGNORE_INDEX]


def test_plain_is_image_then_caption_with_loss_on_caption_and_eos(text_tokenizer) -> None:
    tok = text_tokenizer
    ids, labels = encode_conversation([("ignored question", "a red cube")], get_template("plain"), tok, True, 64)
    caption = tok.encode("a red cube")
    assert ids == [tok.image_token_id, *caption, tok.eos_token_id]
    assert labels == [IGNORE_INDEX, *caption, tok.eos_token_id]


def test_vicuna_v1_matches_llava_text_and_labels_every_answer(text_tokenizer) -> None:
    tok = text_tokenizer
    ids, labels = encode_conversation(TURNS, get_template("vicuna_v1"), tok, True, 512)
    expected = (
        "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
        "detailed, and polite answers to the user's questions. USER: <image>\nWhat is in the picture? "
        "ASSISTANT: A black cat.<|endoftext|>USER: Where is it sitting? ASSISTANT: On a red sofa.<|endoftext|>"
    )
    assert tok.decode(ids, skip_special_tokens=False) == expected
    assert ids.count(tok.image_token_id) == 1
    answers = [*tok.encode(" A black cat."), tok.eos_token_id, *tok.encode(" On a red sofa."), tok.eos_token_id]
    assert labelled(ids, labels) == answers
    assert labels[-1] == tok.eos_token_id


def test_question_first_puts_the_image_after_the_first_question_only(text_tokenizer) -> None:
    tok = text_tokenizer
    template = get_template("chat_question_first")
    ids, _ = encode_conversation(TURNS, template, tok, True, 512)
    expected = (
        "USER: What is in the picture?\n<image> ASSISTANT: A black cat.<|endoftext|>"
        "USER: Where is it sitting? ASSISTANT: On a red sofa.<|endoftext|>"
    )
    assert tok.decode(ids, skip_special_tokens=False) == expected
    assert generation_prompt(template, "How many?", True) == "USER: How many?\n<image> ASSISTANT:"
    assert generation_prompt(template, "How many?", False) == "USER: How many? ASSISTANT:"


def test_text_only_sample_has_no_placeholder(text_tokenizer) -> None:
    ids, labels = encode_conversation(TURNS, get_template("vicuna_v1"), text_tokenizer, False, 512)
    assert text_tokenizer.image_token_id not in ids
    assert "USER: What is in the picture?" in text_tokenizer.decode(ids)


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_every_template_has_one_placeholder_and_learns_only_answers(text_tokenizer, name: str) -> None:
    tok = text_tokenizer
    ids, labels = encode_conversation(TURNS, get_template(name), tok, True, 512)
    assert ids.count(tok.image_token_id) == 1
    assert labels[ids.index(tok.image_token_id)] == IGNORE_INDEX
    learned = tok.decode(labelled(ids, labels))
    assert "A black cat." in learned and "On a red sofa." in learned
    assert "picture" not in learned and "sitting" not in learned
    assert labelled(ids, labels).count(tok.eos_token_id) == 2


def test_truncation_counts_visual_tokens_and_keeps_the_placeholder(text_tokenizer) -> None:
    tok = text_tokenizer
    long_answer = " ".join(["word"] * 300)
    max_length, visual = 100, 40
    ids, labels = encode_conversation(
        [("Describe.", long_answer)], get_template("vicuna_v1"), tok, True, max_length, visual
    )
    assert len(ids) == max_length - visual + 1  # the placeholder becomes `visual` tokens in the model
    assert len(ids) - 1 + visual == max_length
    assert ids.count(tok.image_token_id) == 1 and len(labels) == len(ids)
    text_ids, _ = encode_conversation([("Describe.", long_answer)], get_template("vicuna_v1"), tok, False, max_length)
    assert len(text_ids) == max_length  # no image: no visual tokens to count


def test_too_long_when_the_visual_tokens_or_answers_do_not_fit(text_tokenizer) -> None:
    template = get_template("vicuna_v1")  # about 40 prompt tokens before the placeholder
    with pytest.raises(SkipSample) as error:
        encode_conversation(TURNS, template, text_tokenizer, True, max_length=60, num_visual_tokens=40)
    assert error.value.reason == "too_long"
    with pytest.raises(SkipSample) as error:
        encode_conversation(TURNS, template, text_tokenizer, False, max_length=30)
    assert error.value.reason == "too_long"


def test_a_new_template_is_one_registration(text_tokenizer) -> None:
    template = register_template(
        "test_qa", ConversationTemplate(user="Question: {message}\nAnswer:", answer=" {message}")
    )
    try:
        ids, labels = encode_conversation([("Colour?", "Red.")], get_template("test_qa"), text_tokenizer, True, 64)
        assert (
            text_tokenizer.decode(ids, skip_special_tokens=False)
            == "Question: <image>\nColour?\nAnswer: Red.<|endoftext|>"
        )
        assert text_tokenizer.decode(labelled(ids, labels)) == " Red."
        assert template is TEMPLATES["test_qa"]
    finally:
        TEMPLATES.pop("test_qa")
    with pytest.raises(KeyError, match="registered"):
        get_template("test_qa")
