"""Benchmark readers: each reads a local copy of one benchmark (official files or LLaVA's eval layout) into a
list of ``EvalSample``."""

from vl_mamba.eval.readers.gqa import read_gqa
from vl_mamba.eval.readers.mmbench import read_mmbench
from vl_mamba.eval.readers.mme import read_mme
from vl_mamba.eval.readers.mmvet import read_mmvet
from vl_mamba.eval.readers.pope import read_pope
from vl_mamba.eval.readers.scienceqa import read_scienceqa
from vl_mamba.eval.readers.textvqa import read_textvqa
from vl_mamba.eval.readers.vqa_jsonl import read_vqa_jsonl
from vl_mamba.eval.readers.vqav2 import read_vqav2

__all__ = [
    "read_gqa",
    "read_mmbench",
    "read_mme",
    "read_mmvet",
    "read_pope",
    "read_scienceqa",
    "read_textvqa",
    "read_vqa_jsonl",
    "read_vqav2",
]
