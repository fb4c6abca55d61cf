"""Questions about a synthetic scene, with short answers from a small closed vocabulary, in five categories:
``color`` ("What color is the circle?", asked only when one circle is present), ``shape`` ("What shape is the red
object?", only when one object is red), ``count`` ("How many squares are there?", "How many objects are
there?"), ``position`` ("Is the red circle left of the blue square?" -> yes/no, "Is the red circle above or below
the blue square?" -> above/below, asked only for pairs whose boxes are apart along that axis) and ``existence``
("Is there a green triangle?" -> yes/no, the no-questions naming an absent pair of colour and shape).

Balance: the categories of a sample's turns are drawn first, without repetition, and so are the answers of its
count (uniform over ``0..max_objects``) and existence (yes or no) questions; scenes are then drawn until one
allows them all. The other answers are drawn uniformly among those the scene allows, then a question with that
answer. In a sample of several turns no answer follows from the turns before it (a colour named earlier, an
object known to be the only circle), so that each turn must be answered from the image, as at evaluation.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from data_modules.synthetic_scenes import COLORS, SHAPES, Scene, sample_scene, separated

CATEGORIES: tuple[str, ...] = ("color", "shape", "count", "position", "existence")

TEMPLATES: dict[str, str] = {
    "color": "What color is the {shape}?",
    "shape": "What shape is the {color} object?",
    "count_shape": "How many {shape}s are there?",
    "count_color": "How many {color} objects are there?",
    "count_all": "How many objects are there?",
    "left": "Is the {a} left of the {b}?",
    "right": "Is the {a} right of the {b}?",
    "above": "Is the {a} above the {b}?",
    "below": "Is the {a} below the {b}?",
    "left_right": "Is the {a} left or right of the {b}?",
    "above_below": "Is the {a} above or below the {b}?",
    "existence": "Is there a {color} {shape}?",
}
KINDS: dict[str, tuple[str, ...]] = {
    "color": ("color",),
    "shape": ("shape",),
    "count": ("count_shape", "count_color", "count_all"),
    "position": ("left", "right", "above", "below", "left_right", "above_below"),
    "existence": ("existence",),
}
"""The question kinds (``TEMPLATES`` keys) of each category."""
YES_NO: tuple[str, str] = ("yes", "no")
DIRECTIONS: tuple[str, ...] = ("left", "right", "above", "below")
MAX_SCENE_TRIES = 1000
MAX_STALE_SCENES = 50
_CHECK_ORDER = ("count", "color", "shape", "existence", "position")  # the likeliest to reject a scene first


@dataclass(frozen=True)
class Question:
    """One question about a scene, with its category and its one correct answer."""

    category: str
    text: str
    answer: str

    @property
    def answer_type(self) -> str:
        """VQAv2's answer types: ``yes/no``, ``number`` or ``other``."""
        if self.answer in YES_NO:
            return "yes/no"
        return "number" if self.answer.isdigit() else "other"


Entry = tuple[str, dict[str, str]]  # a question kept as (template key, fields), formatted only when asked
ByAnswer = dict[str, list[Entry]]  # answer -> questions with that answer
Candidates = dict[str, ByAnswer]  # category -> ...


def question_text(entry: Entry) -> str:
    """The text of one candidate question."""
    key, fields = entry
    return TEMPLATES[key].format(**fields)


def _color_questions(scene: Scene) -> ByAnswer:
    out: ByAnswer = {}
    for shape in SHAPES:
        same = [o for o in scene.objects if o.shape == shape]
        if len(same) == 1:
            out.setdefault(same[0].color, []).append(("color", {"shape": shape}))
    return out


def _shape_questions(scene: Scene) -> ByAnswer:
    out: ByAnswer = {}
    for color in COLORS:
        same = [o for o in scene.objects if o.color == color]
        if len(same) == 1:
            out.setdefault(same[0].shape, []).append(("shape", {"color": color}))
    return out


def _count_questions(scene: Scene) -> ByAnswer:
    out: ByAnswer = {str(len(scene.objects)): [("count_all", {})]}
    for shape in SHAPES:
        count = sum(o.shape == shape for o in scene.objects)
        out.setdefault(str(count), []).append(("count_shape", {"shape": shape}))
    for color in COLORS:
        count = sum(o.color == color for o in scene.objects)
        out.setdefault(str(count), []).append(("count_color", {"color": color}))
    return out


