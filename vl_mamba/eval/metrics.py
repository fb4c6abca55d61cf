"""The benchmark metrics as torchmetrics ``Metric``s: VQA accuracy (VQAv2, TextVQA, vqa-jsonl), exact match
(GQA), POPE, MME, ScienceQA-IMG and MMBench circular accuracy.

Every metric takes the model's raw answers (strings) and does its own normalising or parsing. States are
registered with ``add_state``, so ``compute()`` under DDP reduces across ranks and sharded evaluation gives the
number one pass gives. Counts and sums are tensors reduced by "sum". MME and MMBench must see every question of
an image (acc+) or every rotation of a question (circular) together, which a rank shard may split, so they keep
one record per question in list states reduced by "cat" and group at ``compute()``. Those records are float64
(string keys are hashed to 52-bit integers, which float64 holds exactly) so that a rank that saw no question
gathers an empty tensor of the same dtype as the others. Category names given to a constructor must be the
same on every rank (they come from the benchmark reader, which reads the whole benchmark on each rank).
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from vl_mamba.eval.answer_parsing import parse_option_letter, parse_yes_no_mme, parse_yes_no_pope
from vl_mamba.eval.normalize import normalize_exact_match, normalize_vqa_answer

POPE_SPLITS: tuple[str, ...] = ("random", "popular", "adversarial")
MME_PERCEPTION: tuple[str, ...] = tuple(
    "existence count position color posters celebrity scene landmark artwork OCR".split()
)
"""The 10 perception subtasks, as MME's folders are named."""
MME_COGNITION: tuple[str, ...] = tuple(
    "commonsense_reasoning numerical_calculation text_translation code_reasoning".split()
)
"""The 4 cognition subtasks."""
MME_SUBTASKS: tuple[str, ...] = MME_PERCEPTION + MME_COGNITION


def vqa_score(prediction: str, answers: Sequence[str]) -> float:
    """VQA accuracy of one prediction against the human answers, both normalised by ``normalize_vqa_answer``.

    With n answers, the score is the mean over the n leave-one-out subsets (n - 1 answers each) of
    min(1, matches / t) with t = min(3, n - 1). For the standard n = 10 (t = 3) this is the official metric:
    k matching humans give 0, 0.3, 0.6, 0.9, 1.0 for k = 0, 1, 2, 3, 4+. With fewer answers the threshold of 3
    humans cannot be reached by a subset, so it drops to the subset size: for 2 <= n <= 4 the score is k / n,
    and agreeing with every annotator scores 1. A single answer (n = 1, no subset left) is scored by exact
    match after normalisation.

    Raises:
        ValueError: no answers.
    """
    if not answers:
        raise ValueError("vqa_score needs at least one reference answer")
    pred = normalize_vqa_answer(prediction)
    matches = [normalize_vqa_answer(answer) == pred for answer in answers]
    if len(matches) == 1:
        return float(matches[0])
    total, threshold = sum(matches), min(3, len(matches) - 1)
    return sum(min(1.0, (total - left_out) / threshold) for left_out in matches) / len(matches)


def exact_match_score(prediction: str, target: str) -> float:
    """1.0 when prediction and target agree after ``normalize_exact_match`` (GQA), else 0.0."""
    return float(normalize_exact_match(prediction) == normalize_exact_match(target))


def _stable_key(key: str | int) -> float:
    """A key as a float64-exact integer: ints in [0, 2**53) as they are, strings by a 52-bit blake2b hash (the same
    on every rank and run, unlike ``hash``)."""
    if isinstance(key, int):
        if not 0 <= key < 2**53:
            raise ValueError(f"integer keys must be in [0, 2**53), got {key}")
        return float(key)
    digest = hashlib.blake2b(str(key).encode(), digest_size=8).digest()
    return float(int.from_bytes(digest, "big") >> 12)


def _check_lengths(**columns: Sequence[Any] | None) -> None:
    lengths = {name: len(column) for name, column in columns.items() if column is not None}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"update() arguments differ in length: {lengths}")


