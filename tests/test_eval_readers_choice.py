"""Readers of the yes/no and multiple-choice benchmarks (POPE, MME, ScienceQA, MMBench) and of MM-Vet, on tiny
fake copies of each layout, and each end to end through ``get_benchmark``."""

import base64
import csv
import io
import json
import zipfile

import pytest
from PIL import Image

from vl_mamba.eval import OPTION_LETTER_SUFFIX, SHORT_ANSWER_SUFFIX, Base64Image, get_benchmark
from vl_mamba.eval.readers import read_mmbench, read_mme, read_mmvet, read_pope, read_scienceqa


def _image(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 3), (0, 255, 0)).save(path)


def _jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def _json(path, payload):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload))


# ---------------------------------------------------------------------------------------------------- POPE


def make_pope(root):
    for split in ("random", "popular", "adversarial"):
        rows = [
            {"question_id": 1, "image": "COCO_val2014_000000310196.jpg", "text": "Is there a dog?", "label": "yes"},
            {"question_id": 2, "image": "COCO_val2014_000000310196.jpg", "text": f"Is there a {split}?", "label": "no"},
        ]
        _jsonl(root / "coco" / f"coco_pope_{split}.json", rows)
    _image(root / "val2014" / "COCO_val2014_000000310196.jpg")


def test_pope_reader_and_scores(tmp_path):
    make_pope(tmp_path)
    samples = read_pope(tmp_path)
    assert [s.question_id for s in samples][:3] == ["random-1", "random-2", "popular-1"]
    assert len(samples) == 6
    assert samples[1].prompt == f"Is there a random?\n{SHORT_ANSWER_SUFFIX}"
    assert samples[1].answers == ["no"] and samples[1].category == "random" == samples[1].metadata["split"]
    assert samples[0].load_image().size == (4, 3)
    bench = get_benchmark("pope", tmp_path)
    metric = bench.make_metric(samples)
    # random: perfect; popular: says yes to both; adversarial: "No, there is not." to both
    bench.update(metric, samples, ["Yes", "No.", "Yes", "Yes", "No, there is not.", "No, there is not."])
    scores = bench.scores(metric)
    assert scores["random/f1"] == 1.0
    assert scores["popular/accuracy"] == 0.5 and scores["popular/yes_ratio"] == 1.0
    assert scores["adversarial/recall"] == 0.0 and scores["adversarial/f1"] == 0.0
    assert bench.headline == "f1" and scores["f1"] == pytest.approx((1 + 2 / 3 + 0) / 3)


def test_pope_one_split(tmp_path):
    make_pope(tmp_path)
    bench = get_benchmark("pope", tmp_path, splits=["adversarial"])
    samples = bench.read()
    assert {s.metadata["split"] for s in samples} == {"adversarial"}
    metric = bench.make_metric(samples)
    bench.update(metric, samples, ["yes", "no"])
    assert bench.scores(metric)["f1"] == 1.0


# ---------------------------------------------------------------------------------------------------- MME


def make_mme(folder):
    """existence and code_reasoning keep image and questions side by side; artwork splits them."""
    qa = {
        ("existence", "000000006040.jpg"): [("Is there a train in this image?", "Yes"), ("Is there a bed?", "No")],
        ("code_reasoning", "0020.png"): [
            ("Does the code print 5? Please answer yes or no.", "Yes"),
            ("Does it print 6?", "No"),
        ],
        ("artwork", "10002.jpg"): [("Is this by Vermeer?", "Yes"), ("Is this by Monet?", "No")],
    }
    for (subtask, image), lines in qa.items():
        split_layout = subtask == "artwork"
        image_dir = folder / subtask / "images" if split_layout else folder / subtask
        qa_dir = folder / subtask / "questions_answers_YN" if split_layout else folder / subtask
        _image(image_dir / image)
        qa_dir.mkdir(parents=True, exist_ok=True)
        stem = image.rsplit(".", 1)[0]
        (qa_dir / f"{stem}.txt").write_text("".join(f"{q}\t{a}\n" for q, a in lines))


MME_TASKS = ["existence", "artwork", "code_reasoning"]


