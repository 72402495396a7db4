"""``specnet-zoo fit|validate|test|predict``: LightningCLI over :class:`ImageClassifier` and the DataModules.

Defaults: CSV logging and checkpoints under ``trainer.default_root_dir`` (``outputs`` unless a recipe
sets it; checkpoints in ``<root>/checkpoints`` with ``last.ckpt``, so ``--ckpt_path last`` resumes),
TQDM progress bar, ``data.num_classes``/``data.in_chans`` linked into the model, and
``--test_after_fit true`` to evaluate the best checkpoint on the test set when ``fit`` ends.
"""
from __future__ import annotations

from pathlib import Path

from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI

from ..data import ImageDataModule
from .callbacks import EpochTimer
from .module import ImageClassifier

COMMANDS = ("fit", "validate", "test", "predict")


class SpecnetLightningCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")
        parser.link_arguments("data.in_chans", "model.in_chans", apply_on="instantiate")
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.add_lightning_class_args(EpochTimer, "epoch_timer")
        parser.set_defaults({"checkpoint.save_last": True, "checkpoint.monitor": "val/acc", "checkpoint.mode": "max",
                             "checkpoint.filename": "best-{epoch}-{step}"})
        parser.add_argument("--test_after_fit", type=bool, default=False,
                            help="after fit, test the best checkpoint (fit only)")

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand]
        root = Path(config.trainer.default_root_dir or "outputs")
        config.trainer.default_root_dir = str(root)
        if config.checkpoint.dirpath is None:
            config.checkpoint.dirpath = str(root / "checkpoints")
        if config.trainer.logger is None or config.trainer.logger is True:
            from jsonargparse import Namespace

            config.trainer.logger = Namespace(class_path="lightning.pytorch.loggers.CSVLogger",
                                              init_args=Namespace(save_dir=str(root), name="logs"))

    def after_fit(self) -> None:
        if not self.config["fit"].get("test_after_fit"):
            return
        best = self.trainer.checkpoint_callback.best_model_path if self.trainer.checkpoint_callback else ""
        self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=best or None, weights_only=True)


def cli_main(args: list[str] | None = None) -> SpecnetLightningCLI:
    """Run the LightningCLI with ``args`` (e.g. ``["fit", "--config", "recipes/mnist_speclenet.yaml"]``).

    ``None`` reads ``sys.argv`` (the ``specnet-zoo`` command), so Lightning sees one source of arguments.
    """
    return SpecnetLightningCLI(
        ImageClassifier,
        ImageDataModule,
        subclass_mode_data=True,
        args=args,
        seed_everything_default=0,
        save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=False,
    )


def run(args: list[str] | None = None) -> int:
    """The training subcommands; a diverged run prints why and exits 1 (no traceback to dig through)."""
    import sys

    from .module import DivergenceError

    try:
        cli_main(args)
    except DivergenceError as error:
        print(f"specnet-zoo: error: {error}", file=sys.stderr)
        return 1
    return 0
