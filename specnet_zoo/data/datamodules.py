"""LightningDataModules for MNIST, CIFAR-10/100, SVHN, ImageNet and generic image folders.

Common arguments: ``data_dir``, ``batch_size``, ``num_workers``, ``val_split`` (fraction or count of the
training set held out, chosen by ``seed``), ``download``. ``num_classes`` and ``in_chans`` are known
right after construction, so the CLI links them to the model. Preprocessing follows the papers:
per-channel normalization everywhere, random crop (padding 4) + horizontal flip for CIFAR training,
no augmentation for MNIST (optional shifts) and SVHN.

Training batches come from a :class:`ResumableDataLoader`: its order depends only on (seed, epoch),
and it saves how many batches of the epoch were consumed, so a run killed mid-epoch resumes with
exactly the batches it had not seen.
"""
from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Callable, Sequence

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler, Subset
from torchvision import datasets
from torchvision.transforms import v2

from ..constants import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    CIFAR100_MEAN,
    CIFAR100_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    MNIST_MEAN,
    MNIST_STD,
    SVHN_MEAN,
    SVHN_STD,
)
from .sources import (
    DataNotFoundError,
    TensorImageDataset,
    download_with_timeout,
    extract_image_folder,
    read_cifar_batches,
    read_mnist,
    read_svhn_mat,
)

__all__ = [
    "CIFAR100DataModule",
    "CIFAR10DataModule",
    "ImageDataModule",
    "ImageFolderDataModule",
    "ImageNetDataModule",
    "MNISTDataModule",
    "ResumableDataLoader",
    "SVHNDataModule",
]



class EpochSampler(DistributedSampler):
    """Rank-aware sampler whose order depends only on (seed, epoch); can start part-way through an epoch.

    Under DDP each rank takes every ``world_size``-th index of the same permutation, so a global batch
    of ``world_size x batch_size`` holds exactly the samples of one single-process batch of that size.
    Being a ``DistributedSampler``, Lightning uses it as is instead of wrapping it.
    """

    def __init__(self, dataset: Dataset, seed: int = 0, shuffle: bool = True) -> None:
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        world, rank = (torch.distributed.get_world_size(), torch.distributed.get_rank()) if distributed else (1, 0)
        super().__init__(dataset, num_replicas=world, rank=rank, shuffle=shuffle, seed=seed, drop_last=False)
        self.skip = 0

    def __iter__(self):
        indices = list(super().__iter__())
        start, self.skip = self.skip, 0
        return iter(indices[start:])


class ResumableDataLoader(DataLoader):
    """A DataLoader over an :class:`EpochSampler` with Lightning's ``state_dict`` / ``load_state_dict``.

    The state is (epoch, batches this process yielded this epoch); loading it makes the next iteration
    skip the batches already trained on (by index, without loading them), on every rank.
    """

    def __init__(self, dataset: Dataset, batch_size: int = 1, shuffle: bool = True, seed: int = 0,
                 sampler: Sampler | None = None, **kwargs) -> None:
        self.seed = seed
        super().__init__(dataset, batch_size=batch_size, sampler=sampler or EpochSampler(dataset, seed, shuffle), **kwargs)
        self._yielded = 0

    def __iter__(self):
        self._yielded = getattr(self.sampler, "skip", 0) // self.batch_size
        for batch in super().__iter__():
            self._yielded += 1
            yield batch

    def state_dict(self) -> dict:
        return {"epoch": getattr(self.sampler, "epoch", 0), "batches": self._yielded}

    def load_state_dict(self, state: dict) -> None:
        if not isinstance(self.sampler, EpochSampler):
            raise RuntimeError("ResumableDataLoader can restore its position only with its own EpochSampler")
        self.sampler.set_epoch(state["epoch"])
        self.sampler.skip = state["batches"] * self.batch_size


def _normalize(mean: Sequence[float], std: Sequence[float]) -> list:
    return [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]


