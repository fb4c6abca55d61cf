"""Evaluation: benchmark readers that turn local copies of VQAv2, GQA, TextVQA, POPE, MME, ScienceQA-IMG,
MMBench, MM-Vet and the project's vqa-jsonl layout into ``EvalSample`` records; the metrics that score them as
DDP-safe torchmetrics; and writers for the answer files of the benchmarks scored elsewhere.
``get_benchmark(name, root)`` ties the three together for one benchmark."""

from vl_mamba.eval.answer_parsing import parse_option_letter, parse_yes_no_mme, parse_yes_no_pope
from vl_mamba.eval.benchmarks import BENCHMARKS, BenchmarkSpec, get_benchmark
from vl_mamba.eval.metrics import (
    MME_COGNITION,
    MME_PERCEPTION,
    POPE_SPLITS,
    ExactMatchAccuracy,
    MMBenchCircularAccuracy,
    MMEMetrics,
    POPEMetrics,
    ScienceQAAccuracy,
    VQAAccuracy,
    vqa_score,
)
from vl_mamba.eval.normalize import normalize_exact_match, normalize_vqa_answer
from vl_mamba.eval.prompts import OPTION_LETTER_SUFFIX, SHORT_ANSWER_SUFFIX
from vl_mamba.eval.records import Base64Image, EvalSample
from vl_mamba.eval.writers import (
    write_mmbench_submission,
    write_mmvet_answers,
    write_predictions_jsonl,
    write_vqav2_submission,
)

__all__ = [
    "BENCHMARKS",
    "MME_COGNITION",
    "MME_PERCEPTION",
    "OPTION_LETTER_SUFFIX",
    "POPE_SPLITS",
    "SHORT_ANSWER_SUFFIX",
    "Base64Image",
    "BenchmarkSpec",
    "EvalSample",
    "ExactMatchAccuracy",
    "MMBenchCircularAccuracy",
    "MMEMetrics",
    "POPEMetrics",
    "ScienceQAAccuracy",
    "VQAAccuracy",
    "get_benchmark",
    "normalize_exact_match",
    "normalize_vqa_answer",
    "parse_option_letter",
    "parse_yes_no_mme",
    "parse_yes_no_pope",
    "vqa_score",
    "write_mmbench_submission",
    "write_mmvet_answers",
    "write_predictions_jsonl",
    "write_vqav2_submission",
]
