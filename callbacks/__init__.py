"""Lightning callbacks: VQA benchmarks at epoch ends, every N steps and in ``vl-mamba test``; prediction files."""

from callbacks.prediction_writer import JsonlPredictionWriter
from callbacks.vqa_benchmark import VQABenchmarkCallback, results_table

__all__ = ["JsonlPredictionWriter", "VQABenchmarkCallback", "results_table"]
