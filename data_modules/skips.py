"""Bad samples: the ``SkipSample`` exception that pipeline stages raise, and the ``SkipCounter`` that counts
skipped samples per reason and reports them at a limited rate, so that a broken file never stops a run.

Reasons (the keys of the counts):

- ``unreadable_shard``: a shard could not be opened (missing file, failing ``pipe:`` command, network error);
- ``truncated_tar``: a tar ended or broke mid-way (its unfinished sample is dropped, earlier ones are kept);
- ``duplicate_file``: a sample held two files with the same extension (the second is dropped);
- ``missing_text``: no caption (``.txt``) or conversation (``.json``);
- ``bad_utf8``: text that is not UTF-8;
- ``bad_json``: a ``.json`` file that does not parse;
- ``empty_conversation``: a conversation with no non-empty answer;
- ``bad_conversation``: a conversation that is not a list of human/gpt turns;
- ``missing_image``: the text refers to an image that the sample lacks (captions always need one);
- ``corrupt_image``: image bytes that do not decode;
- ``truncated_image``: image bytes that end early;
- ``huge_image``: more pixels than the decompression-bomb limit;
- ``too_long``: ``max_length`` cannot hold the text before the image with the visual tokens, or any answer token;
- ``error``: any other exception raised while preparing a sample.
"""

from __future__ import annotations

import time
from collections import Counter

from vl_mamba.utils.logging import get_logger

log = get_logger(__name__)


class SkipSample(Exception):
    """Raised by a stage for a sample that must be skipped.

    Args:
        reason: one of the reasons listed in this module's docstring.
        detail: what was wrong, for the log.
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class SkipCounter:
    """Counts skipped samples per reason; logs the first of each reason, then at most once per interval.

    Args:
        report_interval: least number of seconds between two log messages after the first of a reason.
    """

    def __init__(self, report_interval: float = 60.0) -> None:
        self.report_interval = report_interval
        self.totals: Counter[str] = Counter()
        self._pending: Counter[str] = Counter()
        self._last_report = float("-inf")

    def skip(self, reason: str, where: str = "", detail: str = "") -> None:
        """Count one skipped sample (or shard) and log it if the rate limit allows."""
        self.totals[reason] += 1
        self._pending[reason] += 1
        now = time.monotonic()
        if self.totals[reason] == 1 or now - self._last_report >= self.report_interval:
            self._last_report = now
            log.warning("skipped %s (%s) %s; skipped so far: %s", where, reason, detail, dict(self.totals))

    def take(self) -> dict[str, int]:
        """Counts since the previous call, per reason (reasons with none are left out)."""
        counts = dict(self._pending)
        self._pending.clear()
        return counts
