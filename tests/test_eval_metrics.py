"""The benchmark metrics on worked examples: VQA accuracy for k = 0..10 matching humans and for fewer answers,
exact match, POPE counts, MME acc / acc+, ScienceQA letters, MMBench circular groups."""

import pytest
import torch

from vl_mamba.eval.metrics import (
    MME_COGNITION,
    MME_PERCEPTION,
    ExactMatchAccuracy,
    MMBenchCircularAccuracy,
    MMEMetrics,
    POPEMetrics,
    ScienceQAAccuracy,
    VQAAccuracy,
    vqa_score,
)

# k of 10 humans agree with the prediction -> official VQA accuracy
VQA_TABLE = {0: 0.0, 1: 0.3, 2: 0.6, 3: 0.9, 4: 1.0, 5: 1.0, 6: 1.0, 7: 1.0, 8: 1.0, 9: 1.0, 10: 1.0}


@pytest.mark.parametrize("k", range(11))
def test_vqa_accuracy_k_of_10_humans(k):
    # the matching answers are written differently from the prediction; normalisation makes them equal
    answers = ["2"] * k + ["3"] * (10 - k)
    assert vqa_score("Two.", answers) == pytest.approx(VQA_TABLE[k])
    metric = VQAAccuracy()
    metric.update(["Two."], [answers])
    assert float(metric.compute()) == pytest.approx(VQA_TABLE[k])


def test_vqa_accuracy_is_the_mean_over_questions():
    metric = VQAAccuracy()
    metric.update(["yes", "dog"], [["yes"] * 10, ["dog"] + ["cat"] * 9])
    metric.update(["red"], [["blue"] * 10])
    assert float(metric.compute()) == pytest.approx((1.0 + 0.3 + 0.0) / 3)


@pytest.mark.parametrize(
    "answers, expected",
    [
        (["cat"], 1.0),  # one answer: exact match
        (["dog"], 0.0),
        (["cat", "dog"], 1 / 2),  # 2 <= n <= 4: k / n
        (["cat", "cat"], 1.0),
        (["cat", "dog", "dog"], 1 / 3),
        (["cat", "cat", "dog"], 2 / 3),
        (["cat", "cat", "cat"], 1.0),
        (["cat", "dog", "dog", "dog"], 1 / 4),
        (["cat", "cat", "cat", "dog"], 3 / 4),
        (["cat", "dog", "dog", "dog", "dog"], 4 / 15),  # n = 5: the official formula, mean of 0 and 4 x 1/3
    ],
)
def test_vqa_accuracy_fewer_than_10_answers(answers, expected):
    assert vqa_score("cat", answers) == pytest.approx(expected)


def test_vqa_accuracy_needs_answers():
    with pytest.raises(ValueError):
        vqa_score("cat", [])


def test_vqa_accuracy_per_category():
    metric = VQAAccuracy(categories=["color", "count"])
    metric.update(["red", "2", "blue"], [["red"] * 10, ["two"] * 10, ["red"] * 10], ["color", "count", "color"])
    metric.update(["three"], [["3"] * 2 + ["4"] * 8], [None])  # counts overall only
    result = metric.compute()
    assert float(result["accuracy"]) == pytest.approx((1 + 1 + 0 + 0.6) / 4)
    assert float(result["accuracy/color"]) == pytest.approx(0.5)
    assert float(result["accuracy/count"]) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="unknown categories"):
        metric.update(["x"], [["x"]], ["shape"])
    assert float(metric.compute()["accuracy"]) == pytest.approx((1 + 1 + 0 + 0.6) / 4)  # a rejected batch adds nothing
    with pytest.raises(ValueError, match="without categories"):
        VQAAccuracy().update(["x"], [["x"]], ["color"])
    with pytest.raises(ValueError, match="differ in length"):
        metric.update(["x", "y"], [["x"]])


def test_exact_match():
    metric = ExactMatchAccuracy()
    metric.update(["Yes.", "left ", "the left", "no"], ["yes", "Left", "left", "yes"])
    assert float(metric.compute()) == pytest.approx(2 / 4)


def test_exact_match_per_category():
    metric = ExactMatchAccuracy(categories=["query", "verify"])
    metric.update(["yes", "cat", "dog"], ["yes", "cat", "cow"], ["verify", "query", "query"])
    assert {k: round(float(v), 4) for k, v in metric.compute().items()} == {
        "accuracy": 0.6667,
        "accuracy/query": 0.5,
        "accuracy/verify": 1.0,
    }


def test_pope_counts_one_split():
    # TP: said yes, is yes; FP: said yes, is no; TN: said no, is no; FN: said no, is yes
    preds = ["Yes", "Yes, there is.", "yes", "Yes", "No", "There is no cat.", "no", "Not at all"]
    labels = ["yes", "yes", "yes", "no", "no", "no", "yes", "yes"]  # TP 3, FP 1, TN 2, FN 2
    metric = POPEMetrics(splits=["random"])
    metric.update(preds, labels)
    result = {k: float(v) for k, v in metric.compute().items()}
    precision, recall = 3 / 4, 3 / 5
    expected = {
        "accuracy": 5 / 8,
        "precision": precision,
        "recall": recall,
        "f1": 2 * precision * recall / (precision + recall),
        "yes_ratio": 4 / 8,
    }
    for key, value in expected.items():
        assert result[f"random/{key}"] == pytest.approx(value)
        assert result[key] == pytest.approx(value)  # one split: the mean is that split


