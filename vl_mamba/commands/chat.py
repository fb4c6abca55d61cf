"""``vl-mamba chat --ckpt CKPT --image PATH [--prompt TEXT]``: ask a trained model about an image, once or
interactively (without ``--prompt``: one question per line, an empty line or Ctrl-D ends)."""

from __future__ import annotations

import argparse
import sys

from PIL import Image
from rich.console import Console

from data_modules.templates import generation_prompt, get_template
from vl_mamba.commands.loading import load_module
from vl_mamba.encoders.transforms import ImageTransform
from vl_mamba.generation import GenerationConfig, generate


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="vl-mamba chat", description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", required=True, help="checkpoint written by vl-mamba fit")
    parser.add_argument("--config", action="append", default=[], help="model config, for checkpoints without one")
    parser.add_argument("--image", help="image file (omit for a text-only question)")
    parser.add_argument("--prompt", help="question; without it, questions are read from standard input")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=0.0, help="0: greedy")
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--device", default=None)
    args = parser.parse_args(argv)
    console = Console()
    module = load_module(args.ckpt, args.config, args.device)
    template = get_template(module.hparams.get("template", "vicuna_v1"))
    image = None
    if args.image:
        with Image.open(args.image) as raw:
            image = ImageTransform(module.image_config)(raw)
    config = GenerationConfig(
        max_new_tokens=args.max_new_tokens, do_sample=args.temperature > 0,
        temperature=max(args.temperature, 1e-5), top_p=args.top_p,
    )

    def answer(question: str) -> str:
        prompt = generation_prompt(template, question, image is not None)
        return generate(module.model, module.tokenizer, [prompt], [image], config).texts[0]

    if args.prompt is not None:
        console.print(answer(args.prompt), highlight=False)
        return 0
    interactive = sys.stdin.isatty()
    while True:
        if interactive:
            console.print("[bold]question>[/bold] ", end="")
        line = sys.stdin.readline()
        if not line or not line.strip():
            return 0
        console.print(answer(line.strip()), highlight=False)
