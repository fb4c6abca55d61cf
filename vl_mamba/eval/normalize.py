"""Answer normalisation for scoring: the VQAv2 / TextVQA rules (the official VQA evaluation's punctuation, number,
article and contraction handling) and the plain exact-match rule GQA uses.

The VQA normalisation runs, in order: newlines and tabs become spaces and the ends are stripped
(``clean_whitespace``); punctuation marks are deleted or turned into spaces and periods that are not decimal
points are removed (``strip_punctuation``); then, word by word on the lower-cased text, number words become
digits, articles are dropped and contractions written without an apostrophe get it back (``normalize_words``).
Each step is a public function so that it can be tested on its own; ``normalize_vqa_answer`` runs them all.
"""

from __future__ import annotations

import re
from functools import lru_cache

PUNCTUATION_MARKS: tuple[str, ...] = tuple(';/[]"{}()=+\\_-><@`,?!')
"""The marks the VQA evaluation removes. Periods have their own rule; apostrophes and colons are kept."""

ARTICLES: frozenset[str] = frozenset({"a", "an", "the"})

NUMBER_WORDS: dict[str, str] = {
    "none": "0",
    **{word: str(n) for n, word in enumerate("zero one two three four five six seven eight nine ten".split())},
}
"""The VQA evaluation's manual map: number words up to ten become digits, and "none" becomes "0"."""

# The official contraction table, one "written-form proper-form" pair per entry. The official table also lists
# "Im", "Ive", "Id've" and "I'dve"; those keys hold capitals and are looked up after lower-casing, so they never
# match and are left out here. "somebody'd" -> "somebodyd" (the apostrophe dropped) is the official table's.
_CONTRACTION_PAIRS = """
aint ain't | arent aren't | cant can't | couldve could've | couldnt couldn't | couldn'tve couldn't've
couldnt've couldn't've | didnt didn't | doesnt doesn't | dont don't | hadnt hadn't | hadnt've hadn't've
hadn'tve hadn't've | hasnt hasn't | havent haven't | hed he'd | hed've he'd've | he'dve he'd've | hes he's
howd how'd | howll how'll | hows how's | isnt isn't | itd it'd | itd've it'd've | it'dve it'd've | itll it'll
let's let's | maam ma'am | mightnt mightn't | mightnt've mightn't've | mightn'tve mightn't've | mightve might've
mustnt mustn't | mustve must've | neednt needn't | notve not've | oclock o'clock | oughtnt oughtn't
ow's'at 'ow's'at | 'ows'at 'ow's'at | 'ow'sat 'ow's'at | shant shan't | shed've she'd've | she'dve she'd've
she's she's | shouldve should've | shouldnt shouldn't | shouldnt've shouldn't've | shouldn'tve shouldn't've
somebody'd somebodyd | somebodyd've somebody'd've | somebody'dve somebody'd've | somebodyll somebody'll
somebodys somebody's | someoned someone'd | someoned've someone'd've | someone'dve someone'd've
someonell someone'll | someones someone's | somethingd something'd | somethingd've something'd've
something'dve something'd've | somethingll something'll | thats that's | thered there'd
thered've there'd've | there'dve there'd've | therere there're | theres there's | theyd they'd
theyd've they'd've | they'dve they'd've | theyll they'll | theyre they're | theyve they've | twas 'twas
wasnt wasn't | wed've we'd've | we'dve we'd've | weve we've | werent weren't | whatll what'll | whatre what're
whats what's | whatve what've | whens when's | whered where'd | wheres where's | whereve where've | whod who'd
whod've who'd've | who'dve who'd've | wholl who'll | whos who's | whove who've | whyll why'll | whyre why're
whys why's | wont won't | wouldve would've | wouldnt wouldn't | wouldnt've wouldn't've | wouldn'tve wouldn't've
yall y'all | yall'll y'all'll | y'allll y'all'll | yall'd've y'all'd've | y'alld've y'all'd've
y'all'dve y'all'd've | youd you'd | youd've you'd've | you'dve you'd've | youll you'll | youre you're
youve you've
"""
CONTRACTIONS: dict[str, str] = dict(
    pair.split() for line in _CONTRACTION_PAIRS.strip().splitlines() for pair in line.split("|")
)
"""Contractions written without (or with a misplaced) apostrophe -> the form the annotators' answers use."""

_DIGIT_COMMA_DIGIT = re.compile(r"\d,\d")
# The official pattern means "a period that is not a decimal point", but its look-behind is malformed, so in
# effect it removes every period not followed by a digit ("2.5" stays, "5." and "a.m" lose theirs). Published
# VQA scores come from that behaviour, so it is the one kept here.
_NON_DECIMAL_PERIOD = re.compile(r"\.(?!\d)")


def clean_whitespace(text: str) -> str:
    """Newlines and tabs become spaces; leading and trailing whitespace is stripped."""
    return text.replace("\n", " ").replace("\t", " ").strip()


def strip_punctuation(text: str) -> str:
    """Apply the VQA punctuation rules.

    Each mark of ``PUNCTUATION_MARKS`` is deleted when it touches a space somewhere in the text ("yes ," or
    "( yes") or when the text has a comma between two digits anywhere ("1,000" -> "1000"); otherwise it becomes a
    space ("black/white" -> "black white"). The test looks at the text as given, not as edited so far. Then
    every period not followed by a digit is removed ("2.5" is kept, "yes." -> "yes").
    """
    comma_in_number = _DIGIT_COMMA_DIGIT.search(text) is not None
    out = text
    for mark in PUNCTUATION_MARKS:
        if comma_in_number or f"{mark} " in text or f" {mark}" in text:
            out = out.replace(mark, "")
        else:
            out = out.replace(mark, " ")
    return _NON_DECIMAL_PERIOD.sub("", out)


def normalize_words(text: str) -> str:
    """Lower-case, split on whitespace, map number words to digits, drop articles, restore contractions.

    The number map runs before the article test and the contraction map after it, as in the official code;
    the words are joined with single spaces.
    """
    words = [NUMBER_WORDS.get(word, word) for word in text.lower().split()]
    words = [word for word in words if word not in ARTICLES]
    return " ".join(CONTRACTIONS.get(word, word) for word in words)


@lru_cache(maxsize=1 << 16)
def normalize_vqa_answer(text: str) -> str:
    """The full VQAv2 / TextVQA normalisation of one answer (prediction or human answer); cached, since human
    answers repeat across questions."""
    return normalize_words(strip_punctuation(clean_whitespace(text)))


def normalize_exact_match(text: str) -> str:
    """GQA's rule: strip whitespace, lower-case, and remove trailing periods ("Yes." -> "yes")."""
    return text.strip().lower().rstrip(".").strip()
