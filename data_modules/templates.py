"""Conversation templates: how (question, answer) turns and the image placeholder become one token sequence,
and which tokens carry the loss. ``plain`` is LLaVA's captioning format (the placeholder, then the caption);
``vicuna_v1`` is LLaVA-1.5's chat format (``USER: ... ASSISTANT: ...``, multi-turn); ``chat`` is the same without
the system prompt, and ``chat_question_first`` puts the image after the first question instead of before it. A
new template is one ``register_template`` call.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from vl_mamba.tokenizer import IMAGE_TOKEN

MESSAGE = "{message}"


@dataclass(frozen=True)
class ConversationTemplate:
    """A conversation format. Prompt text carries no loss; answers (and the eos after each) do."""

    system: str = ""
    """Text once at the start."""
    user: str = MESSAGE
    """Format of a user turn; ``{message}`` stands for the question."""
    answer: str = MESSAGE
    """Format of an answer; ``{message}`` stands for the answer text. All of it is learned."""
    image: str = IMAGE_TOKEN + "\n"
    """Put at the start of the first user message of a sample that has an image (at its end when
    ``image_after_question``)."""
    image_after_question: bool = False
    """Put ``image`` after the first question rather than before it."""
    keep_questions: bool = True
    """False for captioning: questions are dropped, only the image and the answers remain."""
    eos_after_answer: bool = True
    """End every answer with the tokenizer's eos token (learned, so that generation stops)."""

    def segments(self, turns: list[tuple[str, str]], has_image: bool) -> Iterator[tuple[str, bool]]:
        """Yield (text, is_answer) pieces in order; the encoder adds eos after each answer.

        Args:
            turns: (question, answer) pairs, without image placeholders.
            has_image: put ``image`` before the first question.
        """
        for index, (question, answer) in enumerate(turns):
            message = question if self.keep_questions else ""
            if index == 0 and has_image:
                message = message + self.image if self.image_after_question else self.image + message
            prompt = self.user.replace(MESSAGE, message)
            yield (self.system + prompt if index == 0 else prompt), False
            yield self.answer.replace(MESSAGE, answer), True


TEMPLATES: dict[str, ConversationTemplate] = {}


def generation_prompt(template: ConversationTemplate, question: str, has_image: bool) -> str:
    """The text that precedes the answer in a one-turn conversation: what a model is given to answer."""
    text, _ = next(template.segments([(question, "")], has_image))
    return text


def register_template(name: str, template: ConversationTemplate) -> ConversationTemplate:
    """Make ``template`` available to configs as ``template: <name>``."""
    TEMPLATES[name] = template
    return template


def get_template(name: str) -> ConversationTemplate:
    """The registered template called ``name``."""
    if name not in TEMPLATES:
        raise KeyError(f"unknown conversation template {name!r}; registered: {sorted(TEMPLATES)}")
    return TEMPLATES[name]


register_template("plain", ConversationTemplate(image=IMAGE_TOKEN, keep_questions=False))
register_template("chat", ConversationTemplate(user="USER: {message} ASSISTANT:", answer=" {message}"))
# The question before the image. A recurrent language model reads the visual tokens once, in order, and keeps
# only what its fixed-size state can hold; when it has read the question first, it knows which objects and
# which relation matter while it reads them, and can keep just those, instead of a description of the whole
# image from which any later question must be answered. Only the first question of a sample comes before the
# image: one-turn samples (and the one-turn prompts of evaluation and chat) are the case this template is for.
register_template(
    "chat_question_first",
    ConversationTemplate(
        user="USER: {message} ASSISTANT:", answer=" {message}", image="\n" + IMAGE_TOKEN, image_after_question=True
    ),
)
register_template(
    "vicuna_v1",
    ConversationTemplate(
        system="A chat between a curious user and an artificial intelligence assistant. "
        "The assistant gives helpful, detailed, and polite answers to the user's questions. ",
        user="USER: {message} ASSISTANT:",
        answer=" {message}",
    ),
)