class _CategorisedAccuracy(Metric):
    """Mean of per-question scores in [0, 1], overall and per category.

    Args:
        categories: the category names a breakdown reports (same on every rank); None for no breakdown.
        kwargs: passed to ``torchmetrics.Metric``.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, categories: Sequence[str] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.categories: tuple[str, ...] = tuple(categories or ())
        if len(set(self.categories)) != len(self.categories):
            raise ValueError(f"categories repeat a name: {self.categories}")
        self._category_index = {name: i for i, name in enumerate(self.categories)}
        num = len(self.categories)
        self.add_state("score_sum", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("category_score_sum", torch.zeros(num, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("category_count", torch.zeros(num, dtype=torch.long), dist_reduce_fx="sum")

    def _add_scores(self, scores: Sequence[float], categories: Sequence[str | None] | None) -> None:
        indexed: list[tuple[int, int | None]] = []
        if categories is not None:
            if not self.categories:
                raise ValueError(f"{type(self).__name__} was built without categories; pass categories=[...] to it")
            indexed = [(i, self._category_index.get(name)) for i, name in enumerate(categories) if name is not None]
            unknown = sorted({categories[i] for i, index in indexed if index is None})
            if unknown:
                raise ValueError(f"unknown categories {unknown}; {type(self).__name__} knows {list(self.categories)}")
        values = torch.tensor(scores, dtype=torch.float64, device=self.device)
        self.score_sum += values.sum()
        self.count += len(scores)
        if indexed:
            rows = torch.tensor([i for i, _ in indexed], device=self.device)
            index = torch.tensor([c for _, c in indexed], device=self.device)
            self.category_score_sum.index_add_(0, index, values[rows])
            self.category_count.index_add_(0, index, torch.ones_like(index))

    def compute(self) -> Tensor | dict[str, Tensor]:
        """The mean score; with categories, a dict: "accuracy" and "accuracy/<category>" for each category that
        had questions."""
        overall = self.score_sum / self.count.clamp(min=1)
        if not self.categories:
            return overall
        result = {"accuracy": overall}
        for name, total, count in zip(self.categories, self.category_score_sum, self.category_count):
            if count > 0:
                result[f"accuracy/{name}"] = total / count
        return result


class VQAAccuracy(_CategorisedAccuracy):
    """VQAv2 / TextVQA accuracy: the mean of ``vqa_score`` over questions, a fraction in [0, 1].

    Args:
        categories: category names for a per-category breakdown (e.g. VQAv2 answer types); None for none.
        kwargs: passed to ``torchmetrics.Metric``.
    """

    def update(
        self,
        preds: Sequence[str],
        answers: Sequence[Sequence[str]],
        categories: Sequence[str | None] | None = None,
    ) -> None:
        """Score a batch.

        Args:
            preds: the model's answers, one per question.
            answers: the human answers of each question (10 in VQAv2 and TextVQA; see ``vqa_score`` for fewer).
            categories: each question's category (None: overall only), when built with categories.
        """
        _check_lengths(preds=preds, answers=answers, categories=categories)
        self._add_scores([vqa_score(p, a) for p, a in zip(preds, answers)], categories)


class ExactMatchAccuracy(_CategorisedAccuracy):
    """GQA accuracy: the fraction of answers equal to the target after ``normalize_exact_match``.

    Args:
        categories: category names for a per-category breakdown; None for none.
        kwargs: passed to ``torchmetrics.Metric``.
    """

    def update(
        self,
        preds: Sequence[str],
        targets: Sequence[str],
        categories: Sequence[str | None] | None = None,
    ) -> None:
        """Score a batch.

        Args:
            preds: the model's answers.
            targets: the gold answers.
            categories: each question's category, when built with categories.
        """
        _check_lengths(preds=preds, targets=targets, categories=categories)
        self._add_scores([exact_match_score(p, t) for p, t in zip(preds, targets)], categories)


def _letter(pred: str, options: Sequence[str] | None) -> str | None:
    return parse_option_letter(pred) if options is None else parse_option_letter(pred, options=options)


def _yes_no_label(label: str) -> bool:
    value = label.strip().lower()
    if value not in ("yes", "no"):
        raise ValueError(f"labels must be 'yes' or 'no', got {label!r}")
    return value == "yes"


class POPEMetrics(Metric):
    """POPE: answers parsed by ``parse_yes_no_pope``, "yes" the positive class, scored per split.

    ``compute()`` gives, for each split with questions, "<split>/accuracy", "/precision", "/recall", "/f1" and
    "/yes_ratio" (fraction of "yes" answers), and the same five names unprefixed as the mean over those splits
    (LLaVA-1.5's single POPE number is the mean F1 of the three splits). Precision, recall and F1 are 0 where
    their denominator is 0.

    Args:
        splits: the split names (same on every rank).
        kwargs: passed to ``torchmetrics.Metric``.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, splits: Sequence[str] = POPE_SPLITS, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.splits: tuple[str, ...] = tuple(splits)
        self._split_index = {name: i for i, name in enumerate(self.splits)}
        # Per split: true positives, false positives, true negatives, false negatives.
        self.add_state("confusion", torch.zeros(len(self.splits), 4, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: Sequence[str], labels: Sequence[str], splits: Sequence[str] | None = None) -> None:
        """Count a batch.

        Args:
            preds: the model's answers (free text).
            labels: "yes" or "no" (any case).
            splits: each question's split; may be left out when the metric has a single split.
        """
        if splits is None:
            if len(self.splits) != 1:
                raise ValueError(f"pass splits=[...]: this metric scores {list(self.splits)}")
            splits = [self.splits[0]] * len(preds)
        _check_lengths(preds=preds, labels=labels, splits=splits)
        counts = [[0, 0, 0, 0] for _ in self.splits]
        for pred, label, split in zip(preds, labels, splits):
            if split not in self._split_index:
                raise ValueError(f"unknown POPE split {split!r}; this metric scores {list(self.splits)}")
            said_yes, is_yes = parse_yes_no_pope(pred) == "yes", _yes_no_label(label)
            cell = (0 if is_yes else 1) if said_yes else (3 if is_yes else 2)
            counts[self._split_index[split]][cell] += 1
        self.confusion += torch.tensor(counts, dtype=torch.long, device=self.device)

    def compute(self) -> dict[str, Tensor]:
        """Per-split and mean accuracy, precision, recall, F1 and yes-ratio."""
        result: dict[str, Tensor] = {}
        per_split: list[dict[str, Tensor]] = []
        for name, counts in zip(self.splits, self.confusion.to(torch.float64)):
            tp, fp, tn, fn = counts
            total = counts.sum()
            if total == 0:
                continue
            precision = tp / (tp + fp) if tp + fp > 0 else torch.zeros_like(tp)
            recall = tp / (tp + fn) if tp + fn > 0 else torch.zeros_like(tp)
            f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else torch.zeros_like(tp)
            scores = {
                "accuracy": (tp + tn) / total,
                "precision": precision,
                "recall": recall,
                "f1": f1,
                "yes_ratio": (tp + fp) / total,
            }
            per_split.append(scores)
            result.update({f"{name}/{key}": value for key, value in scores.items()})
        for key in ("accuracy", "precision", "recall", "f1", "yes_ratio"):
            values = [scores[key] for scores in per_split]
            result[key] = torch.stack(values).mean() if values else torch.tensor(0.0, dtype=torch.float64)
        return result


class _RecordMetric(Metric):
    """A metric that keeps one float64 record per question in list states (see the module docstring)."""

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, fields: Sequence[str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._fields = tuple(fields)
        for name in self._fields:
            self.add_state(name, default=[], dist_reduce_fx="cat")
        self.set_dtype(torch.float64)

    def _append(self, **columns: Sequence[float]) -> None:
        for name in self._fields:
            getattr(self, name).append(torch.tensor(columns[name], dtype=torch.float64, device=self.device))

    def _records(self) -> list[list[int]]:
        """The records (after any DDP sync) as rows of ints, one per question."""
        if all(isinstance(state, list) and not state for state in (getattr(self, n) for n in self._fields)):
            return []
        columns = [dim_zero_cat(getattr(self, name)).to(torch.float64).tolist() for name in self._fields]
        return [[int(value) for value in row] for row in zip(*columns)]


class MMEMetrics(_RecordMetric):
    """MME: answers parsed by ``parse_yes_no_mme`` (unparsable is wrong); acc, acc+ and score per subtask.

    For each subtask, acc is the fraction of questions answered right and acc+ the fraction of images whose
    questions (two per image in MME) are all answered right; the subtask score is (acc + acc+) * 100, at most
    200. ``compute()`` gives "<subtask>/acc", "<subtask>/acc_plus" (fractions) and "<subtask>/score" for each
    subtask with questions, "perception" (sum of the scores of the 10 perception subtasks, at most 2000),
    "cognition" (sum of the 4 cognition subtasks, at most 800) and "total" (their sum). A subtask that had no
    questions adds nothing to the sums.

    Args:
        kwargs: passed to ``torchmetrics.Metric``.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(fields=("subtask", "image", "correct"), **kwargs)

    def update(
        self,
        preds: Sequence[str],
        labels: Sequence[str],
        subtasks: Sequence[str],
        images: Sequence[str | int],
    ) -> None:
        """Record a batch.

        Args:
            preds: the model's answers.
            labels: "yes" or "no" (any case).
            subtasks: each question's subtask, one of ``MME_SUBTASKS``.
            images: each question's image key (file name or id, unique within its subtask); questions with the
                same subtask and key form an acc+ group.
        """
        _check_lengths(preds=preds, labels=labels, subtasks=subtasks, images=images)
        unknown = sorted(set(subtasks) - set(MME_SUBTASKS))
        if unknown:
            raise ValueError(f"unknown MME subtasks {unknown}; known: {list(MME_SUBTASKS)}")
        correct = [
            float(parse_yes_no_mme(pred) == ("yes" if _yes_no_label(label) else "no"))
            for pred, label in zip(preds, labels)
        ]
        self._append(
            subtask=[float(MME_SUBTASKS.index(name)) for name in subtasks],
            image=[_stable_key(key) for key in images],
            correct=correct,
        )

    def compute(self) -> dict[str, Tensor]:
        """Per-subtask acc, acc+ and score; perception, cognition and total scores."""
        questions: dict[int, list[int]] = defaultdict(list)
        images: dict[int, dict[int, bool]] = defaultdict(dict)
        for subtask, image, correct in self._records():
            questions[subtask].append(correct)
            images[subtask][image] = images[subtask].get(image, True) and bool(correct)
        result: dict[str, float] = {}
        totals = {"perception": 0.0, "cognition": 0.0}
        for index, name in enumerate(MME_SUBTASKS):
            if index not in questions:
                continue
            acc = sum(questions[index]) / len(questions[index])
            acc_plus = sum(images[index].values()) / len(images[index])
            score = (acc + acc_plus) * 100
            result.update({f"{name}/acc": acc, f"{name}/acc_plus": acc_plus, f"{name}/score": score})
            totals["perception" if name in MME_PERCEPTION else "cognition"] += score
        result.update(totals, total=totals["perception"] + totals["cognition"])
        return {key: torch.tensor(value, dtype=torch.float64) for key, value in result.items()}


class ScienceQAAccuracy(Metric):
    """ScienceQA: option-letter accuracy, answers parsed by ``parse_option_letter`` (unparsable is wrong).

    ``compute()`` gives "img_accuracy" (questions with an image: the SQA-I number) and "accuracy" (all questions
    it was given); both fractions in [0, 1].

    Args:
        kwargs: passed to ``torchmetrics.Metric``.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # [correct, total] over all questions and over those with an image.
        self.add_state("all_counts", torch.zeros(2, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("img_counts", torch.zeros(2, dtype=torch.long), dist_reduce_fx="sum")

    def update(
        self,
        preds: Sequence[str],
        answers: Sequence[str],
        has_image: Sequence[bool] | None = None,
        options: Sequence[Sequence[str]] | None = None,
    ) -> None:
        """Score a batch.

        Args:
            preds: the model's answers.
            answers: the right option letters.
            has_image: whether each question has an image; None: all do.
            options: each question's option texts (bounds the valid letters, and lets an answer that repeats an
                option's text count as that letter); None: any letter A-Z is read.
        """
        _check_lengths(preds=preds, answers=answers, has_image=has_image, options=options)
        all_counts, img_counts = [0, 0], [0, 0]
        for i, (pred, answer) in enumerate(zip(preds, answers)):
            right = int(_letter(pred, options[i] if options is not None else None) == answer.strip().upper())
            all_counts = [all_counts[0] + right, all_counts[1] + 1]
            if has_image is None or has_image[i]:
                img_counts = [img_counts[0] + right, img_counts[1] + 1]
        self.all_counts += torch.tensor(all_counts, device=self.device)
        self.img_counts += torch.tensor(img_counts, device=self.device)

    def compute(self) -> dict[str, Tensor]:
        """Accuracy on the questions with an image and on all questions."""
        return {
            "img_accuracy": self.img_counts[0] / self.img_counts[1].clamp(min=1),
            "accuracy": self.all_counts[0] / self.all_counts[1].clamp(min=1),
        }


class MMBenchCircularAccuracy(_RecordMetric):
    """MMBench circular evaluation: a question counts as right only if every rotation of its options is.

    Each rotation (the options shifted circularly, the right letter moved with them) is a separate question to
    the model; rotations of one question share a group, the original question's index (MMBench numbers
    rotations ``index + k * 1_000_000``, so the group is ``index % 1_000_000``). Answers are parsed by
    ``parse_option_letter``; unparsable is wrong. ``compute()`` gives the fraction of groups with every
    rotation right.

    Args:
        kwargs: passed to ``torchmetrics.Metric``.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(fields=("group", "correct"), **kwargs)

    def update(
        self,
        preds: Sequence[str],
        answers: Sequence[str],
        groups: Sequence[int],
        options: Sequence[Sequence[str]] | None = None,
    ) -> None:
        """Record a batch.

        Args:
            preds: the model's answers.
            answers: the right option letter of each rotation.
            groups: the original question index of each rotation.
            options: each rotation's option texts, in letter order (see ``parse_option_letter``).
        """
        _check_lengths(preds=preds, answers=answers, groups=groups, options=options)
        correct = [
            float(_letter(pred, options[i] if options is not None else None) == answer.strip().upper())
            for i, (pred, answer) in enumerate(zip(preds, answers))
        ]
        self._append(group=[_stable_key(int(g)) for g in groups], correct=correct)

    def compute(self) -> Tensor:
        """Fraction of groups whose rotations are all answered right."""
        groups: dict[int, bool] = {}
        for group, correct in self._records():
            groups[group] = groups.get(group, True) and bool(correct)
        return torch.tensor(sum(groups.values()) / max(len(groups), 1), dtype=torch.float64)
