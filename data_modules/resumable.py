"""``ResumableLoader``: makes a deterministic data loader resume mid-epoch where it stopped.

Lightning saves the ``state_dict`` of a training loader that has one, and hands it back on ``fit --ckpt_path``.
This wrapper records the epoch and how many batches of it were consumed; after a restore, the next
iteration replays that epoch's stream (the wrapped loader must produce the same stream for the same epoch:
seeded by epoch, rank and worker) and drops the batches already trained on. The resumed run therefore sees
exactly the batches that an uninterrupted run would have seen.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any


class ResumableLoader:
    """Wrap ``loader``; ``set_epoch`` is forwarded to the loader or its dataset when they have it.

    Args:
        loader: an iterable of batches, deterministic for a given epoch.
        length: batches per epoch, when ``len(loader)`` is not defined.
    """

    def __init__(self, loader: Iterable, length: int | None = None) -> None:
        self.loader = loader
        self.length = length
        self.epoch = 0
        self.consumed = 0
        self._skip = 0
        self._restored = False

    def __len__(self) -> int:
        return self.length if self.length is not None else len(self.loader)

    def __getattr__(self, name: str) -> Any:  # dataset, batch_size, num_workers... for Lightning's inspections
        if name == "loader":
            raise AttributeError(name)
        return getattr(self.loader, name)

    def __iter__(self) -> Iterator:
        if self._restored:
            self._restored = False
        elif self.consumed:
            self.epoch += 1
        self._set_epoch(self.epoch)
        skip, self._skip = self._skip, 0
        self.consumed = 0
        for index, batch in enumerate(self.loader):
            if index < skip:
                self.consumed += 1
                continue
            self.consumed += 1
            yield batch

    def _set_epoch(self, epoch: int) -> None:
        for target in (self.loader, getattr(self.loader, "dataset", None)):
            if target is not None and hasattr(target, "set_epoch"):
                target.set_epoch(epoch)
                return

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "consumed": self.consumed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch = int(state["epoch"])
        self._skip = int(state["consumed"])
        self.consumed = self._skip
        self._restored = True
