"""Lightning callbacks: VQA benchmarks at epoch ends, every N steps and in ``vl-mamba test``."""

from callbacks.vqa_benchmark import VQABenchmarkCallback, results_table

__all__ = ["VQABenchmarkCallback", "results_table"]
