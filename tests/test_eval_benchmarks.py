"""The benchmark registry and ``BenchmarkSpec``: names, errors, limits, and the glue between samples, metrics
and answer files (each benchmark's layouts are tested in ``test_eval_readers_*.py``)."""

import json

import pytest
from PIL import Image

from vl_mamba.eval import BENCHMARKS, OPTION_LETTER_SUFFIX, SHORT_ANSWER_SUFFIX, get_benchmark
from vl_mamba.eval.records import EvalSample


def test_registry_names():
    assert set(BENCHMARKS) == {"vqav2", "gqa", "textvqa", "pope", "mme", "scienceqa", "mmbench", "mmvet", "vqa-jsonl"}


@pytest.mark.parametrize("name", sorted(BENCHMARKS))
def test_every_benchmark_builds_a_spec_without_reading(tmp_path, name):
    bench = get_benchmark(name, tmp_path / "nowhere")  # nothing is read until read()
    assert bench.name == name
    expected = {"scienceqa": OPTION_LETTER_SUFFIX, "mmbench": OPTION_LETTER_SUFFIX, "mmvet": ""}
    assert bench.prompt_suffix == expected.get(name, SHORT_ANSWER_SUFFIX)
    assert (bench.metric_factory is None) == (name == "mmvet")
    with pytest.raises(FileNotFoundError):
        bench.read()


def test_unknown_name_and_option():
    with pytest.raises(KeyError, match="known: vqav2"):
        get_benchmark("vqa3", "/data")
    with pytest.raises(TypeError):
        get_benchmark("pope", "/data", split="random")  # pope takes splits=


@pytest.fixture
def vqa_jsonl(tmp_path):
    Image.new("RGB", (2, 2)).save(tmp_path / "im.png")
    questions = [{"question_id": i, "image": "im.png", "text": f"q{i}?", "category": "ab"[i % 2]} for i in range(5)]
    answers = [{"question_id": i, "answers": [f"a{i}"] * 10} for i in range(5)]
    (tmp_path / "questions.jsonl").write_text("".join(json.dumps(q) + "\n" for q in questions))
    (tmp_path / "answers.jsonl").write_text("".join(json.dumps(a) + "\n" for a in answers))
    return tmp_path


def test_spec_read_limit_and_sharded_updates(vqa_jsonl):
    bench = get_benchmark("vqa-jsonl", vqa_jsonl)
    samples = bench.read()
    assert len(bench.read(limit=3)) == 3 and bench.read(limit=3) == samples[:3]
    preds = ["a0", "wrong", "a2", "a3", "wrong"]
    one_pass = bench.make_metric(samples)
    bench.update(one_pass, samples, preds)
    # two "ranks": strided shards, metrics built from the full list, states merged
    shards = [bench.make_metric(samples) for _ in range(2)]
    for rank, metric in enumerate(shards):
        bench.update(metric, samples[rank::2], preds[rank::2])
    shards[0].merge_state(shards[1])
    assert (
        bench.scores(shards[0])
        == bench.scores(one_pass)
        == pytest.approx({"accuracy": 3 / 5, "accuracy/a": 2 / 3, "accuracy/b": 1 / 2})
    )


def test_spec_update_checks(vqa_jsonl):
    bench = get_benchmark("vqa-jsonl", vqa_jsonl)
    samples = bench.read()
    metric = bench.make_metric(samples)
    with pytest.raises(ValueError, match="predictions"):
        bench.update(metric, samples, ["a0"])
    with pytest.raises(ValueError, match="no reference answers"):
        bench.update(metric, [EvalSample(9, "q?")], ["x"])
    assert not bench.can_score([*samples, EvalSample(9, "q?")])
    assert bench.write_answers(vqa_jsonl / "out", samples, ["x"] * 5) is None
