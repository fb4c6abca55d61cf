"""Readers of the short-answer benchmarks (VQAv2, GQA, TextVQA, vqa-jsonl) on tiny fake copies of each layout,
and each benchmark end to end through ``get_benchmark``: read, score, write the answer file."""

import json

import pytest
from PIL import Image

from vl_mamba.eval import SHORT_ANSWER_SUFFIX, get_benchmark
from vl_mamba.eval.readers import read_gqa, read_textvqa, read_vqa_jsonl, read_vqav2


def _image(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 3), (255, 0, 0)).save(path)


def _json(path, payload):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload))


def _jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def make_vqav2_val(root):
    _json(
        root / "v2_OpenEnded_mscoco_val2014_questions.json",
        {
            "questions": [
                {"question_id": 4201, "image_id": 42, "question": "How many dogs?"},
                {"question_id": 4202, "image_id": 42, "question": "Is it sunny?"},
            ]
        },
    )
    answers = {4201: ["2"] * 6 + ["3"] * 4, 4202: ["yes"] * 10}
    types = {4201: "number", 4202: "yes/no"}
    _json(
        root / "annotations" / "v2_mscoco_val2014_annotations.json",
        {
            "annotations": [
                {
                    "question_id": qid,
                    "image_id": 42,
                    "answer_type": types[qid],
                    "question_type": "how many",
                    "multiple_choice_answer": ans[0],
                    "answers": [{"answer": a, "answer_id": i + 1} for i, a in enumerate(ans)],
                }
                for qid, ans in answers.items()
            ]
        },
    )
    _image(root / "val2014" / "COCO_val2014_000000000042.jpg")


def make_vqav2_test_dev(root, llava=False):
    test_dev = [
        {"question_id": 7001, "image_id": 70, "question": "What color is the bus?"},
        {"question_id": 7002, "image_id": 71, "question": "How many people?"},
    ]
    if llava:
        rows = [
            {
                "question_id": q["question_id"],
                "image": f"COCO_test2015_{q['image_id']:012d}.jpg",
                "text": q["question"] + "\n" + SHORT_ANSWER_SUFFIX,
                "category": "default",
            }
            for q in test_dev
        ]
        _jsonl(root / "llava_vqav2_mscoco_test-dev2015.jsonl", rows)
    else:
        _json(root / "v2_OpenEnded_mscoco_test-dev2015_questions.json", {"questions": test_dev})
    all_test = [*test_dev, {"question_id": 7999, "image_id": 79, "question": "Not in test-dev?"}]
    _json(root / "v2_OpenEnded_mscoco_test2015_questions.json", {"questions": all_test})
    for image_id in (70, 71):
        _image(root / "test2015" / f"COCO_test2015_{image_id:012d}.jpg")


def test_vqav2_val_official(tmp_path):
    make_vqav2_val(tmp_path)
    samples = read_vqav2(tmp_path, split="val")
    assert [s.question_id for s in samples] == [4201, 4202]
    first = samples[0]
    assert first.prompt == f"How many dogs?\n{SHORT_ANSWER_SUFFIX}"
    assert first.question == "How many dogs?"
    assert first.answers == ["2"] * 6 + ["3"] * 4
    assert first.category == "number"
    assert first.metadata["image_id"] == 42 and first.metadata["multiple_choice_answer"] == "2"
    assert first.image == tmp_path / "val2014" / "COCO_val2014_000000000042.jpg"
    assert first.load_image().size == (4, 3)


def test_vqav2_val_end_to_end(tmp_path):
    make_vqav2_val(tmp_path)
    bench = get_benchmark("vqav2", tmp_path)
    samples = bench.read()
    assert bench.can_score(samples)
    metric = bench.make_metric(samples)
    bench.update(metric, samples, ["three", "Yes"])  # 4 of 10 humans said 3 -> 1.0; yes -> 1.0
    assert bench.scores(metric) == {"accuracy": 1.0, "accuracy/number": 1.0, "accuracy/yes/no": 1.0}
    metric = bench.make_metric(samples)
    bench.update(metric, samples, ["four", "no"])
    assert bench.scores(metric)["accuracy"] == 0.0
    assert bench.write_answers(tmp_path / "out", samples, ["2", "yes"]) is None  # val has no answer file


