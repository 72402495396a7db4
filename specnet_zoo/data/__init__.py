"""LightningDataModules and on-disk format readers (see :mod:`specnet_zoo.data.datamodules`)."""
from .datamodules import (
    CIFAR10DataModule,
    CIFAR100DataModule,
    ImageDataModule,
    ImageFolderDataModule,
    ImageNetDataModule,
    MNISTDataModule,
    ResumableDataLoader,
    SVHNDataModule,
)
from .samples import sample_batch
from .sources import DataNotFoundError

__all__ = [
    "CIFAR100DataModule",
    "CIFAR10DataModule",
    "DataNotFoundError",
    "ImageDataModule",
    "ImageFolderDataModule",
    "ImageNetDataModule",
    "MNISTDataModule",
    "ResumableDataLoader",
    "SVHNDataModule",
    "sample_batch",
]