class ImageDataModule(L.LightningDataModule):
    """Shared machinery; subclasses implement :meth:`_load` returning (train, test) datasets per transform.

    Args:
        data_dir: where the dataset lies (format per subclass).
        batch_size: per-process batch size.
        num_workers: DataLoader worker processes.
        val_split: fraction (< 1) or number of training images held out for validation.
        seed: seeds the validation split and the training order.
        shuffle: shuffle the training set each epoch.
        download: fetch the dataset if it is not in ``data_dir`` (needs network).
    """

    num_classes: int = 10
    in_chans: int = 3
    mean: Sequence[float] = IMAGENET_MEAN
    std: Sequence[float] = IMAGENET_STD

    def __init__(self, data_dir: str = "data", batch_size: int = 64, num_workers: int = 0,
                 val_split: float = 0.1, seed: int = 0, shuffle: bool = True, download: bool = False) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if val_split < 0:
            raise ValueError(f"val_split must be >= 0, got {val_split}")
        self.save_hyperparameters()
        self.data_dir = Path(data_dir).expanduser()
        self.batch_size, self.num_workers, self.val_split = batch_size, num_workers, val_split
        self.seed, self.shuffle, self.download = seed, shuffle, download
        self.train_set = self.val_set = self.test_set = None

    # -- to implement ---------------------------------------------------------------------------
    def train_transform(self) -> Callable:
        return v2.Compose(_normalize(self.mean, self.std))

    def eval_transform(self) -> Callable:
        return v2.Compose(_normalize(self.mean, self.std))

    def _load(self, train_transform: Callable, eval_transform: Callable) -> tuple[Dataset, Dataset, Dataset]:
        """(training set with train_transform, the same with eval_transform, test set)."""
        raise NotImplementedError

    # -- Lightning hooks ------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        train_aug, train_plain, test = self._load(self.train_transform(), self.eval_transform())
        count = len(train_aug)
        held_out = int(self.val_split) if self.val_split >= 1 else math.floor(self.val_split * count)
        if held_out >= count:
            raise ValueError(f"val_split={self.val_split} leaves no training images out of {count}")
        order = torch.randperm(count, generator=torch.Generator().manual_seed(self.seed)).tolist()
        self.train_set = Subset(train_aug, order[held_out:]) if held_out else train_aug
        self.val_set = Subset(train_plain, order[:held_out]) if held_out else test
        self.test_set = test

    def _loader(self, dataset: Dataset, train: bool = False) -> DataLoader:
        kwargs = dict(batch_size=self.batch_size, num_workers=self.num_workers, persistent_workers=self.num_workers > 0)
        if train:
            return ResumableDataLoader(dataset, shuffle=self.shuffle, seed=self.seed, **kwargs)
        return DataLoader(dataset, shuffle=False, **kwargs)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.test_set)


class MNISTDataModule(ImageDataModule):
    """MNIST from the four idx files (``.gz`` or not) in ``data_dir`` or ``data_dir/MNIST/raw``; 1x28x28.

    ``augment``: shift training digits by up to ``augment_shift`` pixels (random crop of the zero-padded
    image); off by default, as in both papers.
    """

    num_classes, in_chans = 10, 1
    mean, std = MNIST_MEAN, MNIST_STD

    def __init__(self, data_dir: str = "data", batch_size: int = 64, num_workers: int = 0, val_split: float = 0.1,
                 seed: int = 0, shuffle: bool = True, download: bool = False, augment: bool = False,
                 augment_shift: int = 2) -> None:
        super().__init__(data_dir, batch_size, num_workers, val_split, seed, shuffle, download)
        if augment_shift < 0:
            raise ValueError(f"augment_shift must be >= 0 pixels, got {augment_shift}")
        self.augment, self.augment_shift = augment, augment_shift

    def train_transform(self):
        shift = [v2.RandomCrop(28, padding=self.augment_shift)] if self.augment and self.augment_shift else []
        return v2.Compose(shift + _normalize(self.mean, self.std))

    def _load(self, train_transform, eval_transform):
        try:
            train, test = read_mnist(self.data_dir, "train"), read_mnist(self.data_dir, "test")
        except DataNotFoundError:
            if not self.download:
                raise
            download_with_timeout(lambda: datasets.MNIST(self.data_dir, download=True), "MNIST",
                                  f"put the four idx files in {self.data_dir}")
            train, test = read_mnist(self.data_dir, "train"), read_mnist(self.data_dir, "test")
        return (TensorImageDataset(*train, train_transform), TensorImageDataset(*train, eval_transform),
                TensorImageDataset(*test, eval_transform))


def _image_folder(root: Path, split: str, transform: Callable) -> datasets.ImageFolder:
    return datasets.ImageFolder(str(root / split), transform=v2.Compose([v2.PILToTensor(), transform]))