@pytest.mark.parametrize("llava", [False, True], ids=["official", "llava-jsonl"])
def test_vqav2_test_dev_writes_the_evalai_file(tmp_path, llava):
    make_vqav2_test_dev(tmp_path, llava=llava)
    bench = get_benchmark("vqav2", tmp_path, split="test-dev")
    samples = bench.read()
    assert [s.question_id for s in samples] == [7001, 7002]
    assert samples[0].prompt == f"What color is the bus?\n{SHORT_ANSWER_SUFFIX}"
    assert samples[1].image == tmp_path / "test2015" / "COCO_test2015_000000000071.jpg"
    assert samples[0].answers == [] and not bench.can_score(samples)
    with pytest.raises(ValueError, match="not scored offline"):
        bench.make_metric(samples)
    path = bench.write_answers(tmp_path / "out", samples, ["Red.", "Two"])
    assert json.loads(path.read_text()) == [
        {"question_id": 7001, "answer": "red"},
        {"question_id": 7002, "answer": "2"},
        {"question_id": 7999, "answer": ""},  # the rest of test2015, as EvalAI wants
    ]


def test_vqav2_prompt_suffix_and_errors(tmp_path):
    make_vqav2_val(tmp_path)
    assert get_benchmark("vqav2", tmp_path, prompt_suffix="Short answer:").read()[0].prompt == (
        "How many dogs?\nShort answer:"
    )
    with pytest.raises(TypeError):
        get_benchmark("vqav2", tmp_path, spilt="val")  # a wrong option fails when the spec is built
    with pytest.raises(ValueError, match="split"):
        read_vqav2(tmp_path, split="train")
    (tmp_path / "annotations" / "v2_mscoco_val2014_annotations.json").unlink()
    with pytest.raises(FileNotFoundError, match="annotations"):
        read_vqav2(tmp_path)


def make_gqa(root, llava_layout=False):
    base = root / "data" if llava_layout else root
    _json(
        base / "testdev_balanced_questions.json",
        {
            "201307251": {
                "imageId": "n435808",
                "question": "Is the sky blue?",
                "answer": "yes",
                "fullAnswer": "Yes, the sky is blue.",
                "types": {"structural": "verify", "semantic": "attr"},
            },
            "20968379": {
                "imageId": "n435808",
                "question": "What is on the table?",
                "answer": "cup",
                "fullAnswer": "The cup is on the table.",
                "types": {"structural": "query", "semantic": "rel"},
            },
        },
    )
    _image(base / "images" / "n435808.jpg")


@pytest.mark.parametrize("llava_layout", [False, True], ids=["official", "llava"])
def test_gqa(tmp_path, llava_layout):
    make_gqa(tmp_path, llava_layout)
    samples = read_gqa(tmp_path)
    assert [s.question_id for s in samples] == ["201307251", "20968379"]
    assert samples[0].answers == ["yes"] and samples[0].category == "verify"
    assert samples[1].metadata["full_answer"] == "The cup is on the table."
    assert samples[1].load_image() is not None
    bench = get_benchmark("gqa", tmp_path)
    metric = bench.make_metric(samples)
    bench.update(metric, samples, ["Yes.", "a cup"])  # exact match: "a cup" is not "cup"
    assert bench.scores(metric) == {"accuracy": 0.5, "accuracy/query": 0.0, "accuracy/verify": 1.0}


def make_textvqa(root, llava=False):
    answers = ["nokia"] * 7 + ["nokia phone"] * 3
    _json(
        root / "TextVQA_0.5.1_val.json",
        {
            "dataset_name": "textvqa",
            "data": [
                {
                    "question_id": 34602,
                    "image_id": "003a8ae2ef43b901",
                    "question": "what brand is the phone?",
                    "answers": answers,
                    "image_classes": ["Mobile phone"],
                },
            ],
        },
    )
    if llava:
        text = f"what brand is the phone?\nReference OCR token: NOKIA, 12:30\n{SHORT_ANSWER_SUFFIX}"
        _jsonl(
            root / "llava_textvqa_val_v051_ocr.jsonl",
            [{"question_id": 0, "image": "003a8ae2ef43b901.jpg", "text": text}],
        )
    _image(root / "train_images" / "003a8ae2ef43b901.jpg")


