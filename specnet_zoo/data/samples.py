"""Small real batches for profiling and figures, read in place from the shared data folder.

``sample_batch("cifar10", 128)`` streams the CIFAR-10 JPEG test archive (no extraction) and takes the
first images of every class in turn, so a batch holds all classes; ``"mnist"`` reads the idx test set.
Images are normalised with the dataset's mean and std, as the DataModules do.
"""
from __future__ import annotations

import io
import tarfile
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..paths import shared_data_dir
from .datamodules import CIFAR10DataModule, MNISTDataModule
from .sources import DataNotFoundError, read_mnist

__all__ = ["SAMPLE_DATASETS", "sample_batch"]

SAMPLE_DATASETS = ("mnist", "cifar10")


def _normalize(images: torch.Tensor, mean, std) -> torch.Tensor:
    mean = torch.tensor(mean).view(1, -1, 1, 1)
    std = torch.tensor(std).view(1, -1, 1, 1)
    return (images.float() / 255 - mean) / std


def _cifar10_jpeg(root: Path, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    archive = root / "cifar10-jpg" / "cifar10_test_jpg.tar.gz"
    if not archive.is_file():
        raise DataNotFoundError(f"no CIFAR-10 JPEG test archive at {archive}")
    per_class: dict[str, list[bytes]] = defaultdict(list)
    quota = -(-batch_size // 10)
    with tarfile.open(archive) as tar:
        for member in tar:
            parts = Path(member.name).parts
            if member.isfile() and len(parts) == 3 and len(per_class[parts[1]]) < quota:
                per_class[parts[1]].append(tar.extractfile(member).read())
    classes = sorted(per_class)
    if len(classes) != 10:
        raise DataNotFoundError(f"{archive} holds {len(classes)} class folders, expected 10")
    images, labels = [], []
    for i in range(batch_size):  # round robin over the classes
        label = i % 10
        data = per_class[classes[label]][i // 10]
        with Image.open(io.BytesIO(data)) as image:
            images.append(torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1))
        labels.append(label)
    return _normalize(torch.stack(images), CIFAR10DataModule.mean, CIFAR10DataModule.std), torch.tensor(labels)


def sample_batch(dataset: str, batch_size: int, root: str | Path | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """A normalised (N, C, H, W) float batch and its labels from the real test set.

    Args:
        dataset: "mnist" (1x28x28) or "cifar10" (3x32x32).
        batch_size: N; at most 10,000 (CIFAR-10: 1,000 per class).
        root: the shared data folder (default :func:`specnet_zoo.paths.shared_data_dir`).
    """
    if dataset not in SAMPLE_DATASETS:
        raise ValueError(f"no sample batches for {dataset!r}; expected one of {SAMPLE_DATASETS}")
    if not 1 <= batch_size <= 10_000:
        raise ValueError(f"batch_size must be in [1, 10000] (the test set's size), got {batch_size}")
    root = Path(root) if root is not None else shared_data_dir()
    if dataset == "mnist":
        images, labels = read_mnist(root / "mnist", "test")
        return _normalize(images[:batch_size], MNISTDataModule.mean, MNISTDataModule.std), labels[:batch_size].long()
    return _cifar10_jpeg(root, batch_size)
