"""Tests of the synthetic visual-question dataset: same seed gives the same bytes, every answer re-derived from
the scene description by an independent solver (and the scene checked against the image's pixels), category and
answer balance, shards readable by WebDataset with ``sizes.json`` matching, the ``vqa-jsonl`` evaluation layout,
the tokenizer's round trip, and the cache of ``ensure_synthetic``.
"""

from __future__ import annotations

import inspect
import io
import json
import random
import re
import tarfile
from collections import Counter
from pathlib import Path

import pytest
import webdataset as wds
from PIL import Image

from data_modules import synthetic
from data_modules.synthetic import SyntheticPaths, ensure_synthetic, generate_synthetic, main
from data_modules.synthetic_questions import CATEGORIES, all_texts, sample_questions
from data_modules.synthetic_scenes import BACKGROUND, COLORS, SHAPES, Scene
from data_modules.templates import TEMPLATES, ConversationTemplate, get_template
from vl_mamba.tokenizer import TextTokenizer

SMALL = {"train_samples": 150, "eval_questions": 61, "image_size": 64, "seed": 3, "shard_size": 64, "workers": 1}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> SyntheticPaths:
    return generate_synthetic(tmp_path_factory.mktemp("synthetic") / "data", **SMALL)


def _train_samples(paths: SyntheticPaths) -> list[tuple[str, dict, bytes]]:
    samples = []
    for shard in paths.train_shards:
        with tarfile.open(shard) as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
        for name in sorted(members):
            key, ext = name.split(".", 1)
            if ext == "json":
                samples.append((key, json.loads(members[name]), members[f"{key}.png"]))
    return samples


def _eval_records(paths: SyntheticPaths) -> tuple[list[dict], list[dict], dict[str, dict]]:
    def read(name: str) -> list[dict]:
        return [json.loads(line) for line in (paths.eval_dir / name).read_text().splitlines()]

    scenes = {r["image"]: r["scene"] for r in read("scenes.jsonl")}
    return read("questions.jsonl"), read("answers.jsonl"), scenes


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def solve(question: str, scene: dict) -> str:
    """The answer to ``question`` from the scene description, written apart from the generator; it also checks
    that the question is unambiguous (a unique referent, boxes apart by the scene's gap on the asked axis)."""
    objects, gap = scene["objects"], scene["gap"]

    def only(**match: str) -> dict:
        found = [o for o in objects if all(o[k] == v for k, v in match.items())]
        assert len(found) == 1, f"{question!r} does not name one object"
        return found[0]

    if m := re.fullmatch(r"What color is the (\w+)\?", question):
        return only(shape=m[1])["color"]
    if m := re.fullmatch(r"What shape is the (\w+) object\?", question):
        return only(color=m[1])["shape"]
    if question == "How many objects are there?":
        return str(len(objects))
    if m := re.fullmatch(r"How many (\w+) objects are there\?", question):
        return str(sum(o["color"] == m[1] for o in objects))
    if m := re.fullmatch(r"How many (\w+)s are there\?", question):
        return str(sum(o["shape"] == m[1] for o in objects))
    if m := re.fullmatch(r"Is there a (\w+) (\w+)\?", question):
        return "yes" if any(o["color"] == m[1] and o["shape"] == m[2] for o in objects) else "no"
    m = re.fullmatch(r"Is the (\w+) (\w+) (left or right|left|right) of the (\w+) (\w+)\?", question)
    if m is None:
        m = re.fullmatch(r"Is the (\w+) (\w+) (above or below|above|below) the (\w+) (\w+)\?", question)
    assert m is not None, f"unknown question {question!r}"
    a, b = only(color=m[1], shape=m[2]), only(color=m[4], shape=m[5])
    axis = "x" if m[3] in ("left or right", "left", "right") else "y"
    assert abs(a[axis] - b[axis]) >= a["r"] + b["r"] + gap, f"{question!r} is a near tie"
    side = ("left" if a["x"] < b["x"] else "right") if axis == "x" else ("above" if a["y"] < b["y"] else "below")
    return side if " or " in m[3] else ("yes" if m[3] == side else "no")


