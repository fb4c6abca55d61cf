"""Lightning callbacks: VQA benchmarks at epoch ends, every N steps and in ``vl-mamba test``; prediction files;
the demo's perception warm-up of a from-scratch encoder."""

from callbacks.perception_warmup import PerceptionWarmup
from callbacks.prediction_writer import JsonlPredictionWriter
from callbacks.vqa_benchmark import VQABenchmarkCallback, results_table

__all__ = ["JsonlPredictionWriter", "PerceptionWarmup", "VQABenchmarkCallback", "results_table"]