class _CIFARDataModule(ImageDataModule):
    """CIFAR from torchvision's python batches, a train/<class>/ + test/<class>/ image folder, or tar.gz
    archives of such a folder (extracted once into ``cache_dir``, default ``~/.cache/specnet_zoo``).

    ``augment``: random crop (padding 4, i.e. translations) and horizontal flip of training images;
    ``hsv_jitter``: also perturb brightness (value), saturation and hue by up to this fraction (hue by
    half of it), Rippel et al.'s "HSV perturbations" (Sec. 5.2); 0 disables it.
    """

    batches_folder = ""
    tv_dataset: type = datasets.CIFAR10

    def __init__(self, data_dir: str = "data", batch_size: int = 64, num_workers: int = 0, val_split: float = 0.1,
                 seed: int = 0, shuffle: bool = True, download: bool = False, cache_dir: str | None = None,
                 augment: bool = True, hsv_jitter: float = 0.0) -> None:
        super().__init__(data_dir, batch_size, num_workers, val_split, seed, shuffle, download)
        if not 0.0 <= hsv_jitter <= 1.0:
            raise ValueError(f"hsv_jitter must be in [0, 1], got {hsv_jitter}")
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else Path.home() / ".cache" / "specnet_zoo"
        self.augment, self.hsv_jitter = augment, hsv_jitter

    def train_transform(self):
        augment = [v2.RandomCrop(32, padding=4), v2.RandomHorizontalFlip()] if self.augment else []
        if self.hsv_jitter:
            jitter = self.hsv_jitter
            augment.append(v2.ColorJitter(brightness=jitter, saturation=jitter, hue=jitter / 2))
        return v2.Compose(augment + _normalize(self.mean, self.std))

    def extraction_dir(self) -> Path:
        """Where ``data_dir``'s archives are extracted: keyed by a hash of the resolved source path, so two
        different folders (both called ``cifar10``, say) never share a cache."""
        source = self.data_dir.resolve()
        digest = hashlib.sha256(str(source).encode()).hexdigest()[:16]
        return self.cache_dir / f"{type(self).__name__}-{source.name}-{digest}"

    def prepare_data(self) -> None:
        # Lightning runs this once per node before setup(): archives are extracted here, not by every rank.
        self._find_source()

    def _find_source(self) -> tuple[str, Path]:
        root = self.data_dir
        for candidate in (root / self.batches_folder, root):
            if (candidate / ("test_batch" if self.num_classes == 10 else "test")).exists():
                return "batches", candidate
        if (root / "train").is_dir() and (root / "test").is_dir():
            return "folder", root
        archives = sorted(root.glob("*.tar.gz")) if root.is_dir() else []
        if archives:
            return "folder", extract_image_folder(archives, self.extraction_dir())
        if self.download:
            download_with_timeout(lambda: self.tv_dataset(str(root), download=True), type(self).__name__,
                                  f"put {self.batches_folder}/ in {root}")
            return "batches", root / self.batches_folder
        raise DataNotFoundError(
            f"{type(self).__name__}: no data in {root}; expected {root}/{self.batches_folder}/ (torchvision's python "
            f"batches), {root}/train/<class>/ and {root}/test/<class>/ image folders, or *.tar.gz archives of them"
        )

    def _load(self, train_transform, eval_transform):
        kind, root = self._find_source()
        if kind == "batches":
            train, test = read_cifar_batches(root, "train", self.num_classes), read_cifar_batches(root, "test", self.num_classes)
            return (TensorImageDataset(*train, train_transform), TensorImageDataset(*train, eval_transform),
                    TensorImageDataset(*test, eval_transform))
        train = _image_folder(root, "train", train_transform)
        if len(train.classes) != self.num_classes:
            raise ValueError(f"{root}/train has {len(train.classes)} class folders, expected {self.num_classes}")
        return train, _image_folder(root, "train", eval_transform), _image_folder(root, "test", eval_transform)


class CIFAR10DataModule(_CIFARDataModule):
    """CIFAR-10 (3x32x32, 10 classes); see :class:`_CIFARDataModule` for the accepted layouts."""

    num_classes, batches_folder, tv_dataset = 10, "cifar-10-batches-py", datasets.CIFAR10
    mean, std = CIFAR10_MEAN, CIFAR10_STD


class CIFAR100DataModule(_CIFARDataModule):
    """CIFAR-100 (3x32x32, 100 fine classes); see :class:`_CIFARDataModule` for the accepted layouts."""

    num_classes, batches_folder, tv_dataset = 100, "cifar-100-python", datasets.CIFAR100
    mean, std = CIFAR100_MEAN, CIFAR100_STD


class SVHNDataModule(ImageDataModule):
    """SVHN from torchvision's ``train_32x32.mat`` / ``test_32x32.mat`` in ``data_dir``; no augmentation."""

    num_classes = 10
    mean, std = SVHN_MEAN, SVHN_STD

    def _load(self, train_transform, eval_transform):
        paths = {split: self.data_dir / f"{split}_32x32.mat" for split in ("train", "test")}
        missing = [p for p in paths.values() if not p.exists()]
        if missing and self.download:
            for split in ("train", "test"):
                download_with_timeout(lambda s=split: datasets.SVHN(str(self.data_dir), split=s, download=True), "SVHN",
                                      f"put train_32x32.mat and test_32x32.mat in {self.data_dir}")
        elif missing:
            raise DataNotFoundError(f"SVHN not found: put train_32x32.mat and test_32x32.mat in {self.data_dir}")
        train, test = read_svhn_mat(paths["train"]), read_svhn_mat(paths["test"])
        return (TensorImageDataset(*train, train_transform), TensorImageDataset(*train, eval_transform),
                TensorImageDataset(*test, eval_transform))


