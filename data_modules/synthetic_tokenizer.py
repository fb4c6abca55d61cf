"""A word-level ``tokenizers.Tokenizer`` for the synthetic dataset's closed vocabulary: one id per word or
punctuation run, lower-cased, with the newline kept as a token of its own (chat templates put it between the
image placeholder and the question). Special tokens come first: ``<|endoftext|>`` (0), ``<|padding|>`` (1),
``<unk>`` (2) and ``<image>`` (3), so that ``vl_mamba.tokenizer.TextTokenizer.load`` finds its defaults. The
vocabulary holds the dataset's words, common role words (``USER``, ``ASSISTANT``, ``:``), VQAv2's short-answer
prompt and the words of every registered conversation template; more come from ``extra_texts``. The decoder
joins words with single spaces, without a space before ``. ? ! , :`` or around ``'`` and newlines, so that
``decode(encode(t))`` gives ``t`` lower-cased with its spaces normalised."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

from vl_mamba.tokenizer import IMAGE_TOKEN

EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|padding|>"
UNK_TOKEN = "<unk>"
SPECIAL_TOKENS: tuple[str, ...] = (EOS_TOKEN, PAD_TOKEN, UNK_TOKEN, IMAGE_TOKEN)
# Role words and separators of the usual chat templates, and VQAv2's short-answer prompt.
TEMPLATE_TEXTS: tuple[str, ...] = (
    "USER: ASSISTANT: Human: GPT: ###",
    "Answer the question using a single word or phrase.",
    "\n",
)
_WORD_PATTERN = r"\n|\w+|[^\w\s]+"


def _normalizer() -> normalizers.Normalizer:
    return normalizers.Lowercase()


def _pre_tokenizer() -> pre_tokenizers.PreTokenizer:
    # invert=True: the pattern matches the pieces to keep; what lies between them (spaces, tabs) is dropped.
    return pre_tokenizers.Split(Regex(_WORD_PATTERN), behavior="removed", invert=True)


def words_of(texts: Iterable[str]) -> set[str]:
    """The words (after lower-casing and splitting) of ``texts``, as the tokenizer will see them."""
    normalizer, pre_tokenizer = _normalizer(), _pre_tokenizer()
    words: set[str] = set()
    for text in texts:
        words.update(piece for piece, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text)))
    return words


def template_texts() -> list[str]:
    """``TEMPLATE_TEXTS`` and the text of every registered conversation template (system prompt, role words)."""
    from data_modules.templates import MESSAGE, TEMPLATES

    texts = list(TEMPLATE_TEXTS)
    for template in TEMPLATES.values():
        texts += [template.system, template.user.replace(MESSAGE, " "), template.answer.replace(MESSAGE, " ")]
    return texts


def vocabulary(texts: Iterable[str], extra_texts: Iterable[str] = ()) -> list[str]:
    """The tokens in id order: the special tokens, then every word of ``texts``, ``template_texts()`` and
    ``extra_texts``, sorted (so that the same texts always give the same ids)."""
    words = words_of([*texts, *template_texts(), *extra_texts]) - set(SPECIAL_TOKENS)
    return [*SPECIAL_TOKENS, *sorted(words)]


def build_tokenizer(texts: Iterable[str], extra_texts: Iterable[str] = ()) -> Tokenizer:
    """A word-level tokenizer over ``vocabulary(texts, extra_texts)``.

    Args:
        texts: the dataset's questions and answers (e.g. ``synthetic_questions.all_texts(max_objects)``).
        extra_texts: more text whose words must be known, e.g. the prompt of a template not registered.
    """
    vocab = {token: i for i, token in enumerate(vocabulary(texts, extra_texts))}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token=UNK_TOKEN))
    tokenizer.normalizer = _normalizer()
    tokenizer.pre_tokenizer = _pre_tokenizer()
    tokenizer.add_special_tokens(list(SPECIAL_TOKENS))
    joins = [(" " + mark, mark) for mark in ".?!,:"] + [(" ' ", "'"), (" \n", "\n"), ("\n ", "\n")]
    tokenizer.decoder = decoders.Sequence(
        [
            decoders.WordPiece(prefix="##", cleanup=False),  # a space before every word but the first
            decoders.Fuse(),
            *(decoders.Replace(old, new) for old, new in joins),
        ]
    )
    return tokenizer


def save_tokenizer(tokenizer: Tokenizer, path: str | Path) -> Path:
    """Write ``tokenizer`` as a ``tokenizer.json`` file (``path`` may be a directory) and return the file."""
    path = Path(path)
    if path.is_dir():
        path = path / "tokenizer.json"
    tokenizer.save(str(path), pretty=True)
    return path
