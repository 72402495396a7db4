"""Small Lightning callbacks used by the CLI."""
from __future__ import annotations

import time

import lightning as L

__all__ = ["EpochTimer"]


class EpochTimer(L.Callback):
    """Log the wall time of every training epoch (validation excluded) as ``time/train_epoch_s``.

    An epoch resumed part-way from a checkpoint is not timed (it would look short).
    """

    def __init__(self) -> None:
        self._start: float | None = None

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._start is not None:
            pl_module.log("time/train_epoch_s", time.perf_counter() - self._start, on_epoch=True, rank_zero_only=True)
        self._start = None