def test_pope_per_split_and_mean():
    metric = POPEMetrics()
    metric.update(["yes", "no"], ["yes", "no"], ["random", "random"])  # perfect
    metric.update(["yes", "yes"], ["no", "yes"], ["adversarial", "adversarial"])  # TP 1, FP 1
    result = {k: float(v) for k, v in metric.compute().items()}
    assert result["random/f1"] == 1.0 and result["random/yes_ratio"] == 0.5
    assert result["adversarial/precision"] == 0.5 and result["adversarial/recall"] == 1.0
    assert result["adversarial/f1"] == pytest.approx(2 / 3)
    assert "popular/f1" not in result  # no questions, no numbers
    assert result["f1"] == pytest.approx((1 + 2 / 3) / 2)
    with pytest.raises(ValueError, match="pass splits"):
        metric.update(["yes"], ["yes"])
    with pytest.raises(ValueError, match="yes' or 'no"):
        metric.update(["yes"], ["maybe"], ["random"])


def test_pope_zero_denominators():
    metric = POPEMetrics(splits=["popular"])
    metric.update(["no", "no"], ["no", "no"])  # never says yes: precision and recall have 0 denominators
    result = metric.compute()
    assert float(result["accuracy"]) == 1.0
    assert float(result["precision"]) == 0.0 and float(result["f1"]) == 0.0


def test_mme_acc_and_acc_plus():
    metric = MMEMetrics()
    # existence: image 1 both right, image 2 one right -> acc 3/4, acc+ 1/2
    metric.update(
        ["Yes", "No", "Yes", "yes"],
        ["Yes", "No", "Yes", "No"],
        ["existence"] * 4,
        ["1.jpg", "1.jpg", "2.jpg", "2.jpg"],
    )
    # code_reasoning: an unparsable answer is wrong, so the image fails acc+ -> acc 1/2, acc+ 0
    metric.update(["The answer is yes", "no"], ["Yes", "No"], ["code_reasoning"] * 2, ["9.png", "9.png"])
    result = {k: float(v) for k, v in metric.compute().items()}
    assert result["existence/acc"] == 0.75 and result["existence/acc_plus"] == 0.5
    assert result["existence/score"] == pytest.approx(125.0)
    assert result["code_reasoning/acc"] == 0.5 and result["code_reasoning/acc_plus"] == 0.0
    assert result["code_reasoning/score"] == pytest.approx(50.0)
    assert result["perception"] == pytest.approx(125.0)
    assert result["cognition"] == pytest.approx(50.0)
    assert result["total"] == pytest.approx(175.0)
    assert "count/score" not in result


def test_mme_same_image_name_in_two_subtasks_is_two_images():
    metric = MMEMetrics()
    metric.update(["yes", "no"], ["yes", "yes"], ["color", "count"], ["1.jpg", "1.jpg"])
    result = metric.compute()
    assert float(result["color/acc_plus"]) == 1.0 and float(result["count/acc_plus"]) == 0.0


def test_mme_perfect_totals():
    metric = MMEMetrics()
    for subtask in MME_PERCEPTION + MME_COGNITION:
        metric.update(["Yes", "No"] * 2, ["yes", "no"] * 2, [subtask] * 4, ["a", "a", "b", "b"])
    result = metric.compute()
    assert float(result["perception"]) == pytest.approx(2000.0)
    assert float(result["cognition"]) == pytest.approx(800.0)
    assert all(float(result[f"{s}/score"]) == 200.0 for s in MME_PERCEPTION + MME_COGNITION)
    with pytest.raises(ValueError, match="unknown MME subtasks"):
        metric.update(["yes"], ["yes"], ["colour"], ["x"])


def test_scienceqa_letters_and_image_subset():
    metric = ScienceQAAccuracy()
    metric.update(
        ["A", "The answer is B.", "(C)", "louisiana", "E", "B"],
        ["A", "B", "B", "B", "E", "B"],
        has_image=[True, True, True, True, True, False],
        options=[["x", "y"], ["x", "y"], ["x", "y", "z"], ["Texas", "Louisiana"], ["a", "b", "c", "d"], ["p", "q"]],
    )
    result = metric.compute()
    # with an image: A right, B right, C wrong, "louisiana" -> B right, E out of range (4 options) wrong
    assert float(result["img_accuracy"]) == pytest.approx(3 / 5)
    assert float(result["accuracy"]) == pytest.approx(4 / 6)


def test_mmbench_circular_one_wrong_rotation_fails_the_group():
    metric = MMBenchCircularAccuracy()
    # group 7: three rotations, all right; group 8: four rotations, the last wrong; group 9: unparsable
    metric.update(["A", "B. x", "The answer is C"], ["A", "B", "C"], [7, 7, 7])
    metric.update(["D", "C", "B", "B"], ["D", "C", "B", "A"], [8, 8, 8, 8])
    metric.update(["I do not know", "A"], ["B", "A"], [9, 9])
    assert float(metric.compute()) == pytest.approx(1 / 3)


def test_mmbench_rotations_may_arrive_in_any_order():
    metric = MMBenchCircularAccuracy()
    metric.update(["A", "B"], ["A", "B"], [1, 2])
    metric.update(["C", "D"], ["C", "A"], [2, 1])
    metric.update(["red"], ["B"], [3], options=[["blue", "red"]])
    assert float(metric.compute()) == pytest.approx(2 / 3)  # group 1 fails, 2 and 3 pass


@pytest.mark.filterwarnings("ignore:The ``compute`` method")
def test_empty_metrics_compute_to_zero():
    assert float(VQAAccuracy().compute()) == 0.0
    assert float(MMBenchCircularAccuracy().compute()) == 0.0
    assert float(MMEMetrics().compute()["perception"]) == 0.0


def test_reset_clears_records():
    metric = MMBenchCircularAccuracy()
    metric.update(["A"], ["B"], [1])
    metric.reset()
    metric.update(["A"], ["A"], [1])
    assert metric.compute().item() == 1.0
    assert metric.compute().dtype == torch.float64
