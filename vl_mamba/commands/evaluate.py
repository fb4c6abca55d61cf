"""``vl-mamba eval --ckpt CKPT --benchmarks vqav2,gqa,... --data-root DIR``: score a trained model on VQA
benchmarks (each benchmark's root is ``DIR/<name>`` unless given as ``--benchmark name=PATH``), print a
table, and write predictions, scores and server answer files to ``--out``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.console import Console

from callbacks.vqa_benchmark import results_table
from data_modules.templates import generation_prompt, get_template
from vl_mamba.commands.loading import load_module
from vl_mamba.encoders.transforms import ImageTransform
from vl_mamba.eval.benchmarks import BENCHMARKS, get_benchmark
from vl_mamba.eval.runner import run_benchmark
from vl_mamba.generation import GenerationConfig


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="vl-mamba eval", description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", help="checkpoint written by vl-mamba fit")
    parser.add_argument("--config", action="append", default=[], help="model config (repeatable)")
    parser.add_argument("--benchmarks", default="", help=f"comma-separated names from {sorted(BENCHMARKS)}")
    parser.add_argument("--data-root", default=".", help="directory holding one folder per benchmark")
    parser.add_argument("--benchmark", action="append", default=[], metavar="NAME=PATH", help="explicit root")
    parser.add_argument("--limit", type=int, default=None, help="first N questions of each benchmark")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--resize", default="pad", choices=["pad", "squash", "crop"])
    parser.add_argument("--out", default="eval_results")
    parser.add_argument("--device", default=None)
    args = parser.parse_args(argv)
    roots = {name: str(Path(args.data_root) / name) for name in filter(None, args.benchmarks.split(","))}
    for item in args.benchmark:
        name, _, path = item.partition("=")
        if not path:
            parser.error(f"--benchmark takes NAME=PATH, got {item!r}")
        roots[name] = path
    if not roots:
        parser.error("name at least one benchmark (--benchmarks or --benchmark)")
    module = load_module(args.ckpt, args.config, args.device)
    template = get_template(module.hparams.get("template", "vicuna_v1"))
    transform = ImageTransform(module.image_config, resize=args.resize)
    generation = GenerationConfig(max_new_tokens=args.max_new_tokens)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for name, root in roots.items():
        spec = get_benchmark(name, root)
        samples = spec.read(args.limit)
        result = run_benchmark(
            name, spec, module.model, module.tokenizer,
            lambda question, has_image: generation_prompt(template, question, has_image),
            transform, generation, args.batch_size, samples=samples,
        )
        results.append(result)
        with open(out / f"{name}.jsonl", "w") as f:
            for record in result.predictions:
                f.write(json.dumps(record, default=str) + "\n")
        (out / f"{name}-scores.json").write_text(json.dumps(result.scores, indent=2))
        by_id = {r["question_id"]: r["prediction"] for r in result.predictions}
        spec.write_answers(out / name, samples, [by_id.get(s.question_id, "") for s in samples])
    Console().print(results_table(results, f"benchmarks ({args.ckpt or 'configs'})"))
    return 0