def check_image(png: bytes, scene: dict) -> None:
    image = Image.open(io.BytesIO(png))
    assert image.mode == "RGB" and image.size == (scene["image_size"], scene["image_size"])
    assert image.getpixel((0, 0)) == BACKGROUND
    for o in scene["objects"]:
        assert image.getpixel((o["x"], o["y"])) == COLORS[o["color"]], o


def test_same_seed_same_bytes(dataset: SyntheticPaths, tmp_path: Path) -> None:
    again = generate_synthetic(tmp_path / "again", **SMALL)
    assert _files(again.root) == _files(dataset.root)
    other = generate_synthetic(tmp_path / "other", **{**SMALL, "seed": 4})
    assert _files(other.root)["train/00000.tar"] != _files(dataset.root)["train/00000.tar"]


def test_output_does_not_depend_on_workers(tmp_path: Path) -> None:
    args = {"train_samples": 300, "eval_questions": 3, "image_size": 32, "seed": 1, "shard_size": 300}
    one = generate_synthetic(tmp_path / "one", **args, workers=1)
    two = generate_synthetic(tmp_path / "two", **args, workers=2)
    assert _files(one.root) == _files(two.root)


def test_training_answers_are_correct(dataset: SyntheticPaths) -> None:
    samples = _train_samples(dataset)
    assert len(samples) == SMALL["train_samples"]
    for key, record, png in samples:
        assert "." not in key and record["id"] == key
        turns = record["conversations"]
        assert [t["from"] for t in turns] == ["human", "gpt"] * (len(turns) // 2) and len(turns) == 6
        assert turns[0]["value"].startswith("<image>\n")
        assert all("<image>" not in t["value"] for t in turns[1:])
        for human, gpt in zip(turns[::2], turns[1::2]):
            assert solve(human["value"].removeprefix("<image>\n"), record["scene"]) == gpt["value"]
        assert len(set(record["categories"])) == len(record["categories"])
        check_image(png, record["scene"])


def test_later_turns_do_not_repeat_named_objects(dataset: SyntheticPaths) -> None:
    """An object named in an earlier turn ("the red circle") would give away a later colour, shape or existence
    answer about it."""
    for _, record, _ in _train_samples(dataset):
        named: set[tuple[str, str]] = set()
        for human, gpt in zip(record["conversations"][::2], record["conversations"][1::2]):
            text, answer = human["value"].removeprefix("<image>\n"), gpt["value"]
            words = text[:-1].split()
            if text.startswith("Is there a"):
                assert (words[-2], words[-1]) not in named, record["conversations"]
            if text.startswith("What color is the"):
                assert all(shape != words[-1] for _, shape in named), record["conversations"]
                named.add((answer, words[-1]))
            if text.startswith("What shape is the"):
                assert all(color != words[-2] for color, _ in named), record["conversations"]
                named.add((words[-2], answer))
            if not text.startswith("Is there a") or answer == "yes":
                named |= {(c, s) for c in COLORS for s in SHAPES if f"{c} {s}" in text}


def test_balance() -> None:
    categories, answers, by_category = Counter(), Counter(), {c: Counter() for c in CATEGORIES}
    for i in range(2000):
        _, questions = sample_questions(random.Random(f"balance:{i}"), turns=3)
        for q in questions:
            categories[q.category] += 1
            answers[q.answer] += 1
            by_category[q.category][q.answer] += 1
    total = sum(categories.values())
    assert set(categories) == set(CATEGORIES)
    assert all(0.17 < n / total < 0.23 for n in categories.values()), categories
    assert answers.most_common(1)[0][1] / total < 0.16, answers.most_common(3)  # yes and no: about 14% each
    for category in ("existence", "position"):
        yes, no = by_category[category]["yes"], by_category[category]["no"]
        assert 0.42 < yes / (yes + no) < 0.58, (category, yes, no)
    for category in ("color", "shape", "count"):
        counts = by_category[category]
        mean = sum(counts.values()) / len(counts)
        assert all(0.75 < n / mean < 1.25 for n in counts.values()), (category, counts)
    assert set(by_category["count"]) == {"0", "1", "2", "3", "4"}


def test_shards_read_with_webdataset(dataset: SyntheticPaths) -> None:
    sizes = json.loads(dataset.sizes.read_text())
    assert list(sizes) == [p.name for p in dataset.train_shards] == ["00000.tar", "00001.tar", "00002.tar"]
    assert sizes == {"00000.tar": 64, "00001.tar": 64, "00002.tar": 22}
    pipeline = wds.WebDataset(dataset.train_pattern, shardshuffle=False).decode("pil")
    keys = []
    for sample in pipeline:
        keys.append(sample["__key__"])
        assert sample["png"].size == (64, 64) and sample["json"]["id"] == sample["__key__"]
    assert len(keys) == sum(sizes.values()) == len(set(keys))
    assert all("." not in key for key in keys)


def test_eval_layout(dataset: SyntheticPaths) -> None:
    questions, answers, scenes = _eval_records(dataset)
    assert len(questions) == SMALL["eval_questions"]
    assert [q["question_id"] for q in questions] == [a["question_id"] for a in answers] == list(range(61))
    train_scenes = {Scene.from_dict(record["scene"]).signature() for _, record, _ in _train_samples(dataset)}
    for q, a in zip(questions, answers):
        assert set(q) == {"question_id", "image", "text", "category"} and q["category"] in CATEGORIES
        assert re.fullmatch(r"images/\d{6}\.png", q["image"]) and (dataset.eval_dir / q["image"]).is_file()
        assert len(a["answers"]) == 10 and len(set(a["answers"])) == 1
        assert solve(q["text"], scenes[q["image"]]) == a["answers"][0]
        assert Scene.from_dict(scenes[q["image"]]).signature() not in train_scenes
    for image, scene in scenes.items():
        check_image((dataset.eval_dir / image).read_bytes(), scene)
    assert len(scenes) == len(list((dataset.eval_dir / "images").iterdir())) == 21


def test_tokenizer_round_trip(dataset: SyntheticPaths) -> None:
    tokenizer = TextTokenizer.load(dataset.root)
    assert (tokenizer.eos_token_id, tokenizer.pad_token_id, tokenizer.image_token_id) == (0, 1, 3)
    unk = tokenizer.token_to_id("<unk>")
    system = get_template("vicuna_v1").system.strip()
    texts = [
        *all_texts(max_objects=4),
        "USER: ASSISTANT:",
        "Answer the question using a single word or phrase.",
        system,
    ]
    texts += [t["value"] for _, record, _ in _train_samples(dataset) for t in record["conversations"]]
    for text in texts:
        ids = tokenizer.encode(text)
        assert unk not in ids, text
        assert tokenizer.decode(ids) == text.lower().replace("<image>", "")
    prompt = "USER: <image>\nHow many squares are there? ASSISTANT: 3"
    ids = tokenizer.encode(prompt)
    assert ids.count(tokenizer.image_token_id) == 1 and unk not in ids
    assert tokenizer.decode(ids) == "user:\nhow many squares are there? assistant: 3"
    assert len(tokenizer) == json.loads(dataset.manifest.read_text())["tokenizer"]["vocab_size"] < 80


def test_extra_texts_extend_the_vocabulary(tmp_path: Path) -> None:
    paths = generate_synthetic(tmp_path / "d", **{**SMALL, "train_samples": 4}, extra_texts=["Describe briefly."])
    tokenizer = TextTokenizer.load(paths.tokenizer)
    assert tokenizer.token_to_id("describe") is not None and tokenizer.token_to_id("briefly") is not None


def test_ensure_synthetic_reuses_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    args = {**SMALL, "train_samples": 10, "eval_questions": 6}
    first = ensure_synthetic(tmp_path, **args)
    stamp = first.manifest.stat().st_mtime_ns

    def fail(*args, **kwargs):
        raise AssertionError("generated again")

    monkeypatch.setattr(synthetic, "generate_synthetic", fail)
    second = ensure_synthetic(tmp_path, **args)
    assert second == first and first.manifest.stat().st_mtime_ns == stamp
    monkeypatch.undo()
    other = ensure_synthetic(tmp_path, **{**args, "seed": 9})
    assert other.root != first.root and other.root.parent == first.root.parent
    monkeypatch.setenv("VL_MAMBA_CACHE", str(tmp_path / "env"))
    assert ensure_synthetic(**args).root.parent == tmp_path / "env" / "synthetic"
    monkeypatch.setitem(TEMPLATES, "look", ConversationTemplate(system="Look closely. "))  # new words
    grown = ensure_synthetic(tmp_path, **args)
    assert grown.root != first.root and TextTokenizer.load(grown.tokenizer).token_to_id("closely") is not None


def test_interrupted_generation_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(synthetic, "write_eval", interrupt)
    with pytest.raises(KeyboardInterrupt):
        ensure_synthetic(tmp_path, **{**SMALL, "train_samples": 10})
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    assert ensure_synthetic(tmp_path, **{**SMALL, "train_samples": 10}).manifest.is_file()


def test_refuses_to_overwrite(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "note.txt").write_text("keep")
    with pytest.raises(FileExistsError):
        generate_synthetic(tmp_path / "d", **{**SMALL, "train_samples": 4})
    assert (tmp_path / "d" / "note.txt").read_text() == "keep"
    paths = generate_synthetic(tmp_path / "d", **{**SMALL, "train_samples": 4}, overwrite=True)
    assert not (tmp_path / "d" / "note.txt").exists() and paths.manifest.is_file()


def test_command_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    argv = ["--out", str(tmp_path / "d"), "--train-samples", "8", "--eval-questions", "5", "--image-size", "48"]
    assert main(argv) == 0
    manifest = json.loads((tmp_path / "d" / "manifest.json").read_text())
    assert manifest["args"]["image_size"] == 48 and manifest["eval"]["questions"] == 5
    assert main(argv) == 0 and "already holds" in capsys.readouterr().out
    assert main([*argv[:-1], "40"]) == 1  # a different dataset is not written over without --overwrite
    assert main([*argv[:-1], "8"]) == 1  # too small to draw: an error message, no traceback


def test_ensure_has_the_defaults_of_generate() -> None:
    def defaults(function) -> dict:
        return {k: p.default for k, p in inspect.signature(function).parameters.items() if k in SMALL}

    assert defaults(ensure_synthetic) == defaults(generate_synthetic)


def test_question_kinds_restrict_the_questions(tmp_path: Path) -> None:
    rng = random.Random(0)
    for _ in range(50):
        scene, questions = sample_questions(rng, 2, image_size=48, kinds=["count_all", "existence"])
        assert {q.category for q in questions} == {"count", "existence"}
        count = next(q for q in questions if q.category == "count")
        assert count.text == "How many objects are there?" and count.answer == str(len(scene.objects))
    with pytest.raises(ValueError, match="turns must be in 1..1"):
        sample_questions(rng, 2, kinds=["color"])
    with pytest.raises(ValueError, match="unknown question kinds"):
        sample_questions(rng, 1, kinds=["colour"])
    args = {**SMALL, "train_samples": 6, "eval_questions": 5, "turns": 1}
    paths = ensure_synthetic(tmp_path, **args, kinds=["shape"])
    assert paths.root != ensure_synthetic(tmp_path, **args).root  # a dataset of its own in the cache
    texts = [json.loads(line)["text"] for line in (paths.eval_dir / "questions.jsonl").read_text().splitlines()]
    assert len(texts) == 5 and all(re.fullmatch(r"What shape is the \w+ object\?", t) for t in texts)
    assert json.loads(paths.manifest.read_text())["args"]["kinds"] == ["shape"]
    argv = ["--out", str(tmp_path / "cli"), "--train-samples", "4", "--eval-questions", "3", "--turns", "1"]
    assert main([*argv, "--kinds", "count_all,colour"]) == 1  # an unknown kind: an error line, no traceback
    argv += ["--kinds", "count_all"]
    assert main(argv) == 0
    assert json.loads((tmp_path / "cli" / "manifest.json").read_text())["args"]["kinds"] == ["count_all"]
