"""``ResumableLoader``: makes a deterministic training loader resume mid-epoch where it stopped.

Lightning saves the ``state_dict`` of a training loader that has one, and hands it back on ``fit --ckpt_path``.
This wrapper records how many batches of the current epoch were consumed; after a restore, the next
iteration replays the epoch's stream and drops the batches already trained on. The wrapped loader must
produce the same stream for the same epoch (seeded by epoch, rank and worker, the epoch set through its
``sampler.set_epoch`` or ``set_epoch``, which Lightning calls and this wrapper passes on). The resumed run
therefore sees exactly the batches an uninterrupted run would have seen; replaying costs the time to read
the skipped batches once.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any


class ResumableLoader:
    """Wrap ``loader``; other attributes (``sampler``, ``dataset``, ...) are the wrapped loader's.

    Args:
        loader: an iterable of batches, deterministic for a given epoch.
    """

    def __init__(self, loader: Iterable) -> None:
        self.loader = loader
        self.consumed = 0
        self._skip = 0

    def __len__(self) -> int:
        return len(self.loader)

    def __getattr__(self, name: str) -> Any:  # sampler, dataset, set_epoch... for Lightning's inspections
        if name == "loader":
            raise AttributeError(name)
        return getattr(self.loader, name)

    def __iter__(self) -> Iterator:
        skip, self._skip = self._skip, 0
        self.consumed = 0
        for index, batch in enumerate(self.loader):
            self.consumed = index + 1
            if index >= skip:
                yield batch

    def state_dict(self) -> dict[str, int]:
        return {"consumed": self.consumed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._skip = self.consumed = int(state["consumed"])