def test_mme_release_folder(tmp_path):
    make_mme(tmp_path / "MME_Benchmark_release_version")
    samples = read_mme(tmp_path, subtasks=MME_TASKS)
    assert [s.question_id for s in samples] == [
        "existence/000000006040.jpg/0",
        "existence/000000006040.jpg/1",
        "artwork/10002.jpg/0",
        "artwork/10002.jpg/1",
        "code_reasoning/0020.png/0",
        "code_reasoning/0020.png/1",
    ]
    art = samples[2]
    assert art.image == tmp_path / "MME_Benchmark_release_version" / "artwork" / "images" / "10002.jpg"
    assert art.prompt == f"Is this by Vermeer?\n{SHORT_ANSWER_SUFFIX}"
    assert art.answers == ["yes"] and art.category == "artwork"
    assert art.metadata == {"subtask": "artwork", "image": "10002.jpg"}
    with pytest.raises(FileNotFoundError, match="missing subtask folders"):
        read_mme(tmp_path)  # all 14 subtasks by default, and this copy has 3


def test_mme_scores(tmp_path):
    make_mme(tmp_path)
    bench = get_benchmark("mme", tmp_path, subtasks=MME_TASKS)
    samples = bench.read()
    metric = bench.make_metric(samples)
    # existence perfect; artwork one wrong -> acc 1/2, acc+ 0; code_reasoning perfect
    bench.update(metric, samples, ["Yes", "No", "Yes", "Yes", "yes", "no"])
    scores = bench.scores(metric)
    assert scores["existence/score"] == 200.0
    assert scores["artwork/acc"] == 0.5 and scores["artwork/acc_plus"] == 0.0 and scores["artwork/score"] == 50.0
    assert scores["perception"] == 250.0 and scores["cognition"] == 200.0
    assert bench.headline == "perception"


def test_mme_llava_jsonl_sets_the_questions_and_order(tmp_path):
    make_mme(tmp_path / "MME_Benchmark_release_version")
    rows = [
        {
            "question_id": "artwork/10002.jpg",
            "image": "artwork/10002.jpg",
            "category": "artwork",
            "text": f"Is this by Monet?\n{SHORT_ANSWER_SUFFIX}",
        },
        {
            "question_id": "existence/000000006040.jpg",
            "image": "existence/000000006040.jpg",
            "category": "existence",
            "text": f"Is there a train in this image?\n{SHORT_ANSWER_SUFFIX}",
        },
    ]
    _jsonl(tmp_path / "llava_mme.jsonl", rows)
    samples = read_mme(tmp_path, subtasks=MME_TASKS)
    assert [s.question_id for s in samples] == ["artwork/10002.jpg/1", "existence/000000006040.jpg/0"]
    assert [s.answers for s in samples] == [["no"], ["yes"]]
    _jsonl(tmp_path / "llava_mme.jsonl", [{**rows[0], "text": "Is this by Dali?"}])
    with pytest.raises(KeyError, match="not in the MME release folder"):
        read_mme(tmp_path, subtasks=MME_TASKS)


# ---------------------------------------------------------------------------------------------------- ScienceQA


def make_scienceqa(root, llava=False):
    problems = {
        "4": {
            "question": "Which state is farthest north?",
            "choices": ["West Virginia", "Louisiana", "Arizona"],
            "answer": 0,
            "hint": "",
            "image": "image.png",
            "subject": "social science",
            "grade": "grade2",
            "topic": "geography",
            "split": "test",
        },
        "5": {
            "question": "Which is a mammal?",
            "choices": ["frog", "cow"],
            "answer": 1,
            "hint": "Mammals have fur.",
            "image": "image.png",
            "subject": "natural science",
            "split": "test",
        },
        "6": {
            "question": "Which word is a noun?",
            "choices": ["run", "table"],
            "answer": 1,
            "hint": "",
            "image": None,
            "subject": "language science",
            "split": "test",
        },
        "7": {"question": "Train question", "choices": ["a", "b"], "answer": 0, "image": "image.png", "split": "train"},
    }
    _json(root / "problems.json", problems)
    _json(root / "pid_splits.json", {"test": ["4", "5", "6"], "train": ["7"]})
    for pid in ("4", "5"):
        _image(root / "images" / "test" / pid / "image.png")
    if llava:
        value = "<image>\nContext: none\nWhich state is farthest north?\nA. West Virginia\nB. Louisiana\nC. Arizona"
        _json(
            root / "llava_test_CQM-A.json",
            [
                {
                    "id": "4",
                    "image": "4/image.png",
                    "conversations": [{"from": "human", "value": value}, {"from": "gpt", "value": "A"}],
                }
            ],
        )


