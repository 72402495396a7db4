"""``ImageClassifier``: any registered model, the optimizers and schedules of both papers, torchmetrics."""
from __future__ import annotations

import math
from typing import Literal, Sequence

import lightning as L
import torch
import torch.nn.functional as F
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy

import specnet_zoo
from specnet_zoo.layers import spectralize

__all__ = ["DivergenceError", "ImageClassifier"]


class DivergenceError(RuntimeError):
    """Training produced a non-finite loss: the run is stopped rather than reported as a success."""


class ImageClassifier(L.LightningModule):
    """Classify images with ``specnet_zoo.create_model(model_name, **model_kwargs)``.

    Args:
        model_name: any timm or specnet-zoo architecture name.
        model_kwargs: extra model arguments (``threshold``, ``activation``, ``drop_rate``, ...).
        num_classes, in_chans: linked from the DataModule by the CLI.
        optimizer: 'sgd' (SpecNet: momentum 0.95; Rippel eq. 5), 'adam' (Rippel's parametrization
            runs) or 'adamw'.
        lr, momentum, weight_decay, nesterov: optimizer settings.
        scheduler: 'step' (multiply by ``gamma`` every ``step_size`` epochs; SpecNet: 50, 0.5),
            'multistep' (at ``milestones``; Rippel eq. 5: 100, 140 with 0.1), 'cosine' (to zero over
            ``trainer.max_epochs``, or per step over ``trainer.max_steps`` when only that is set; per step
            after a linear warm-up when ``warmup`` > 0), 'onecycle' (``OneCycleLR`` per step, peak ``lr``
            after ``warmup`` of the run, 0.3 when unset) or 'none'.
        warmup: fraction of the run's optimizer steps spent warming up ('cosine', 'onecycle').
        label_smoothing: cross-entropy label smoothing.
        spectral_param: learn every ``nn.Conv2d`` filter in the frequency domain (Rippel Sec. 4,
            :func:`specnet_zoo.layers.spectralize`); the function at initialisation is unchanged.

    Logs ``{train,val,test}/loss`` and ``/acc`` (top-1), plus ``/acc_top5`` when there are more than 5
    classes. ``predict_step`` returns class probabilities.

    A non-finite training or validation loss raises :class:`DivergenceError` naming the step, so a
    diverged run ends with an error (and no checkpoint of the diverged model) instead of a "best" model.
    """

    def __init__(
        self,
        model_name: str = "speclenet",
        model_kwargs: dict | None = None,
        num_classes: int = 10,
        in_chans: int | None = None,
        optimizer: Literal["sgd", "adam", "adamw"] = "sgd",
        lr: float = 0.1,
        momentum: float = 0.95,
        weight_decay: float = 0.0,
        nesterov: bool = False,
        scheduler: Literal["none", "step", "multistep", "cosine", "onecycle"] = "step",
        step_size: int = 50,
        gamma: float = 0.5,
        milestones: Sequence[int] = (100, 140),
        label_smoothing: float = 0.0,
        spectral_param: bool = False,
        warmup: float = 0.0,
    ) -> None:
        super().__init__()
        if not 0.0 <= warmup < 1.0:
            raise ValueError(f"warmup is a fraction of the run's steps in [0, 1), got {warmup}")
        self.save_hyperparameters()
        kwargs = dict(model_kwargs or {}, num_classes=num_classes)
        if in_chans is not None:
            kwargs["in_chans"] = in_chans
        self.model = specnet_zoo.create_model(model_name, **kwargs)
        if spectral_param:
            spectralize(self.model)
        metrics = {"acc": MulticlassAccuracy(num_classes, top_k=1, average="micro")}
        if num_classes > 5:
            metrics["acc_top5"] = MulticlassAccuracy(num_classes, top_k=5, average="micro")
        collection = MetricCollection(metrics)
        self.train_metrics = collection.clone(prefix="train/")
        self.val_metrics = collection.clone(prefix="val/")
        self.test_metrics = collection.clone(prefix="test/")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def _shared_step(self, batch, stage: str) -> torch.Tensor:
        images, targets = batch
        logits = self(images)
        loss = F.cross_entropy(logits, targets, label_smoothing=self.hparams.label_smoothing)
        metrics = getattr(self, f"{stage}_metrics")
        metrics.update(logits, targets)
        on_step = stage == "train"
        self.log(f"{stage}/loss", loss, on_step=on_step, on_epoch=True, prog_bar=True, batch_size=len(targets), sync_dist=not on_step)
        self.log_dict(metrics, on_step=False, on_epoch=True, prog_bar=True)
        return loss

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        loss = self._shared_step(batch, "train")
        if not torch.isfinite(loss):
            raise DivergenceError(
                f"training diverged: loss {loss.item()} at global step {self.global_step} (epoch {self.current_epoch}, "
                f"batch {batch_idx}) with lr {self.hparams.lr}; try a lower --model.lr, gradient clipping "
                "(--trainer.gradient_clip_val 1.0), a warm-up or 'adamw'"
            )
        return loss

    def on_validation_epoch_start(self) -> None:
        self._val_nonfinite = 0

    def validation_step(self, batch, batch_idx: int) -> None:
        loss = self._shared_step(batch, "val")
        if not torch.isfinite(loss):
            self._val_nonfinite += 1

    def on_validation_epoch_end(self) -> None:
        # Runs before ModelCheckpoint's on_validation_end: a non-finite model is never saved as "best".
        if getattr(self, "_val_nonfinite", 0):
            raise DivergenceError(
                f"validation loss is not finite on {self._val_nonfinite} batches after global step {self.global_step} "
                f"(epoch {self.current_epoch}); the model has diverged: try a lower --model.lr or gradient clipping "
                "(--trainer.gradient_clip_val 1.0)"
            )

    def test_step(self, batch, batch_idx: int) -> None:
        self._shared_step(batch, "test")

    def predict_step(self, batch, batch_idx: int) -> torch.Tensor:
        images = batch[0] if isinstance(batch, (list, tuple)) else batch
        return self(images).softmax(dim=-1)

    def configure_optimizers(self):
        hp = self.hparams
        params = self.parameters()
        if hp.optimizer == "sgd":
            optimizer = torch.optim.SGD(params, lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay, nesterov=hp.nesterov)
        elif hp.optimizer == "adam":
            optimizer = torch.optim.Adam(params, lr=hp.lr, weight_decay=hp.weight_decay)
        else:
            optimizer = torch.optim.AdamW(params, lr=hp.lr, weight_decay=hp.weight_decay)
        if hp.scheduler == "none":
            return optimizer
        if hp.scheduler == "step":
            scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=hp.step_size, gamma=hp.gamma)
        elif hp.scheduler == "multistep":
            scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(hp.milestones), gamma=hp.gamma)
        elif hp.scheduler == "onecycle":
            return {"optimizer": optimizer, "lr_scheduler": self._one_cycle(optimizer)}
        else:
            return {"optimizer": optimizer, "lr_scheduler": self._cosine(optimizer)}
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}

    def _total_steps(self) -> int:
        steps = self.trainer.estimated_stepping_batches
        if not 0 < steps < float("inf"):
            raise ValueError(f"scheduler={self.hparams.scheduler!r} needs a finite run: set trainer.max_epochs or "
                             "trainer.max_steps")
        return int(steps)

    def _one_cycle(self, optimizer: torch.optim.Optimizer) -> dict:
        """Warm up to ``lr`` over ``warmup`` of the run (0.3 when unset), then anneal (cosine) to lr / 1e4."""
        scheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=self.hparams.lr, total_steps=self._total_steps(), pct_start=self.hparams.warmup or 0.3,
            cycle_momentum=self.hparams.optimizer == "sgd")
        return {"scheduler": scheduler, "interval": "step"}

    def _cosine(self, optimizer: torch.optim.Optimizer) -> dict:
        """Cosine to zero over the run: per epoch over ``max_epochs``, or per step when only ``max_steps`` bounds
        it or a warm-up (linear from 0) precedes it."""
        trainer, warmup = self.trainer, self.hparams.warmup
        epoch_bound = trainer.max_epochs is not None and trainer.max_epochs > 0 and trainer.max_steps in (-1, None)
        if epoch_bound and not warmup:
            return {"scheduler": torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=trainer.max_epochs),
                    "interval": "epoch"}
        total = self._total_steps()
        if not warmup:
            return {"scheduler": torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total), "interval": "step"}
        warm = max(1, round(warmup * total))

        def factor(step: int) -> float:
            if step < warm:
                return (step + 1) / warm
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warm + 1) / (total - warm + 1))))

        return {"scheduler": torch.optim.lr_scheduler.LambdaLR(optimizer, factor), "interval": "step"}