_AXES = (("x", "left", "right", "left_right"), ("y", "above", "below", "above_below"))  # and template keys


def _position_questions(scene: Scene) -> ByAnswer:
    """Where one object is relative to another, along each axis that separates their boxes by the gap."""
    out: ByAnswer = {}
    for i, a in enumerate(scene.objects):
        for b in scene.objects[i + 1 :]:
            for axis, before, after, either in _AXES:
                if not separated(a, b, scene.gap, axis):
                    continue
                a_first = (a.x < b.x) if axis == "x" else (a.y < b.y)
                for first, second, first_side in ((a, b, a_first), (b, a, not a_first)):
                    fields = {"a": first.name, "b": second.name}
                    side = before if first_side else after
                    out.setdefault(side, []).append((either, fields))
                    out.setdefault("yes" if first_side else "no", []).append((before, fields))
                    out.setdefault("no" if first_side else "yes", []).append((after, fields))
    return out


def _existence_questions(scene: Scene) -> ByAnswer:
    present = {(o.color, o.shape) for o in scene.objects}
    out: ByAnswer = {"yes": [], "no": []}
    for color in COLORS:
        for shape in SHAPES:
            answer = "yes" if (color, shape) in present else "no"
            out[answer].append(("existence", {"color": color, "shape": shape}))
    return out


_BUILDERS = {
    "color": _color_questions,
    "shape": _shape_questions,
    "count": _count_questions,
    "position": _position_questions,
    "existence": _existence_questions,
}


def candidate_questions(scene: Scene, categories: Sequence[str] = CATEGORIES) -> Candidates:
    """Every question of ``categories`` that the scene answers without ambiguity, by category and answer."""
    return {c: _BUILDERS[c](scene) for c in categories}


class _Known:
    """What the earlier turns of a conversation tell about the scene, so that no later answer follows from them
    (a later turn must be answered from the image, as every evaluation question is)."""

    def __init__(self) -> None:
        self.present: set[tuple[str, str]] = set()  # (color, shape) pairs named or confirmed
        self.absent: set[tuple[str, str]] = set()
        self.unique: set[str] = set()  # colours and shapes of which the scene has exactly one object
        self.missing: set[str] = set()  # colours and shapes of which it has none

    def follows(self, key: str, fields: dict[str, str]) -> bool:
        """Whether the answer to this question follows from what is known."""
        if key == "color":
            return any(shape == fields["shape"] for _, shape in self.present)
        if key == "shape":
            return any(color == fields["color"] for color, _ in self.present)
        if key in ("count_shape", "count_color"):
            word = fields.get("shape") or fields["color"]
            return word in self.unique or word in self.missing
        if key == "existence":
            pair = (fields["color"], fields["shape"])
            return bool(pair in self.present or pair in self.absent or ({*pair} & (self.unique | self.missing)))
        return False

    def learn(self, key: str, fields: dict[str, str], answer: str) -> None:
        """Add what the question and its answer tell."""
        if key == "color":
            self.present.add((answer, fields["shape"]))
            self.unique.add(fields["shape"])
        elif key == "shape":
            self.present.add((fields["color"], answer))
            self.unique.add(fields["color"])
        elif key in ("count_shape", "count_color") and answer == "0":
            self.missing.add(fields.get("shape") or fields["color"])
        elif key == "existence":
            (self.present if answer == "yes" else self.absent).add((fields["color"], fields["shape"]))
        elif "a" in fields:
            self.present.update(tuple(fields[k].split(" ")) for k in ("a", "b"))


def check_kinds(kinds: Sequence[str] | None) -> tuple[str, ...]:
    """The categories that ``kinds`` (``TEMPLATES`` keys, or None for all) leave; ``ValueError`` for a bad one."""
    if kinds is None:
        return CATEGORIES
    unknown = sorted(set(kinds) - set(TEMPLATES))
    if unknown or not kinds:
        raise ValueError(f"unknown question kinds {unknown}; known: {sorted(TEMPLATES)}")
    return tuple(c for c in CATEGORIES if set(KINDS[c]) & set(kinds))