def test_scienceqa_img_reader(tmp_path):
    make_scienceqa(tmp_path)
    samples = read_scienceqa(tmp_path)
    assert [s.question_id for s in samples] == ["4", "5"]  # SQA-I: only the questions with an image
    assert samples[0].prompt == (
        f"Which state is farthest north?\nA. West Virginia\nB. Louisiana\nC. Arizona\n{OPTION_LETTER_SUFFIX}"
    )
    assert samples[1].prompt.startswith("Context: Mammals have fur.\nWhich is a mammal?\nA. frog\nB. cow\n")
    assert samples[0].answers == ["A"] and samples[1].answers == ["B"]
    assert samples[1].category == "natural science"
    assert samples[0].metadata["options"] == ["West Virginia", "Louisiana", "Arizona"]
    assert samples[0].image == tmp_path / "images" / "test" / "4" / "image.png"
    everything = read_scienceqa(tmp_path, image_only=False)
    assert [s.question_id for s in everything] == ["4", "5", "6"] and everything[2].image is None


def test_scienceqa_llava_prompts_and_scores(tmp_path):
    make_scienceqa(tmp_path, llava=True)
    bench = get_benchmark("scienceqa", tmp_path, image_only=False)
    samples = bench.read()
    assert samples[0].prompt.startswith("Context: none\nWhich state")  # taken from the CQM-A file
    assert samples[1].prompt.startswith("Context: Mammals have fur.")  # not in that file: built
    metric = bench.make_metric(samples)
    bench.update(metric, samples, ["A", "The answer is A.", "table"])  # right, wrong, right (option text)
    assert bench.scores(metric) == pytest.approx({"img_accuracy": 0.5, "accuracy": 2 / 3})


# ---------------------------------------------------------------------------------------------------- MMBench

MMBENCH_COLUMNS = [
    "index",
    "question",
    "hint",
    "A",
    "B",
    "C",
    "D",
    "answer",
    "category",
    "image",
    "source",
    "l2-category",
    "comment",
    "split",
]


def _b64_png(color):
    buffer = io.BytesIO()
    Image.new("RGB", (5, 5), color).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def make_mmbench_tsv(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, delimiter="\t")
        writer.writerow(MMBENCH_COLUMNS)
        for row in rows:
            writer.writerow([row.get(column, "") for column in MMBENCH_COLUMNS])


def mmbench_rows():
    return [
        {
            "index": 0,
            "question": "What color is it?",
            "hint": "nan",
            "A": "red",
            "B": "green",
            "C": "blue",
            "D": "black",
            "answer": "B",
            "category": "attribute",
            "image": _b64_png((0, 255, 0)),
        },
        {
            "index": 1,
            "question": "Is it square?",
            "hint": "Look closely.",
            "A": "yes",
            "B": "no",
            "C": "nan",
            "D": "",
            "answer": "A",
            "category": "shape",
            "image": "0",
        },  # the image of row 0
    ]


