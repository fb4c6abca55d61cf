"""What a shard set holds: shards and samples (against ``sizes.json``), samples with and without an image,
text tokens per sample, image sizes, formats and modes (read from the image headers, without decoding), and
the samples that could not be read, per reason. ``vl-mamba data stats DIR`` prints it."""

from __future__ import annotations

import io
import warnings
from collections import Counter
from typing import Any

import numpy as np
from PIL import Image

from data_modules.decoding import decode_json, decode_text, find_image
from data_modules.shards import count_samples, expand_shards
from data_modules.skips import SkipCounter, SkipSample
from data_modules.tar_reader import read_tar_samples
from vl_mamba.tokenizer import TextTokenizer


def sample_text(sample: dict[str, Any]) -> str:
    """All text of a sample: its caption, or every turn of its conversation."""
    if "txt" in sample:
        return decode_text(sample["txt"])
    if "json" in sample:
        record = decode_json(sample["json"])
        if isinstance(record, dict) and isinstance(record.get("conversations"), list):
            return "\n".join(str(turn.get("value", "")) for turn in record["conversations"] if isinstance(turn, dict))
        if isinstance(record, dict) and isinstance(record.get("caption"), str):
            return record["caption"]
    raise SkipSample("missing_text", "no .txt, and no conversation or caption in .json")


def summarise(values: list[int]) -> dict[str, float]:
    """min, mean, median, 95th percentile and max (empty dict for no values)."""
    if not values:
        return {}
    array = np.asarray(values, dtype=np.float64)
    return {
        "min": float(array.min()),
        "mean": float(array.mean()),
        "p50": float(np.percentile(array, 50)),
        "p95": float(np.percentile(array, 95)),
        "max": float(array.max()),
    }


def collect_stats(
    spec: str | list[str], tokenizer: TextTokenizer | None = None, max_samples: int | None = None
) -> dict[str, Any]:
    """Read a shard set and describe it.

    Args:
        spec: shards (a directory, pattern or list; see ``data_modules.shards``).
        tokenizer: counts text tokens when given.
        max_samples: stop after this many samples (the counts then describe a prefix).
    """
    urls = expand_shards(spec)
    counter = SkipCounter(report_interval=float("inf"))
    tokens: list[int] = []
    widths: list[int] = []
    heights: list[int] = []
    formats: Counter[str] = Counter()
    modes: Counter[str] = Counter()
    samples = with_image = 0
    for sample in read_tar_samples(urls, counter):
        if max_samples is not None and samples >= max_samples:
            break
        samples += 1
        where = f"{sample['__url__']}:{sample['__key__']}"
        try:
            text = sample_text(sample)
        except SkipSample as skip:
            counter.skip(skip.reason, where, skip.detail)
        else:
            if tokenizer is not None:
                tokens.append(len(tokenizer.encode(text)))
        image = find_image(sample)
        if image is None:
            continue
        with_image += 1
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                header = Image.open(io.BytesIO(image))
            widths.append(header.width)
            heights.append(header.height)
            formats[str(header.format)] += 1
            modes[header.mode] += 1
        except Image.DecompressionBombError as error:
            counter.skip("huge_image", where, str(error))
        except Exception as error:
            counter.skip("corrupt_image", where, f"{type(error).__name__}: {error}")
    return {
        "shards": len(urls),
        "samples": samples,
        "samples_in_sizes_json": count_samples(urls),
        "with_image": with_image,
        "text_only": samples - with_image,
        "text_tokens": {"total": int(sum(tokens)), **summarise(tokens)} if tokenizer is not None else None,
        "image_width": summarise(widths),
        "image_height": summarise(heights),
        "image_formats": dict(formats.most_common()),
        "image_modes": dict(modes.most_common()),
        "unreadable": dict(counter.totals),
    }