def test_textvqa_official_and_llava_prompts(tmp_path):
    make_textvqa(tmp_path)
    (sample,) = read_textvqa(tmp_path)
    assert sample.prompt == f"what brand is the phone?\n{SHORT_ANSWER_SUFFIX}"
    assert sample.answers[:1] == ["nokia"] and len(sample.answers) == 10
    make_textvqa(tmp_path, llava=True)
    (sample,) = read_textvqa(tmp_path)
    assert sample.prompt == f"what brand is the phone?\nReference OCR token: NOKIA, 12:30\n{SHORT_ANSWER_SUFFIX}"
    assert sample.question_id == 34602  # the official id, matched by (image, question)
    (bare,) = read_textvqa(tmp_path, use_llava_prompts=False)
    assert "OCR" not in bare.prompt
    bench = get_benchmark("textvqa", tmp_path)
    metric = bench.make_metric([sample])
    bench.update(metric, [sample], ["Nokia phone"])  # 3 of 10 humans -> 0.9
    assert bench.scores(metric) == {"accuracy": pytest.approx(0.9)}


def test_textvqa_question_missing_from_llava_file(tmp_path):
    make_textvqa(tmp_path, llava=True)
    _jsonl(tmp_path / "llava_textvqa_val_v051_ocr.jsonl", [{"question_id": 1, "image": "other.jpg", "text": "x"}])
    with pytest.raises(KeyError, match="use_llava_prompts=False"):
        read_textvqa(tmp_path)


def make_vqa_jsonl(root):
    _jsonl(
        root / "questions.jsonl",
        [
            {"question_id": "q1", "image": "images/red.png", "text": "What color is the square?", "category": "color"},
            {"question_id": "q2", "image": "images/red.png", "text": "How many squares?", "category": "count"},
            {"question_id": "q3", "image": "images/red.png", "text": "What shape is it?"},
        ],
    )
    _jsonl(
        root / "answers.jsonl",
        [
            {"question_id": "q1", "answers": ["red", "red", "dark red"]},
            {"question_id": "q2", "answers": ["one"]},
            {"question_id": "q3", "answers": "square", "category": "shape"},
        ],
    )
    _image(root / "images" / "red.png")


def test_vqa_jsonl_reader(tmp_path):
    make_vqa_jsonl(tmp_path)
    samples = read_vqa_jsonl(tmp_path)
    assert [s.question_id for s in samples] == ["q1", "q2", "q3"]
    assert samples[0].image == tmp_path / "images" / "red.png"
    assert samples[0].prompt == f"What color is the square?\n{SHORT_ANSWER_SUFFIX}"
    assert [s.category for s in samples] == ["color", "count", "shape"]  # question's, else answer's
    assert samples[2].answers == ["square"]  # a single string is a list of one
    assert all(s.answers == [] for s in read_vqa_jsonl(tmp_path, answers_file=None))


def test_vqa_jsonl_end_to_end_with_category_breakdown(tmp_path):
    make_vqa_jsonl(tmp_path)
    bench = get_benchmark("vqa-jsonl", tmp_path)
    samples = bench.read()
    metric = bench.make_metric(samples)
    assert metric.categories == ("color", "count", "shape")
    # q1: 2 of 3 annotators say red -> 2/3; q2: "1" matches "one" -> 1; q3: wrong -> 0
    bench.update(metric, samples[:2], ["Red", "1"])
    bench.update(metric, samples[2:], ["circle"])
    scores = bench.scores(metric)
    assert scores == pytest.approx(
        {"accuracy": (2 / 3 + 1) / 3, "accuracy/color": 2 / 3, "accuracy/count": 1.0, "accuracy/shape": 0.0}
    )
    assert bench.read(limit=2) == samples[:2]


def test_vqa_jsonl_missing_answer(tmp_path):
    make_vqa_jsonl(tmp_path)
    _jsonl(tmp_path / "answers.jsonl", [{"question_id": "q1", "answers": ["red"]}])
    with pytest.raises(KeyError, match="q2"):
        read_vqa_jsonl(tmp_path)