def test_mmbench_reader_makes_rotations(tmp_path):
    make_mmbench_tsv(tmp_path / "mmbench_dev_20230712.tsv", mmbench_rows())
    samples = read_mmbench(tmp_path)
    assert [s.question_id for s in samples] == [0, 1_000_000, 2_000_000, 3_000_000, 1, 1_000_001]
    assert [s.metadata["group"] for s in samples] == [0, 0, 0, 0, 1, 1]
    # rotation k shifts the options left by k; the answer letter follows "green"
    assert samples[1].metadata["options"] == ["green", "blue", "black", "red"]
    assert [s.answers[0] for s in samples] == ["B", "A", "D", "C", "A", "B"]
    assert samples[1].prompt == (f"What color is it?\nA. green\nB. blue\nC. black\nD. red\n{OPTION_LETTER_SUFFIX}")
    assert samples[4].prompt.startswith("Look closely.\nIs it square?\nA. yes\nB. no\n")
    assert isinstance(samples[0].image, Base64Image)
    assert samples[0].load_image().getpixel((0, 0)) == (0, 255, 0)
    assert samples[5].load_image().getpixel((0, 0)) == (0, 255, 0)  # by reference to row 0
    assert [s.question_id for s in read_mmbench(tmp_path / "mmbench_dev_20230712.tsv", rotate=False)] == [0, 1]


def test_mmbench_file_with_rotations_is_read_as_is(tmp_path):
    rows = mmbench_rows()[:1]
    rows.append(
        {
            **rows[0],
            "index": 1_000_000,
            "A": "green",
            "B": "blue",
            "C": "black",
            "D": "red",
            "answer": "A",
            "image": "0",
        }
    )
    make_mmbench_tsv(tmp_path / "MMBench_DEV_EN.tsv", rows)
    samples = read_mmbench(tmp_path)
    assert [(s.question_id, s.metadata["group"], s.metadata["rotation"]) for s in samples] == [
        (0, 0, 0),
        (1_000_000, 0, 1),
    ]


def test_mmbench_circular_scores_and_submission(tmp_path):
    make_mmbench_tsv(tmp_path / "mmbench_dev_20230712.tsv", mmbench_rows())
    bench = get_benchmark("mmbench", tmp_path)
    samples = bench.read()
    metric = bench.make_metric(samples)
    bench.update(metric, samples, ["B", "A", "D", "C", "A", "B"])
    assert bench.scores(metric) == {"circular_accuracy": 1.0}
    metric = bench.make_metric(samples)
    # question 0: its last rotation wrong; question 1: "yes" is option B of its second rotation, right
    bench.update(metric, samples, ["B", "A", "D", "A", "A. yes", "yes"])
    assert bench.scores(metric) == {"circular_accuracy": 0.5}
    path = bench.write_answers(tmp_path / "out", samples, ["B"] * 6)
    assert path.name == "mmbench_submission.xlsx" and zipfile.is_zipfile(path)


def test_mmbench_test_split_has_no_answers(tmp_path):
    rows = [{k: v for k, v in row.items() if k != "answer"} for row in mmbench_rows()]
    make_mmbench_tsv(tmp_path / "test.tsv", rows)
    bench = get_benchmark("mmbench", tmp_path / "test.tsv")
    samples = bench.read()
    assert len(samples) == 6 and not bench.can_score(samples)


# ---------------------------------------------------------------------------------------------------- MM-Vet


def test_mmvet_official_and_llava(tmp_path):
    _json(
        tmp_path / "mm-vet.json",
        {
            "v1_0": {
                "imagename": "v1_0.png",
                "question": "What is x in the equation?",
                "answer": "-1<AND>-5",
                "capability": ["ocr", "math"],
            }
        },
    )
    _image(tmp_path / "images" / "v1_0.png")
    bench = get_benchmark("mmvet", tmp_path)
    (sample,) = bench.read()
    assert sample.question_id == "v1_0" and sample.prompt == "What is x in the equation?"  # no suffix
    assert sample.metadata["capability"] == ["ocr", "math"]
    assert not bench.can_score([sample])
    path = bench.write_answers(tmp_path / "out", [sample], [" x = -1 "])
    assert json.loads(path.read_text()) == {"v1_0": "x = -1"}
    (tmp_path / "mm-vet.json").unlink()
    _jsonl(tmp_path / "llava-mm-vet.jsonl", [{"question_id": 0, "image": "v1_0.png", "text": "What is x?"}])
    (sample,) = read_mmvet(tmp_path)
    assert sample.question_id == "v1_0" and sample.image == tmp_path / "images" / "v1_0.png"