class ImageFolderDataModule(ImageDataModule):
    """``data_dir/train/<class>/`` (and ``val/<class>/``, ``test/<class>/`` when present) resized to ``image_size``.

    Without a ``val`` folder, ``val_split`` of ``train`` is held out; without ``test``, ``val`` is tested.
    Training uses random resized crops (area fraction ``crop_scale``) and, with ``hflip``, flips; evaluation a
    resize and centre crop (ratio 0.875). ``in_chans`` 1 converts images to grayscale, 3 to RGB.
    """

    def __init__(self, data_dir: str = "data", batch_size: int = 64, num_workers: int = 0, val_split: float = 0.1,
                 seed: int = 0, shuffle: bool = True, image_size: int = 224, mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD, in_chans: int = 3, crop_scale: Sequence[float] = (0.08, 1.0),
                 hflip: bool = True) -> None:
        super().__init__(data_dir, batch_size, num_workers, val_split, seed, shuffle, download=False)
        if in_chans not in (1, 3):
            raise ValueError(f"in_chans must be 1 (grayscale) or 3 (RGB), got {in_chans}")
        if len(mean) != in_chans or len(std) != in_chans:
            raise ValueError(f"mean and std need one value per channel ({in_chans}), got mean={list(mean)}, std={list(std)}")
        self.image_size, self.mean, self.std, self.in_chans = image_size, tuple(mean), tuple(std), in_chans
        self.crop_scale, self.hflip = tuple(crop_scale), hflip
        self._read_classes()

    def _read_classes(self) -> None:
        train = self.data_dir / "train"
        if not train.is_dir():
            raise DataNotFoundError(f"no image folder at {train}: expected {train}/<class>/<image files>")
        self.classes = sorted(p.name for p in train.iterdir() if p.is_dir())
        self.num_classes = len(self.classes)

    def _channels(self) -> list:
        return [v2.Grayscale(1)] if self.in_chans == 1 else [v2.RGB()]

    def train_transform(self):
        flip = [v2.RandomHorizontalFlip()] if self.hflip else []
        return v2.Compose(self._channels() + [v2.RandomResizedCrop(self.image_size, scale=self.crop_scale, antialias=True)]
                          + flip + _normalize(self.mean, self.std))

    def eval_transform(self):
        resize = int(round(self.image_size / 0.875))
        return v2.Compose(self._channels() + [v2.Resize(resize, antialias=True), v2.CenterCrop(self.image_size)]
                          + _normalize(self.mean, self.std))

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        root = self.data_dir
        if (root / "val").is_dir():
            self.train_set = _image_folder(root, "train", self.train_transform())
            self.val_set = _image_folder(root, "val", self.eval_transform())
            self.test_set = _image_folder(root, "test" if (root / "test").is_dir() else "val", self.eval_transform())
            return
        super().setup(stage)

    def _load(self, train_transform, eval_transform):
        root = self.data_dir
        test_split = "test" if (root / "test").is_dir() else "train"
        return (_image_folder(root, "train", train_transform), _image_folder(root, "train", eval_transform),
                _image_folder(root, test_split, eval_transform))


class ImageNetDataModule(ImageFolderDataModule):
    """ImageNet in torchvision's layout (``meta.bin`` + ``train/`` and ``val/`` wnid folders), 1000 classes.

    ``val`` is both the validation and the test set (ImageNet's test labels are not public). ImageNet
    cannot be downloaded automatically; ``val_split`` is unused.
    """

    num_classes = 1000

    def _read_classes(self) -> None:
        self.num_classes = 1000

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        if not (self.data_dir / "meta.bin").exists():
            raise DataNotFoundError(
                f"ImageNet not found in {self.data_dir}: expected meta.bin and the train/ and val/ wnid folders "
                "(torchvision.datasets.ImageNet's layout; ImageNet cannot be downloaded automatically)"
            )

        def make(split: str, transform: Callable) -> datasets.ImageNet:
            return datasets.ImageNet(str(self.data_dir), split=split, transform=v2.Compose([v2.PILToTensor(), transform]))

        self.train_set = make("train", self.train_transform())
        self.val_set = self.test_set = make("val", self.eval_transform())