def _only(by_answer: ByAnswer, kinds: Sequence[str] | None) -> ByAnswer:
    if kinds is None:
        return by_answer
    kept = {answer: [e for e in entries if e[0] in kinds] for answer, entries in by_answer.items()}
    return {answer: entries for answer, entries in kept.items() if entries}


def sample_questions(
    rng: random.Random, turns: int, image_size: int = 64, max_objects: int = 4, kinds: Sequence[str] | None = None
) -> tuple[Scene, list[Question]]:
    """Draw a scene and ``turns`` questions about it, each of a different category and none answered by the
    turns before it.

    The categories, and the answers of the count and existence questions, are drawn first; scenes are then drawn
    until one allows them all, each time with fresh questions for the other answers. After ``MAX_STALE_SCENES``
    scenes that allow them but only with a later answer that repeats a known fact, the first such one is kept.

    Args:
        rng: the source of randomness.
        turns: number of questions, 1 to ``len(CATEGORIES)``.
        image_size: side of the image in pixels.
        max_objects: most objects in the scene.
        kinds: ask only questions of these ``TEMPLATES`` keys (e.g. ``["count_all"]``), all by default. The
            answers are then drawn among those each scene allows, without the balancing of count and existence.
    """
    categories = check_kinds(kinds)
    if not 1 <= turns <= len(categories):
        raise ValueError(f"turns must be in 1..{len(categories)} (the categories asked), got {turns}")
    plan = rng.sample(categories, turns)
    fixed = {}  # answers drawn before the scene, so that they come out uniform
    if "count" in plan and kinds is None:
        fixed["count"] = str(rng.randint(0, max_objects))
    if "existence" in plan and kinds is None:
        fixed["existence"] = rng.choice(YES_NO)
    stale: list[tuple[Scene, list[Question]]] = []
    for _ in range(MAX_SCENE_TRIES):
        scene = sample_scene(rng, image_size=image_size, max_objects=max_objects)
        candidates: Candidates = {}
        for category in sorted(plan, key=_CHECK_ORDER.index):
            by_answer = _only(_BUILDERS[category](scene), kinds)
            if not by_answer or (category in fixed and fixed[category] not in by_answer):
                break
            candidates[category] = by_answer
        if len(candidates) < len(plan):
            continue
        questions, fresh = _ask(rng, plan, fixed, candidates)
        if fresh:
            return scene, questions
        stale.append((scene, questions))
        if len(stale) == MAX_STALE_SCENES:
            break
    if not stale:
        raise RuntimeError(f"no scene of at most {max_objects} objects allows the questions {plan}")
    return stale[0]


def _ask(
    rng: random.Random, plan: list[str], fixed: dict[str, str], candidates: Candidates
) -> tuple[list[Question], bool]:
    """One question per planned category, and whether none of them is answered by the turns before it."""
    known = _Known()
    questions = []
    all_fresh = True
    for category in plan:
        by_answer = candidates[category]
        answer = fixed.get(category) or rng.choice(sorted(by_answer))
        fresh = [e for e in by_answer[answer] if not known.follows(*e)]
        all_fresh = all_fresh and bool(fresh)
        entry = rng.choice(fresh or by_answer[answer])
        known.learn(*entry, answer)
        questions.append(Question(category, question_text(entry), answer))
    return questions, all_fresh


def all_texts(max_objects: int) -> Iterator[str]:
    """Every question and answer the generator can produce (the closed vocabulary, spelled out), in a fixed
    order."""
    names = [f"{c} {s}" for c in COLORS for s in SHAPES]
    for template in TEMPLATES.values():
        if "{a}" in template:
            yield from (template.format(a=a, b=b) for a in names for b in names if a != b)
        else:  # fields that a template does not use are ignored; dict.fromkeys drops the repeats
            yield from dict.fromkeys(template.format(shape=s, color=c) for c in COLORS for s in SHAPES)
    yield from (*COLORS, *SHAPES, *YES_NO, *DIRECTIONS)
    yield from (str(n) for n in range(max_objects + 1))
