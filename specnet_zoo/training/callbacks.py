"""Small Lightning callbacks used by the CLI."""
from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import lightning as L
import torch

from ..profiling import MB, SavedTensorRecorder, tensors_in, unique_bytes

__all__ = ["EpochTimer", "MemoryMonitor", "hardware_summary"]


def hardware_summary(trainer: L.Trainer) -> dict:
    """What a run trains on: device name, device count, precision, torch version (for model cards)."""
    device = trainer.strategy.root_device
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"{platform.processor() or platform.machine()} CPU ({os.cpu_count()} cores)"
    return dict(device=name, devices=trainer.world_size, precision=str(trainer.precision), torch=torch.__version__)


class EpochTimer(L.Callback):
    """Log the wall time of every training epoch (validation excluded) as ``time/train_epoch_s``.

    An epoch resumed part-way from a checkpoint is not timed (it would look short). At the start of
    ``fit`` it writes ``hardware.json`` (:func:`hardware_summary`) into the logger's folder.
    """

    def __init__(self) -> None:
        self._start: float | None = None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        log_dir = trainer.log_dir  # a broadcast under DDP: every rank must ask
        if trainer.is_global_zero and log_dir:
            folder = Path(log_dir)
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "hardware.json").write_text(json.dumps(hardware_summary(trainer)) + "\n")

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._start is not None:
            pl_module.log("time/train_epoch_s", time.perf_counter() - self._start, on_epoch=True, rank_zero_only=True)
        self._start = None


class MemoryMonitor(L.Callback):
    """Log training memory once per epoch, like SpecNet's Fig. 4 (memory over training).

    On the first training batch of every ``every_n_epochs``-th epoch, the batch's real forward is
    watched by :class:`~specnet_zoo.profiling.SavedTensorRecorder` (no extra step is run), and these
    are logged (MB): ``memory/saved_activations_mb``, ``memory/params_mb``, ``memory/grads_mb``,
    ``memory/optimizer_mb``, on CUDA ``memory/step_peak_mb`` (``max_memory_allocated`` above the
    step's start), and ``density/<layer>`` for every spectral convolution when ``log_densities``.
    Sparse spectra change as the weights train, so saved bytes and densities move between epochs.
    """

    def __init__(self, every_n_epochs: int = 1, log_densities: bool = True) -> None:
        if every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be >= 1, got {every_n_epochs}")
        self.every_n_epochs = every_n_epochs
        self.log_densities = log_densities
        self._recorder: SavedTensorRecorder | None = None
        self._saved: int | None = None
        self._start: int | None = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx != 0 or trainer.current_epoch % self.every_n_epochs:
            return
        exclude = [*pl_module.parameters(), *pl_module.buffers(), *tensors_in(batch)]
        self._recorder = SavedTensorRecorder(pl_module, exclude)
        self._recorder.__enter__()
        device = pl_module.device
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            self._start = torch.cuda.memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)

    def on_before_backward(self, trainer, pl_module, loss) -> None:
        if self._recorder is None:
            return
        self._recorder.__exit__(None, None, None)
        self._recorder.scan_graph([loss])
        self._saved = self._recorder.saved_bytes
        self._recorder = None  # drop its references before backward frees the graph

    def _stop_watching(self) -> None:
        if self._recorder is not None:
            self._recorder.__exit__(None, None, None)
            self._recorder = None

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        # A step that raises between on_train_batch_start and on_before_backward must not leave the
        # saved-tensor hooks and module hooks installed for whatever runs next in the process.
        self._stop_watching()
        self._saved = self._start = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._stop_watching()  # no backward ran (e.g. manual optimisation): stop watching
        if self._saved is None:
            return
        params = list(pl_module.parameters())
        states = [t for opt in trainer.optimizers for s in opt.state.values() for t in tensors_in(s) if t.dim() > 0]
        metrics = {
            "memory/saved_activations_mb": self._saved / MB,
            "memory/params_mb": unique_bytes(params) / MB,
            "memory/grads_mb": unique_bytes(p.grad for p in params if p.grad is not None) / MB,
            "memory/optimizer_mb": unique_bytes(states) / MB,
        }
        device = pl_module.device
        if device.type == "cuda" and self._start is not None:
            metrics["memory/step_peak_mb"] = (torch.cuda.max_memory_allocated(device) - self._start) / MB
        if self.log_densities:
            from ..layers.spectral_conv import spectral_densities

            metrics.update({f"density/{name}": value for name, value in spectral_densities(pl_module).items()})
        pl_module.log_dict(metrics, on_step=False, on_epoch=True)
        self._saved = self._start = None
